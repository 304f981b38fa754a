"""Orbax checkpoints of {train state, data iterator position}, with automatic resume.

Layout: <workdir>/checkpoints/<step>/{state, data}. Kept: the last `keep` checkpoints
and the one with the best eval metric. Saves are asynchronous where Orbax supports it
(training continues while the files are written). A latest checkpoint that fails to
restore (corrupt or half-written) is moved to <workdir>/checkpoints_corrupt/ (never
deleted) and the previous one is used, with a warning.
"""

import os
import shutil
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from train.state import TrainState

_SAVED_FIELDS = ('step', 'params', 'model_state', 'opt_state', 'rng')


def _to_tree(state: TrainState) -> dict:
  return {name: getattr(state, name) for name in _SAVED_FIELDS}


class Checkpointer:
  """Saves and restores train state plus Grain iterator state under `workdir`.

  Args:
    workdir: run directory; checkpoints go to <workdir>/checkpoints.
    keep: number of most recent checkpoints kept.
    best_metric: eval metric name whose best value is kept as well ('' to disable).
    best_mode: 'max' (accuracy, BLEU) or 'min' (loss, WER): which value is best.
    async_save: write in a background thread.
  """

  def __init__(self, workdir: str, *, keep: int = 3, best_metric: str = 'top1',
               best_mode: str = 'max', async_save: bool = True):
    if best_mode not in ('max', 'min'):
      raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.corrupt_directory = os.path.abspath(os.path.join(workdir, 'checkpoints_corrupt'))
    policies = [ocp.checkpoint_managers.LatestN(n=max(keep, 1))]
    if best_metric:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=best_mode == 'min', n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, state: TrainState, data_iterator, metrics: dict | None = None) -> None:
    """Saves at `state.step` (canonical, replicated state). `metrics` (host floats)
    rank the checkpoint for best-N retention; pass them only when they were computed
    on this very state."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_tree(state)),
        data=grain.checkpoint.CheckpointSave(data_iterator)), metrics=metrics, force=True)

  def restore_latest(self, abstract_state: TrainState, data_iterator) -> TrainState | None:
    """Restores the newest readable checkpoint into `abstract_state`'s structure and
    shardings, and moves `data_iterator` (if not None) to its saved position. Returns
    None when there is no checkpoint."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self._restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except  # Any unreadable checkpoint.
        logging.warning('Checkpoint at step %d cannot be restored (%s: %s); moving it to %s '
                        'and trying the previous one.', step, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else '', self.corrupt_directory)
        self._quarantine(step)
        continue
      logging.info('Resumed from checkpoint at step %d.', step)
      return state
    return None

  def restore_average(self, abstract_state: TrainState, num_checkpoints: int) -> TrainState:
    """The newest checkpoint with its params (and model state) replaced by the mean
    over the `num_checkpoints` newest ones: checkpoint averaging (Vaswani et al. 2017,
    Sec. 6.1, "averaging the last 5 checkpoints"). For prediction; the optimizer state
    is the newest checkpoint's.

    Raises ValueError when fewer than `num_checkpoints` checkpoints exist.
    """
    all_steps = sorted(self.manager.all_steps(), reverse=True)
    steps = all_steps[:num_checkpoints]
    if num_checkpoints < 1 or len(steps) < num_checkpoints:
      raise ValueError(f'Cannot average {num_checkpoints} checkpoints: {self.directory} has '
                       f'steps {all_steps[::-1]}')
    states = [self._restore(step, abstract_state) for step in steps]
    mean = lambda *xs: sum(xs) / len(xs)
    logging.info('Averaging the checkpoints at steps %s.', steps)
    return states[0].replace(params=jax.tree.map(mean, *[s.params for s in states]),
                             model_state=jax.tree.map(mean, *[s.model_state for s in states]))

  def _restore(self, step: int, abstract_state: TrainState, data_iterator=None) -> TrainState:
    """The checkpoint at `step` in `abstract_state`'s structure and shardings; moves
    `data_iterator` (if not None) to its saved position. Raises what Orbax raises for
    an unreadable checkpoint."""
    items = {'state': ocp.args.StandardRestore(_to_tree(abstract_state))}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return abstract_state.replace(**restored['state'])

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      os.makedirs(self.corrupt_directory, exist_ok=True)
      source = os.path.join(self.directory, str(step))
      shutil.move(source, os.path.join(self.corrupt_directory, f'{step}-{int(time.time())}'))
    self.manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster signalled preemption (multi-process jobs)."""
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
