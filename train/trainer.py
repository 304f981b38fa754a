"""run(config, workdir): the training loop, top to bottom.

1. Check the config and the data before anything compiles.
2. Build model, task, optimizer, engine; restore the latest checkpoint or initialise.
3. Loop: one jitted step per batch; metrics stay on the device until a log point.
4. Evaluate on the whole eval split at eval points; save checkpoints at checkpoint
   points, on SIGTERM and at the end. A non-finite loss stops the run with its step.
"""

import dataclasses
import functools
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import data as data_lib
import nets
from train import checkpoint as checkpoint_lib
from train import optim, parallel, reporting, tasks
from train import state as state_lib

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


def total_train_steps(config, num_train_examples: int) -> int:
  """num_train_steps when > 0, else num_epochs full passes of the global batch."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(1, int(config.num_epochs * (num_train_examples // config.batch_size)))


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
  choice('task', config.task, tasks.TASKS)
  _check_model(config)
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
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError('Set config.num_train_steps > 0 or config.num_epochs > 0')


def _check_model(config) -> None:
  """Builds (does not initialise) the model with placeholder data sizes, so unknown
  names and fields fail before the data is read; checks seq2seq lengths against it."""
  placeholder = ({'num_classes': 10} if config.task == 'classification'
                 else {'source_vocab_size': 8, 'target_vocab_size': 8})
  model = nets.build(config.model.name, **placeholder,
                     **{k: v for k, v in config.model.items() if k != 'name'})
  if config.task != 'seq2seq':
    return
  from data import seq2seq  # pylint: disable=import-outside-toplevel
  if config.data.length_policy not in seq2seq.LENGTH_POLICIES:
    raise ValueError(f'config.data.length_policy={config.data.length_policy!r} is not valid; '
                     f'choose one of {list(seq2seq.LENGTH_POLICIES)}')
  if config.decode.beam_size < 1:
    raise ValueError(f'config.decode.beam_size must be >= 1, got {config.decode.beam_size}')
  for field in ('data.max_length', 'decode.max_length'):
    value = config[field.split('.')[0]][field.split('.')[1]]
    if not 2 <= value <= model.max_length:
      raise ValueError(f'config.{field}={value} must be in [2, model.max_length='
                       f'{model.max_length}] (raise config.model.max_length for longer ones)')


class _Preemption:
  """Turns SIGTERM into a flag the loop checks (save, then exit cleanly)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. some test runners): no handler.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and exiting.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def evaluate(state, engine, data, eval_step, predict_step=None) -> dict:
  """Exact metrics over the whole eval split: name -> sum / count (host floats), plus
  `data.score` of the predictions when `predict_step` is given (seq2seq decoding)."""
  totals, masks, indices, outputs = None, [], [], []
  for batch in data.eval_batches(jax.process_index(), jax.process_count()):
    device_batch = engine.put_batch(batch)
    metrics = eval_step(state, device_batch)
    totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
    masks.append(batch['mask'])
    if predict_step is not None:
      outputs.append(engine.to_local(predict_step(state, device_batch)))
      indices.append(batch['index'])
  totals = engine.to_host(totals)
  result = {name: float(v[0] / v[1]) for name, v in totals.items()}
  mask = _all_processes(np.concatenate(masks)) > 0
  result['num_examples'] = float(mask.sum())
  if predict_step is not None:
    index, output = (_all_processes(np.concatenate(x))[mask] for x in (indices, outputs))
    result.update(data.score(index, output))
  return result


def _all_processes(x: np.ndarray) -> np.ndarray:
  """This process's rows -> the rows of all processes, concatenated (in process order)."""
  return multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x


def _summarise(step_metrics: list[dict], first_step: int) -> dict:
  """Host metrics of consecutive steps -> averages. Raises NonFiniteLossError with the
  step number of the first non-finite loss."""
  for i, m in enumerate(step_metrics):
    if not np.isfinite(m['loss'][0]):
      raise NonFiniteLossError(f'Training loss is {m["loss"][0] / m["loss"][1]} at step '
                               f'{first_step + i}; stopping. The last checkpoint written '
                               'before it is kept.')
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
  model = nets.build(config.model.name, dtype=COMPUTE_DTYPES[config.compute_dtype],
                     **spec.model_kwargs,
                     **{k: v for k, v in config.model.items() if k != 'name'})
  if 'axis_name' in {f.name for f in dataclasses.fields(model)}:
    model = model.clone(axis_name=axis_name)
  task = tasks.build(config, spec)
  tx, schedule = optim.build(config, total_steps)
  init_fn = functools.partial(state_lib.create, model, tx, spec.init_args, config.seed)
  return model, task, tx, schedule, init_fn


