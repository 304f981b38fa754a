"""Orbax checkpoints of {train state, data iterator position}, with automatic resume.

Layout: <workdir>/checkpoints/<step>/{state, data}. Kept: the last `keep` checkpoints
and the one with the best validation metric. Saves are asynchronous where Orbax supports it
(training continues while the files are written; Orbax renames a finished save into
place, so an interrupted one is left as `<step>.orbax-checkpoint-tmp-*`).

Restoring never deletes anything and tells these outcomes apart, newest step first:
  * readable and of the current structure: restored;
  * of another structure (tree, shapes or dtypes; e.g. a changed model width):
    `CheckpointMismatchError` naming the differing leaves; nothing is moved;
  * written by another number of processes (each saved its own input position):
    `CheckpointMismatchError` naming both counts; nothing is moved;
  * unreadable (missing or truncated files, an interrupted save): moved to
    <workdir>/checkpoints_corrupt/ with a warning naming the step, and the previous
    step is tried;
  * a transient I/O error (EIO, timeouts, an unavailable store): retried with backoff;
    if it persists, `CheckpointReadError`; nothing is moved;
  * any other error: raised as it is; nothing is moved.
In multi-process jobs every process checks its own files, the outcome is agreed
(the worst one wins) and only then process 0 moves files.
"""

import errno
import json
import os
import re
import shutil
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from train.state import TrainState

_SAVED_FIELDS = ('step', 'params', 'model_state', 'opt_state', 'rng', 'ema')
_TMP_SUFFIX = '.orbax-checkpoint-tmp'
# Outcomes of checking one step, in increasing severity (processes agree on the worst).
OK, UNREADABLE, TRANSIENT, MISMATCH, OTHER = range(5)
# tensorstore reports errors as ValueError('<STATUS CODE>: ...').
_UNREADABLE_STATUS = ('DATA_LOSS', 'OUT_OF_RANGE', 'NOT_FOUND')
_TRANSIENT_STATUS = ('UNAVAILABLE', 'DEADLINE_EXCEEDED', 'ABORTED', 'RESOURCE_EXHAUSTED',
                     'CANCELLED')
_MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)
_DATA_FILE = re.compile(r'process_\d+-of-(\d+)\.json')


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree, shapes or dtypes differ from the state the config builds."""


class CheckpointReadError(OSError):
  """A checkpoint could not be read because of a persisting (non-corruption) I/O error."""


def _to_tree(state: TrainState) -> dict:
  """The saved fields; `ema` only when the state keeps a moving average."""
  return {name: getattr(state, name) for name in _SAVED_FIELDS
          if getattr(state, name) is not None}


def classify_error(error: BaseException) -> int:
  """UNREADABLE (the files are corrupt or missing), TRANSIENT (worth retrying) or
  OTHER (unknown: never treated as corruption). Orbax re-raises tensorstore's errors
  wrapped in a bare Exception ('Encountered error while reading array index ...'), so
  the exceptions it was raised from count too: the first that is not OTHER decides."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    outcome = _classify_one(error)
    if outcome != OTHER:
      return outcome
    error = error.__cause__ or error.__context__
  return OTHER


def _classify_one(error: BaseException) -> int:
  if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError, EOFError)):
    return UNREADABLE
  if isinstance(error, OSError):
    return UNREADABLE if error.errno in _MISSING_ERRNOS else TRANSIENT
  status = str(error).split(':', 1)[0].strip()
  if status in _UNREADABLE_STATUS or str(error).startswith('Found incomplete checkpoint'):
    return UNREADABLE
  if status in _TRANSIENT_STATUS:
    return TRANSIENT
  return OTHER


