"""A trained run restored from its checkpoints, read-only: predictions, and the
evaluation of one checkpoint on a whole eval split (`python launch.py --mode=eval`).

Nothing under the run's workdir is created, moved or rewritten except
<workdir>/eval/<split>_step<N>.json, which `evaluate_checkpoint` writes.
"""

import copy
import functools
import json
import os
import re
import time

import jax
from absl import logging

import nets
import tasks
from train import checkpoint as checkpoint_lib
from train import parallel, run_config, trainer

CHECKPOINT_CHOICES = "'last', 'best' or a step number"
WEIGHTS_CHOICES = ('ema', 'trained')


class Predictor:
  """A trained run, restored: `data`, `model`, `task`, `state`, `step` (of the restored
  checkpoint), the task's `evaluators`, `eval_step`, and
  `predict_batch(host_batch) -> numpy predictions` (rows of this process).

  Args:
    config: the run's config (its model must build the checkpoint's structure).
    workdir: the run directory.
    checkpoint: 'last' (the newest), 'best' (best on validation by the run's own
      checkpoint.best_metric and best_mode, from <workdir>/config.json, as the run kept
      it; the newest when no checkpoint has validation metrics, as training picks the
      one it tests) or a step number.
    average_last: > 1 averages the params of that many newest checkpoints instead
      (Vaswani et al. 2017, Sec. 6.1); only with checkpoint='last'.
    roles: the eval sets the caller will evaluate ('validation', 'test'), checked
      before anything is restored.
    weights: 'ema' (the moving average of the weights where the run kept one,
      config.optim.ema_decay > 0 in its <workdir>/config.json; else the trained ones)
      or 'trained' (the optimizer's weights, also of a run that kept an average).
  Raises:
    FileNotFoundError: `workdir` has no checkpoints.
    ValueError: bad config fields, an unknown `checkpoint`, a step that was not saved,
      a role the config has no split for.
    checkpoint.CheckpointMismatchError, checkpoint.CheckpointReadError.
  """

  def __init__(self, config, workdir: str, checkpoint='last', average_last: int = 1,
               roles=(), weights: str = 'ema'):
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory) or not any(n.isdigit() for n in os.listdir(directory)):
      raise FileNotFoundError(f'No checkpoints in {os.path.abspath(directory)}; train first: '
                              f'python launch.py --config=... --workdir={workdir}')
    checkpoint = str(checkpoint)
    if checkpoint not in ('last', 'best') and not checkpoint.isdigit():
      raise ValueError(f'checkpoint={checkpoint!r} is not valid; choose {CHECKPOINT_CHOICES}')
    if weights not in WEIGHTS_CHOICES:
      raise ValueError(f'weights={weights!r} is not valid; choose one of {list(WEIGHTS_CHOICES)}')
    if average_last != 1 and checkpoint != 'last':
      raise ValueError('average_last > 1 averages the newest checkpoints; use it only with '
                       f"checkpoint='last', not {checkpoint!r}")
    saved = run_config.load(workdir)  # None for a workdir without config.json.
    _warn_of_model_changes(workdir, saved, config)
    self.config = config
    self.engine = engine = parallel.build(config.parallel)
    # The checkpoint holds the trained weights: config.init_from (the weights training
    # started from) is not read here, so it need not exist on this machine any more.
    # The checkpoint's structure is the run's, with or without its moving average.
    as_saved = copy.deepcopy(config)
    as_saved.init_from, as_saved.init_into = '', ''
    as_saved.optim.ema_decay = (saved or {}).get('optim.ema_decay', config.optim.ema_decay)
    trainer.validate(as_saved, engine.num_devices)
    self.task_module = tasks.get(config.task)
    self.data = self.task_module.build_data(config)
    for role in roles:
      self.check_role(role)
    total_steps = trainer.total_train_steps(config, self.data.num_train_examples)
    self.model, self.task, _, _, init_fn = trainer.build_components(
        as_saved, total_steps, self.data.spec, engine.axis_name)
    abstract = trainer.abstract_state(init_fn, engine)
    # 'best' is the run's own: ranked by the metric and mode it trained with.
    best_metric = (saved or {}).get('checkpoint.best_metric', config.checkpoint.best_metric)
    best_mode = (saved or {}).get('checkpoint.best_mode', config.checkpoint.best_mode)
    ckpt = checkpoint_lib.Checkpointer(workdir, best_metric=best_metric, best_mode=best_mode,
                                       async_save=False, read_only=True)
    try:
      state = self._restore(ckpt, abstract, checkpoint, average_last)
    finally:
      ckpt.close()
    if weights == 'trained':
      state = state.replace(ema=None)
    self.step = int(parallel.replica(state.step))
    self.state = engine.from_canonical(state)
    predict_fn = functools.partial(self.task.predict, self.model)
    self._predict = engine.compile(predict_fn, reduce=False)
    self.eval_step = engine.eval_step(model=self.model, task=self.task)
    self.evaluators = self.task_module.evaluators(config, self.data, predict_fn, engine)

  @staticmethod
  def _restore(ckpt, abstract, checkpoint: str, average_last: int):
    steps = ckpt.all_steps()
    if average_last != 1:
      return ckpt.restore_average(abstract, average_last)
    if checkpoint == 'best' and ckpt.best_step() is None:
      logging.warning('No checkpoint in %s was saved with validation metrics; using the '
                      'last one (as training does to pick the one it tests).', ckpt.directory)
      checkpoint = 'last'
    if checkpoint == 'last':
      state = ckpt.restore_latest(abstract, None)
      if state is None:
        raise FileNotFoundError(f'No readable checkpoint in {ckpt.directory}')
      return state
    if checkpoint == 'best':
      step = ckpt.best_step()
    else:
      step = int(checkpoint)
      if step not in steps:
        raise ValueError(f'No checkpoint at step {step} in {ckpt.directory}; saved steps: '
                         f'{steps}')
    return ckpt.restore_step(step, abstract)

  def predict_batch(self, batch: dict):
    """Host batch (eval_batch_size rows) -> the task's predictions as numpy."""
    return self.engine.to_local(self._predict(self.state, self.engine.put_batch(batch)))

  def check_role(self, role: str) -> None:
    """Raises ValueError when the config has no eval set `role`."""
    if role not in self.data.eval_splits:
      raise ValueError(f'No {role!r} split in this config; valid: {list(self.data.eval_splits)}')

  def evaluate(self, role: str = 'test') -> dict:
    """Everything the training run logs for eval set `role` (the eval step's
    (sum, count) metrics and the evaluators'), on the restored state; name -> float."""
    self.check_role(role)
    return trainer.evaluate(self.state, self.engine, self.data, role, self.eval_step,
                            self.evaluators)

  def timed_eval(self, role: str = 'test') -> dict:
    """The evaluators' metrics on eval set `role` (the eval step's for a task without
    evaluators, e.g. top-1 for classification), the number of examples, seconds and
    examples per second (after a first, compiling batch). Raises ValueError when the
    config has no such eval set."""
    self.check_role(role)
    first = next(iter(self.data.eval_batches(role, jax.process_index(), jax.process_count())))
    eval_step = None if self.evaluators else self.eval_step
    for evaluator in self.evaluators:  # Compiles.
      evaluator.update(self.state, self.engine.put_batch(first), first)
    if eval_step is not None:
      jax.block_until_ready(eval_step(self.state, self.engine.put_batch(first)))
    start = time.perf_counter()
    result = trainer.evaluate(self.state, self.engine, self.data, role, eval_step,
                              self.evaluators)
    seconds = time.perf_counter() - start
    n = int(result['num_examples'])
    return {**result, 'examples': n, 'seconds': round(seconds, 2),
            'examples_per_s': round(n / seconds, 1)}