def abstract_state(init_fn, engine):
  """The TrainState `init_fn` would build, as shapes replicated over the engine's mesh
  (what checkpoints restore into); nothing is computed."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=engine.replicated),
                      jax.eval_shape(init_fn))


def run(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it has checkpoints).

  Returns the final eval metrics (name -> float). Raises ValueError for bad configs,
  sources.DatasetNotFoundError / FileNotFoundError for missing data,
  NonFiniteLossError for a NaN/Inf loss.
  """
  engine = parallel.build(config.parallel)
  validate(config, engine.num_devices)
  data = data_lib.build(config)
  total_steps = total_train_steps(config, data.num_train_examples)

  model, task, tx, schedule, init_fn = build_components(config, total_steps, data.spec,
                                                        engine.axis_name)

  train_iter = data.train_iterator(jax.process_index(), jax.process_count())
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                                     best_metric=config.checkpoint.best_metric,
                                     best_mode=config.checkpoint.best_mode,
                                     async_save=config.checkpoint.async_save)
  abstract = abstract_state(init_fn, engine)
  restored = ckpt.restore_latest(abstract, train_iter)
  state = engine.from_canonical(restored) if restored is not None else engine.init_state(init_fn)
  step = int(parallel.replica(restored.step)) if restored is not None else 0

  writer = reporting.MetricWriter(workdir)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2))
  total, table = state_lib.count_params(abstract.params)
  logging.info('Model %s: %s parameters\n%s', config.model.name, f'{total:,}',
               reporting.parameter_table(total, table))
  logging.info('Training %d steps (global batch %d, %d devices, %d processes, engine %s), '
               'starting at step %d.', total_steps, config.batch_size, engine.num_devices,
               jax.process_count(), engine.name, step)

  train_step = engine.train_step(model=model, task=task, schedule=schedule,
                                 accum_steps=config.grad_accum_steps)
  eval_step = engine.eval_step(model=model, task=task)
  # Datasets with a `score` (seq2seq) are also decoded and scored at every evaluation.
  predict_step = (engine.predict_step(model=model, task=task) if hasattr(data, 'score')
                  else None)
  run_eval = lambda s: evaluate(s, engine, data, eval_step, predict_step)

  pending, pending_from = [], step + 1
  # Throughput and ETA count only train steps after the first (compiling) one.
  train_seconds, timed_steps, steps_since_mark, mark = 0.0, 0, 0, time.time()
  compile_seconds = None
  eval_metrics, eval_at = {}, None
  start_time = time.time()
  try:
    with _Preemption() as preemption:
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
        stop = preemption.requested or ckpt.reached_preemption(step)
        do_eval = is_last or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0)
        do_ckpt = is_last or stop or (config.checkpoint_every_steps > 0
                                      and step % config.checkpoint_every_steps == 0)
        if step % config.log_every_steps == 0 or do_eval or do_ckpt:
          summary = _summarise(engine.to_host(pending), pending_from)  # The only device sync.
          train_seconds += time.time() - mark
          timed_steps += steps_since_mark
          steps_since_mark, mark = 0, time.time()
          summary['examples_per_sec'] = (timed_steps * config.batch_size / train_seconds
                                         if train_seconds > 0 else 0.0)
          eta = (total_steps - step) * train_seconds / max(timed_steps, 1)
          writer.write(step, 'train', summary,
                       f' | {step}/{total_steps} | ETA {reporting.format_duration(eta)}')
          pending, pending_from = [], step + 1
        if do_eval:
          eval_metrics, eval_at = run_eval(state), step
          writer.write(step, 'eval', eval_metrics)
        if do_ckpt:
          ckpt.save(engine.to_canonical(state), train_iter,
                    metrics=eval_metrics if eval_at == step else None)
        if do_eval or do_ckpt:
          mark = time.time()
        if stop and not is_last:
          logging.warning('Preempted at step %d: checkpoint saved, exiting.', step)
          break
  finally:  # Pending async saves finish (and are never left half-written) on any exit.
    ckpt.wait()
    ckpt.close()
  if not eval_metrics:  # Resumed at the end: evaluate the restored state.
    eval_metrics = run_eval(state)
    writer.write(step, 'eval', eval_metrics)
  eval_metrics = dict(eval_metrics, wall_seconds=time.time() - start_time,
                      compile_seconds=compile_seconds or 0.0, step=step,
                      train_examples_per_sec=(timed_steps * config.batch_size / train_seconds
                                              if train_seconds > 0 else 0.0))
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'final_metrics.json'), 'w', encoding='utf-8') as f:
      json.dump(eval_metrics, f, indent=2)
  logging.info('Done at step %d: %s', step, json.dumps(eval_metrics))
  return eval_metrics