def structure_diff(saved, expected) -> list[str]:
  """Differences between a checkpoint's metadata tree and the expected state tree:
  'path: missing in the checkpoint', 'path: not in the current model', 'path: checkpoint
  float32[64, 10], current float32[32, 10]'. Empty when they match. Containers are
  compared by key path only (Orbax stores tuples and named tuples as lists and dicts)."""
  def flat(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {'/'.join(_key_name(k) for k in path): leaf for path, leaf in leaves}
  # Listed by field in the order of _SAVED_FIELDS (step, params, ...), then by path.
  order = lambda path: (_SAVED_FIELDS.index(path.split('/')[0])
                        if path.split('/')[0] in _SAVED_FIELDS else len(_SAVED_FIELDS), path)
  saved, expected = flat(saved), dict(sorted(flat(expected).items(), key=lambda i: order(i[0])))
  describe = lambda x: f'{np.dtype(x.dtype).name}{list(x.shape)}'
  lines = [f'{p}: missing in the checkpoint' for p in expected if p not in saved]
  lines += [f'{p}: not in the current model' for p in saved if p not in expected]
  for p in expected:
    if p in saved and (tuple(saved[p].shape) != tuple(expected[p].shape)
                       or np.dtype(saved[p].dtype) != np.dtype(expected[p].dtype)):
      lines.append(f'{p}: checkpoint {describe(saved[p])}, current {describe(expected[p])}')
  return lines


def _key_name(key) -> str:
  for attribute in ('key', 'idx', 'name'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _agree(outcome: int) -> int:
  """The worst outcome over all processes (the same value on every process)."""
  if jax.process_count() == 1:
    return outcome
  return int(multihost_utils.process_allgather(np.array([outcome], np.int32)).max())


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _copy_one_replica_per_array() -> None:
  """Has Orbax copy each replicated array to the host from one device, except on TPUs.

  Orbax's default (unless JAX_PLATFORMS names a GPU) splits the device-to-host copy
  of a replicated array into slices, one per replica ("replica-parallel"), which
  pays where every device has its own host link. CPU devices share one memory, so
  there it only multiplies small copies: saving the 462 arrays of a 261 K-parameter
  YOLOv3 train state replicated over 8 CPU devices took 9.8 s with it and 0.7 s
  without (tests/test_detection.py's NEON run). Orbax's own emergency checkpointers
  turn it off the same way. Registering replaces the process-wide jax.Array handler;
  doing it again is harmless.
  """
  if jax.default_backend() != 'tpu':
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpointer:
  """Saves and restores train state plus Grain iterator state under `workdir`.

  Args:
    workdir: run directory; checkpoints go to <workdir>/checkpoints.
    keep: number of most recent checkpoints kept.
    best_metric: eval metric name whose best value is kept as well ('' to disable).
    best_mode: 'max' (accuracy, BLEU) or 'min' (loss, WER): which value is best.
    async_save: write in a background thread.
    read_attempts: tries per checkpoint read when the error is transient.
    retry_seconds: wait before the first retry; doubled after each.
    read_only: for evaluation-only use: nothing under `workdir` is created, written or
      moved; an unreadable checkpoint raises CheckpointReadError instead of being
      moved aside.
  """

  def __init__(self, workdir: str, *, keep: int = 3, best_metric: str = 'top1',
               best_mode: str = 'max', async_save: bool = True, read_attempts: int = 3,
               retry_seconds: float = 2.0, read_only: bool = False):
    if best_mode not in ('max', 'min'):
      raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.corrupt_directory = os.path.abspath(os.path.join(workdir, 'checkpoints_corrupt'))
    self.best_metric, self.best_mode = best_metric, best_mode
    self.read_attempts, self.retry_seconds = max(read_attempts, 1), retry_seconds
    self.read_only = read_only
    if not read_only:
      self._quarantine_interrupted_saves()
    policies = [ocp.checkpoint_managers.LatestN(n=max(keep, 1))]
    if best_metric:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=best_mode == 'min', n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=(lambda m: m[best_metric]) if best_metric else None,  # For best_step().
        best_mode=best_mode,
        enable_async_checkpointing=async_save and not read_only, create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=False)  # Interrupted saves are moved aside, not deleted.
    _copy_one_replica_per_array()
    # Handlers named up front so that metadata can be read before any restore.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

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

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints, ascending."""
    return sorted(self.manager.all_steps())

  def ranked_steps(self) -> list[int]:
    """Steps saved with validation metrics (those best-N retention ranks), ascending."""
    return [s for s in self.all_steps() if self.manager.metrics(s) is not None]

  def best_step(self) -> int | None:
    """The step of the best checkpoint by `best_metric` among those saved with
    metrics (None without `best_metric` or such a checkpoint)."""
    if not self.best_metric or not self.ranked_steps():
      return None
    return self.manager.best_step()

  def restore_latest(self, abstract_state: TrainState, data_iterator) -> TrainState | None:
    """Restores the newest readable checkpoint into `abstract_state`'s structure and
    shardings, and moves `data_iterator` (if not None) to its saved position (module
    docstring for what happens to unreadable ones). Returns None when there is none.

    Raises CheckpointMismatchError, CheckpointReadError, or an unclassified error.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      state = self.restore_step(step, abstract_state, data_iterator)
      if state is not None:
        logging.info('%s checkpoint at step %d.',
                     'Restored (read-only) the' if self.read_only else 'Resumed from', step)
        return state
    return None

  def restore_step(self, step: int, abstract_state: TrainState,
                   data_iterator=None) -> TrainState | None:
    """The checkpoint at `step`, or None after moving it aside as unreadable.

    The cheap checks (metadata, structure, this process's data-iterator file) run
    first on every process and are agreed on before the collective restore, whose
    outcome is agreed on as well: no process returns a state while another moves the
    checkpoint aside.
    Raises CheckpointMismatchError, CheckpointReadError, or an unclassified error.
    """
    outcome, detail = self._check(step, abstract_state, data_iterator is not None)
    agreed = _agree(outcome)
    if agreed == OK:
      state = None
      try:
        state = self._read(lambda: self._restore(step, abstract_state, data_iterator), step)
      except Exception as e:  # pylint: disable=broad-except
        outcome, detail = classify_error(e), e
      agreed = _agree(outcome)
      if agreed == OK:
        return state
      if outcome == OK:
        detail = ValueError('another process could not read it')
    if agreed == MISMATCH:
      raise CheckpointMismatchError(detail if outcome == MISMATCH else
                                    f'Checkpoint {step}: another process found its '
                                    'structure different from the current state')
    if agreed == UNREADABLE and self.read_only:
      raise CheckpointReadError(f'Checkpoint {step} in {self.directory} is unreadable '
                                f'({_first_line(detail)}); read-only, so nothing was moved')
    if agreed != UNREADABLE:  # A persisting transient error or an unknown one.
      if outcome == OK:
        raise CheckpointReadError(f'Checkpoint {step} could not be read on another '
                                  'process; nothing was moved')
      raise detail
    logging.warning('Checkpoint at step %d is unreadable (%s); moving it to %s and trying '
                    'the previous one.', step, _first_line(detail), self.corrupt_directory)
    self._quarantine(os.path.join(self.directory, str(step)))
    return None

  def _check(self, step: int, abstract_state: TrainState, with_data: bool):
    """(outcome, detail) of the cheap checks of `step` on this process."""
    try:
      metadata = self._read(lambda: self.manager.item_metadata(step), step)
      saved = getattr(metadata, 'get', lambda _: None)('state')
      if saved is None:
        return UNREADABLE, ValueError(f'checkpoint {step} has no state item')
      saved = getattr(saved, 'tree', saved)
      if with_data:
        data = os.path.join(self.directory, str(step), 'data')
        written_by = _data_process_counts(data)
        if written_by and jax.process_count() not in written_by:
          # Each process saved its own input position; another process count cannot
          # take them up, and the checkpoint is not damaged: stop, move nothing.
          return MISMATCH, (
              f'The checkpoint at step {step} in {self.directory} was written by '
              f'{" or ".join(map(str, sorted(written_by)))} processes and this run has '
              f'{jax.process_count()}: the input pipeline positions are saved per process. '
              'Resume with the same number of processes, or start a new workdir from its '
              'weights with --config.init_from.')
        path = os.path.join(data, f'process_{jax.process_index()}-of-{jax.process_count()}.json')
        self._read(lambda: _load_json(path), step)
    except Exception as e:  # pylint: disable=broad-except
      return classify_error(e), e
    diff = structure_diff(saved, _to_tree(abstract_state))
    if diff:
      shown = '\n  '.join(diff[:10]) + (f'\n  ... and {len(diff) - 10} more' if len(diff) > 10
                                         else '')
      return MISMATCH, (f'The checkpoint at step {step} in {self.directory} does not match '
                        f'the state this config builds ({len(diff)} differences):\n  {shown}')
    return OK, None

  def _read(self, fn, step: int):
    """fn() with retries (exponential backoff) while its error is transient."""
    for attempt in range(self.read_attempts):
      try:
        return fn()
      except Exception as e:  # pylint: disable=broad-except
        if classify_error(e) != TRANSIENT:
          raise
        if attempt == self.read_attempts - 1:
          raise CheckpointReadError(
              f'Checkpoint {step} in {self.directory} could not be read after '
              f'{self.read_attempts} attempts ({_first_line(e)}); nothing was moved. '
              'Check the storage and restart.') from e
        wait = self.retry_seconds * 2 ** attempt
        logging.warning('Reading checkpoint %d failed (%s); retrying in %.1fs.', step,
                        _first_line(e), wait)
        time.sleep(wait)
    raise AssertionError('unreachable')

  def restore_average(self, abstract_state: TrainState, num_checkpoints: int) -> TrainState:
    """The newest checkpoint with its params (model state, moving average) replaced by the mean
    over the `num_checkpoints` newest ones: checkpoint averaging (Vaswani et al. 2017,
    Sec. 6.1, "averaging the last 5 checkpoints"). For prediction; the optimizer state
    is the newest checkpoint's. These are the newest of the checkpoints kept: the
    newest `keep` and the best by validation, so with num_checkpoints > keep an older
    best step can be among them (the log names the steps averaged).

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
    # A state without a moving average has ema=None, which tree.map keeps as None.
    return states[0].replace(**{field: jax.tree.map(mean, *[getattr(s, field) for s in states])
                                for field in ('params', 'model_state', 'ema')})

  def _restore(self, step: int, abstract_state: TrainState, data_iterator=None) -> TrainState:
    """The checkpoint at `step` in `abstract_state`'s structure and shardings; moves
    `data_iterator` (if not None) to its saved position. Raises what Orbax raises for
    an unreadable checkpoint."""
    items = {'state': ocp.args.StandardRestore(_to_tree(abstract_state))}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return abstract_state.replace(**restored['state'])

  def _quarantine_interrupted_saves(self) -> None:
    """Moves `<step>.orbax-checkpoint-tmp-*` directories (saves interrupted by a crash)
    to checkpoints_corrupt/, with a warning naming them. Every process lists them
    before process 0 moves any, so that all wait at the same barriers."""
    names = ([n for n in sorted(os.listdir(self.directory)) if _TMP_SUFFIX in n]
             if os.path.isdir(self.directory) else [])
    _barrier('checkpoint_interrupted_saves_listed')
    for name in names:
      logging.warning('Checkpoint %s is an interrupted save; moving it to %s.', name,
                      self.corrupt_directory)
      self._quarantine(os.path.join(self.directory, name), reload=False)

  def _quarantine(self, path: str, reload: bool = True) -> None:
    """Moves `path` into checkpoints_corrupt/ (process 0; all processes wait)."""
    if jax.process_index() == 0 and os.path.exists(path):
      os.makedirs(self.corrupt_directory, exist_ok=True)
      shutil.move(path, os.path.join(self.corrupt_directory,
                                     f'{os.path.basename(path)}-{int(time.time())}'))
    _barrier(f'checkpoint_quarantine_{os.path.basename(path)}')
    if reload:
      self.manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _data_process_counts(data_directory: str) -> set[int]:
  """The process counts named by a checkpoint's `process_<i>-of-<count>.json` data files
  (empty when there are none or the directory cannot be listed)."""
  try:
    names = os.listdir(data_directory)
  except OSError:
    return set()
  return {int(m.group(1)) for m in map(_DATA_FILE.fullmatch, names) if m}


def _load_json(path: str):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _first_line(error) -> str:
  text = str(error)
  return f'{type(error).__name__}: {text.splitlines()[0] if text else ""}'
