"""run(config, workdir): the training loop, top to bottom.

1. Check the config and the data before anything compiles.
2. Build model, task, optimizer, engine; restore the latest checkpoint or initialise
   (from config.init_from's pretrained weights when set).
3. Loop: one jitted step per batch; metrics stay on the device until a log point.
4. Evaluate on the whole validation split at eval points; save checkpoints at
   checkpoint points, on preemption (agreed by all processes) and at the end. A
   non-finite loss stops the run with its step.
5. At the end, evaluate the selected checkpoint (best on validation, or the last one
   when there is no validation split) once on the test split; final_metrics.json
   holds both, labelled.
"""

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import pretrained
import tasks
from tasks import common
from tasks import evaluators as evaluators_lib
from train import checkpoint as checkpoint_lib
from train import optim, parallel, preemption, reporting, run_config
from train import state as state_lib

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


def total_train_steps(config, num_train_examples: int) -> int:
  """num_train_steps when > 0, else num_epochs full passes of the global batch."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(1, int(config.num_epochs * (num_train_examples // config.batch_size)))


# Metrics whose best value is known, so that a best_mode pointing the other way (e.g.
# best_metric=loss overridden alone, keeping a classifier's 'max') is caught up front.
_BEST_WHEN = {'min': ('loss', 'nll', 'wer', 'per'),
              'max': ('top1', 'top5', 'accuracy', 'bleu', 'miou', 'pixel_accuracy', 'AP',
                      'AP50', 'AP75', 'AP50_11pt')}


def _check_best_mode(metric: str, mode: str) -> None:
  for best, metrics in _BEST_WHEN.items():
    if metric in metrics and mode != best:
      raise ValueError(f'config.checkpoint.best_metric={metric!r} is best at its {best}imum, '
                       f'but config.checkpoint.best_mode={mode!r} would keep its {mode}imum; '
                       f'set --config.checkpoint.best_mode={best}')


def validate(config, num_devices: int) -> None:
  """Cheap checks with clear messages, run before any data is read or compiled.

  Raises ValueError naming the field, the bad value and the valid choices.
  """
  def choice(field, value, valid):
    if value not in valid:
      raise ValueError(f'config.{field}={value!r} is not valid; choose one of {list(valid)}')
  choice('parallel', config.parallel, parallel.ENGINES)
  choice('compute_dtype', config.compute_dtype, COMPUTE_DTYPES)
  choice('optim.name', config.optim.name, optim.OPTIMIZERS)
  choice('optim.schedule', config.optim.schedule, optim.SCHEDULES)
  choice('optim.weight_decay_mode', config.optim.weight_decay_mode, optim.WEIGHT_DECAY_MODES)
  choice('task', config.task, tasks.REGISTRY)
  choice('checkpoint.best_mode', config.checkpoint.best_mode, ('max', 'min'))
  _check_best_mode(config.checkpoint.best_metric, config.checkpoint.best_mode)
  # Model names and fields, task-specific fields.
  placeholder_model = tasks.get(config.task).check(config)
  for field in ('batch_size', 'eval_batch_size', 'log_every_steps', 'grad_accum_steps'):
    if config[field] <= 0:
      raise ValueError(f'config.{field} must be positive, got {config[field]}')
  for field in ('batch_size', 'eval_batch_size'):
    parallel.check_batch_size(f'config.{field}', config[field], num_devices)
  per_device = config.batch_size // num_devices
  if per_device % config.grad_accum_steps:
    raise ValueError(f'The per-device batch ({config.batch_size} / {num_devices} devices = '
                     f'{per_device}) must be divisible by config.grad_accum_steps '
                     f'({config.grad_accum_steps})')
  for field in ('learning_rate', 'warmup_steps'):
    if config[field] < 0:
      raise ValueError(f'config.{field} must be >= 0, got {config[field]}')
  if not 0 <= config.optim.ema_decay < 1:
    raise ValueError(f'config.optim.ema_decay must be in [0, 1) (0 keeps no moving average '
                     f'of the weights), got {config.optim.ema_decay}')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError('Set config.num_train_steps > 0 or config.num_epochs > 0')
  pretrained.check(config, placeholder_model)


def _set_aside_final_metrics(workdir: str) -> None:
  """Renames the final_metrics.json of a finished run that trains on (more steps) to
  final_metrics_step<N>.json, so that until this run ends no final_metrics.json
  describes another step; nothing is deleted. Process 0 only."""
  path = os.path.join(workdir, 'final_metrics.json')
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  try:
    with open(path, encoding='utf-8') as f:
      old_step = json.load(f).get('step', 'unknown')
  except ValueError:  # Not JSON (e.g. cut short by hand): kept all the same.
    old_step = 'unknown'
  kept = os.path.join(workdir, f'final_metrics_step{old_step}.json')
  os.replace(path, kept)
  logging.info('The run trains on past its end at step %s: its final metrics are now in %s.',
               old_step, kept)


def evaluate(state, engine, data, role: str, eval_step=None, evaluators=()) -> dict:
  """Exact metrics over the whole eval split `role` ('validation' or 'test'), in one
  pass: the eval step's (sum, count) pairs divided on the host (skipped when
  `eval_step` is None) and the metrics of each of the task's `evaluators`
  (tasks.evaluators); name -> host float, plus 'num_examples'."""
  totals, masks = None, []
  for evaluator in evaluators:
    evaluator.reset()
  for batch in data.eval_batches(role, jax.process_index(), jax.process_count()):
    device_batch = engine.put_batch(batch)
    if eval_step is not None:
      metrics = eval_step(state, device_batch)
      totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
    for evaluator in evaluators:
      evaluator.update(state, device_batch, batch)
    masks.append(batch['mask'])
  result = ({name: float(v[0] / v[1]) for name, v in engine.to_host(totals).items()}
            if totals is not None else {})
  result['num_examples'] = float((evaluators_lib.all_processes(np.concatenate(masks)) > 0).sum())
  for evaluator in evaluators:
    result.update(evaluator.result(role))
  return result


def _check_best_metric(name: str, validation: dict) -> None:
  """Raises ValueError unless `name` ('' for none) is one of the `validation` metrics.

  The names exist only once the task's evaluators have run, so this runs after the
  first validation, before any checkpoint is saved with them (Orbax would fail there
  at the second save, and at every resume)."""
  valid = sorted(k for k in validation if k != 'num_examples')
  if name and name not in valid:
    raise ValueError(f'config.checkpoint.best_metric={name!r} is not a validation metric of '
                     f'this task; choose one of {valid} (or \'\' to keep no best checkpoint). '
                     'The checkpoints saved so far are kept.')


def _summarise(step_metrics: list[dict], first_step: int) -> dict:
  """Host metrics of consecutive steps -> averages. Raises NonFiniteLossError with the
  step number of the first non-finite loss, gradient norm or parameter norm: the loss
  is computed before the step's update, so an overflowing gradient shows first in the
  norms, and the parameters it made NaN must not be saved as the newest checkpoint."""
  for i, m in enumerate(step_metrics):
    # The loss by its sum, which is NaN or Inf whenever its mean is.
    for name, value in (('loss', m['loss'][0]), ('gradient norm', m['grad_norm']),
                        ('parameter norm', m['param_norm'])):
      if not np.isfinite(value):
        raise NonFiniteLossError(f'Training {name} is {value} at step {first_step + i}; '
                                 'stopping. The last checkpoint written before it is kept.')
  out = {}
  for name in step_metrics[0]:
    values = np.stack([m[name] for m in step_metrics])
    out[name] = values[:, 0].sum() / values[:, 1].sum() if values.ndim == 2 else values.mean()
  out['learning_rate'] = step_metrics[-1]['learning_rate']
  return out


def build_components(config, total_steps: int, spec, axis_name=None):
  """Model, task, optimizer, schedule and state initialiser for `config`.

  spec: the data's pipeline.DataSpec (model arguments such as num_classes, and
  init inputs). axis_name: the engine's named device axis (pmap) or None (jit);
  models with batch statistics (a field `axis_name`) average them over it. Shared by
  the trainer and the benchmark so both measure the same computation.
  """
  model = common.build_model(config, COMPUTE_DTYPES[config.compute_dtype], **spec.model_kwargs)
  if 'axis_name' in {f.name for f in dataclasses.fields(model)}:
    model = model.clone(axis_name=axis_name)
  task = tasks.get(config.task).build_task(config, spec)
  tx, schedule = optim.build(config, total_steps)
  init_fn = functools.partial(state_lib.create, model, tx, spec.init_args, config.seed,
                              ema_decay=config.optim.ema_decay)
  return model, task, tx, schedule, init_fn


def abstract_state(init_fn, engine):
  """The TrainState `init_fn` would build, as shapes replicated over the engine's mesh
  (what checkpoints restore into); nothing is computed."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=engine.replicated),
                      jax.eval_shape(init_fn))