def result_path(workdir: str, split: str, step: int) -> str:
  """<workdir>/eval/<split>_step<step>.json, the split's characters other than letters,
  digits, '.' and '-' written as '_' (e.g. train[48:] -> train_48__): one file per
  evaluated split, so evaluating another split keeps the earlier results."""
  return os.path.join(workdir, 'eval', re.sub(r'[^\w.-]', '_', split) + f'_step{step}.json')


def evaluate_checkpoint(config, workdir: str, checkpoint='last', role: str = 'test') -> dict:
  """Evaluates one checkpoint of the run in `workdir` on eval set `role` ('validation'
  or 'test'; any dataset split through config.data.test_split / validation_split) and
  writes {step, checkpoint, role, split, metrics} to <workdir>/eval/<split>_step<N>.json
  (`result_path`). Nothing else in `workdir` changes. Raises what Predictor raises, and
  ValueError for an unknown `role`."""
  if role not in ('validation', 'test'):
    raise ValueError(f"split {role!r} is not valid; choose 'validation' or 'test'")
  predictor = Predictor(config, workdir, checkpoint, roles=(role,))
  metrics = predictor.evaluate(role)
  result = {'step': predictor.step, 'checkpoint': str(checkpoint), 'role': role,
            'split': predictor.data.eval_splits[role], 'metrics': metrics}
  if jax.process_index() == 0:
    path = result_path(workdir, result['split'], predictor.step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)
    logging.info('Step %d on %s (%s): %s; written to %s', predictor.step, role,
                 result['split'], json.dumps(metrics), path)
  return result


def _warn_of_model_changes(workdir: str, saved: dict | None, config) -> None:
  """Logs the model fields and normalisation in which `config` differs from the run's
  own <workdir>/config.json. The checkpoint check catches fields that change shapes;
  these (e.g. model.approximate_gelu, data.mean) restore without error but compute
  something else than the run trained, e.g. when the training command's overrides are
  not repeated. Fields that do not change what the weights compute (implementation
  choices, dropout: `nets.changes_computation`) are left out."""
  changes = {field: values for field, values in
             run_config.diff(saved, config).items()
             if (field.startswith('model.') and nets.changes_computation(field[len('model.'):]))
             or field in ('data.mean', 'data.std')}
  if changes:
    logging.warning('The config differs from the run\'s %s in: %s. Pass the training '
                    'command\'s overrides again unless the change is meant.',
                    os.path.join(workdir, 'config.json'), run_config.describe(changes))