def run(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it has checkpoints), then tests the
  selected checkpoint.

  Returns what final_metrics.json holds: 'validation' and 'test' (metric name ->
  float) of the selected checkpoint, 'selected_step', 'selection' (how it was chosen),
  'splits', 'step' (the last step trained) and timings. A preempted run saves, exits
  the loop and returns {'step', 'preempted': True} without testing.
  Raises ValueError for bad configs (and for restarts that would skip or repeat
  training data, or delete a checkpoint kept as the best by validation),
  checkpoint.CheckpointMismatchError when the workdir's checkpoints do not fit this
  config (no checkpoint is changed or deleted; interrupted or unreadable saves met on
  the way are in checkpoints_corrupt/, as at any start),
  sources.DatasetNotFoundError / FileNotFoundError for missing data,
  pretrained.mapping.WeightMismatchError when config.init_from does not fit the model,
  NonFiniteLossError for a NaN/Inf loss.
  """
  engine = parallel.build(config.parallel)
  validate(config, engine.num_devices)
  task_module = tasks.get(config.task)
  data = task_module.build_data(config)
  total_steps = total_train_steps(config, data.num_train_examples)

  model, task, tx, schedule, init_fn = build_components(config, total_steps, data.spec,
                                                        engine.axis_name)

  train_iter = data.train_iterator(jax.process_index(), jax.process_count())
  has_validation = 'validation' in data.eval_splits  # Else no checkpoint is "best".
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                                     best_metric=(config.checkpoint.best_metric
                                                  if has_validation else ''),
                                     best_mode=config.checkpoint.best_mode,
                                     async_save=config.checkpoint.async_save)
  abstract = abstract_state(init_fn, engine)
  saved = run_config.load(workdir)
  changes = run_config.diff(saved, config)
  repositioned = {k: v for k, v in changes.items() if k in run_config.DATA_POSITION_FIELDS}
  had_checkpoints = bool(ckpt.all_steps())
  untouched = ('No checkpoint was changed or deleted (interrupted or unreadable saves, if '
               'any, are in checkpoints_corrupt/, as at every start).')
  if repositioned and had_checkpoints:
    ckpt.close()
    raise ValueError(
        f'The checkpoints in {ckpt.directory} saved the training data position under '
        f'other values of {run_config.describe(repositioned)}; under the new ones that '
        f'position would skip or repeat examples, so the run cannot resume with them. '
        f'{untouched} Restart with the saved values, or train this config '
        f'in a new --workdir (--config.init_from={workdir} starts it from these weights).')
  kept_best = saved and saved.get('checkpoint.best_metric') and saved.get('data.validation_split')
  if kept_best and not ckpt.best_metric and ckpt.ranked_steps():
    # Without a best metric only the newest `keep` steps are retained: the saves of this
    # run would delete the checkpoint the run kept for its validation score.
    ckpt.close()
    raise ValueError(
        f'The checkpoints in {ckpt.directory} keep the best one by validation '
        f'{saved["checkpoint.best_metric"]!r}, but this config ranks none '
        f'(checkpoint.best_metric={config.checkpoint.best_metric!r}, eval splits '
        f'{sorted(data.eval_splits)}), so its saves would delete that checkpoint. '
        f'{untouched} Restart with the saved checkpoint.best_metric and '
        f'data.validation_split, or train this config in a new --workdir '
        f'(--config.init_from={workdir} starts it from these weights).')
  try:
    restored = ckpt.restore_latest(abstract, train_iter)
  except checkpoint_lib.CheckpointMismatchError as e:
    ckpt.close()
    raise checkpoint_lib.CheckpointMismatchError(
        f'{e}\nConfig fields changed since {os.path.join(workdir, "config.json")} was '
        f'written: {run_config.describe(changes)}.\n{untouched} To train '
        'this config, pass a new --workdir; to resume the run, restart it with its saved '
        'config.') from None
  if restored is None and had_checkpoints:
    # Every checkpoint was unreadable and is now in checkpoints_corrupt/; each failed
    # attempt may have moved the iterator to its saved position already (Orbax restores
    # 'data' before 'state'): a fresh start must read from the beginning.
    train_iter = data.train_iterator(jax.process_index(), jax.process_count())
  if restored is not None:
    state = engine.from_canonical(restored)
    if config.init_from:
      logging.info('Resuming from the checkpoints in %s; config.init_from is not loaded.',
                   workdir)
  else:
    try:
      pretrained.check_shapes(config, {'params': abstract.params, **abstract.model_state})
    except Exception:
      ckpt.close()
      raise
    state = engine.init_state(init_fn)
    if config.init_from:
      state = engine.from_canonical(pretrained.initialise(config, engine.to_canonical(state),
                                                          engine.replicated))
  step = int(parallel.replica(restored.step)) if restored is not None else 0
  if changes:
    logging.warning('%s at step %d with changed config fields: %s',
                    'Resuming' if restored is not None else 'Starting', step,
                    run_config.describe(changes))
  run_config.record(workdir, config, step, changes)
  if step < total_steps:
    _set_aside_final_metrics(workdir)

  writer = reporting.MetricWriter(workdir, step)
  total, table = state_lib.count_params(abstract.params)
  logging.info('Model %s: %s parameters\n%s', config.model.name, f'{total:,}',
               reporting.parameter_table(total, table))
  logging.info('Training %d steps (global batch %d, %d devices, %d processes, engine %s), '
               'starting at step %d; eval splits %s.', total_steps, config.batch_size,
               engine.num_devices, jax.process_count(), engine.name, step, data.eval_splits)

  train_step = engine.train_step(model=model, task=task, schedule=schedule,
                                 accum_steps=config.grad_accum_steps)
  eval_step = engine.eval_step(model=model, task=task)
  evaluators = task_module.evaluators(config, data, functools.partial(task.predict, model),
                                      engine)
  run_eval = lambda s, role: evaluate(s, engine, data, role, eval_step, evaluators)

  pending, pending_from = [], step + 1
  # Throughput and ETA count only train steps after the first (compiling) one.
  train_seconds, timed_steps, steps_since_mark, mark = 0.0, 0, 0, time.time()
  compile_seconds = None
  validation_at = {}  # step -> validation metrics computed in this run.
  start_time = time.time()
  try:
    with preemption.Preemption() as preempt:
      while step < total_steps:
        state, metrics = train_step(state, engine.put_batch(next(train_iter)))
        step += 1
        pending.append(metrics)
        steps_since_mark += 1
        if compile_seconds is None:
          jax.block_until_ready(metrics)
          compile_seconds = time.time() - mark
          logging.info('First step (compilation included) took %.1fs.', compile_seconds)
          steps_since_mark, mark = 0, time.time()
        is_last = step == total_steps
        stop = preempt.reached(step)  # The same step on every process.
        do_eval = has_validation and (is_last or (config.eval_every_steps > 0
                                                  and step % config.eval_every_steps == 0))
        # Every validated step is saved, so that the best of them can be selected.
        do_ckpt = is_last or stop or do_eval or (config.checkpoint_every_steps > 0
                                                 and step % config.checkpoint_every_steps == 0)
        if step % config.log_every_steps == 0 or do_eval or do_ckpt:
          summary = _summarise(engine.to_host(pending), pending_from)  # The only device sync.
          train_seconds += time.time() - mark
          timed_steps += steps_since_mark
          steps_since_mark, mark = 0, time.time()
          summary['examples_per_sec'] = (timed_steps * config.batch_size / train_seconds
                                         if train_seconds > 0 else 0.0)
          summary['epoch'] = step * config.batch_size / data.num_train_examples
          eta = (total_steps - step) * train_seconds / max(timed_steps, 1)
          writer.write(step, 'train', summary,
                       f' | {step}/{total_steps} | ETA {reporting.format_duration(eta)}')
          pending, pending_from = [], step + 1
        if do_eval:
          validation_at[step] = run_eval(state, 'validation')
          writer.write(step, 'validation', validation_at[step])
          _check_best_metric(config.checkpoint.best_metric, validation_at[step])
        if do_ckpt:
          ckpt.save(engine.to_canonical(state), train_iter, metrics=validation_at.get(step))
        if do_eval or do_ckpt:
          mark = time.time()
        if stop and not is_last:
          logging.warning('Preempted at step %d: checkpoint saved, exiting.', step)
          return {'step': step, 'preempted': True}
    ckpt.wait()
    final = _test_selected(config, state, step, ckpt, abstract, engine, run_eval,
                           validation_at if has_validation else None, writer)
  finally:  # Pending async saves finish (and are never left half-written) on any exit.
    ckpt.wait()
    ckpt.close()
    writer.close()
  final.update(splits=data.eval_splits, wall_seconds=time.time() - start_time,
               compile_seconds=compile_seconds or 0.0,
               train_examples_per_sec=(timed_steps * config.batch_size / train_seconds
                                       if train_seconds > 0 else 0.0))
  if jax.process_index() == 0:
    reporting.write_atomically(os.path.join(workdir, 'final_metrics.json'),
                               json.dumps(final, indent=2))
  logging.info('Done at step %d: %s', step, json.dumps(final))
  return final


def _test_selected(config, state, step, ckpt, abstract, engine, run_eval, validation_at,
                   writer) -> dict:
  """Evaluates the selected checkpoint on the test split, once: the best one on the
  validation split by config.checkpoint.best_metric, else the last one.
  `validation_at` (step -> validation metrics of this run) is None without a
  validation split."""
  best = ckpt.best_step()  # None without a validation split or a best_metric.
  chosen = state
  if best is not None and best != step:
    restored = ckpt.restore_step(best, abstract)
    if restored is None:  # Unreadable (moved aside, with a warning): test the last one.
      best = None
    else:
      chosen = engine.from_canonical(restored)
  selected = step if best is None else best
  selection = (f'best validation {config.checkpoint.best_metric} '
               f'({config.checkpoint.best_mode})' if best is not None else
               'last step' if validation_at is not None else
               'last step (no validation split)')
  result = {'step': step, 'selected_step': selected, 'selection': selection}
  if validation_at is not None:
    result['validation'] = validation_at.get(selected) or run_eval(chosen, 'validation')
  logging.info('Testing the checkpoint of step %d (%s) on the test split.', selected, selection)
  result['test'] = run_eval(chosen, 'test')
  writer.write(selected, 'test', result['test'])
  return result
