r"""Training throughput of a config on synthetic data: compile time, step time,
examples/s and model FLOP/s (XLA's cost analysis of the traced step; see host_flops).

  python -m train.bench --config=configs/vit_fashion_mnist.py [--steps=30] \
      [--config.batch_size=256 --config.compute_dtype=bfloat16 ...]

Uses the trainer's own components (model, task, optax chain, engine), so it times
exactly the step that `launch.py` runs, without the input pipeline.
"""

import json
import time
from typing import Optional

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

import tasks
from train import export, parallel, run_config, trainer

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags, defined only when it runs as one, so that `benchmark` imports
  next to other flag-defining modules (benchmarks/suite.py)."""
  config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  flags.DEFINE_integer('steps', 30, 'Timed steps (after one compile step).')
  flags.DEFINE_integer(
      'image_size', 0, 'Input side in pixels; 0: the config\'s model.image_size, else its '
      'augment.random_resized_crop_size, else the dataset\'s (224 if it varies).')
  flags.mark_flags_as_required(['config'])


def build_step(config, image_size: int = 0, devices=None, abstract: bool = False):
  """The train step of `config` as launch.py builds it (not yet compiled) on `devices`
  (default: all) and its inputs: (engine, step_fn, state, batch, input_shape). The batch
  is the random one of the config's task module, images of side `image_size` (0: from
  the config, see --image_size). `abstract`: state and batch as jax.ShapeDtypeStruct
  trees, enough to lower the step (nothing allocated on the devices). Raises ValueError
  for bad configs and tasks without fixed-shape inputs."""
  engine = parallel.build(config.parallel, devices)
  trainer.validate(config, engine.num_devices)
  spec, host_batch = tasks.get(config.task).bench_inputs(
      config, image_size, config.batch_size // jax.process_count(), np.random.default_rng(0))
  model, task, _, schedule, init_fn = trainer.build_components(config, 10 ** 6, spec,
                                                               engine.axis_name)
  if abstract:
    state = jax.eval_shape(init_fn)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_batch)
  else:
    state = engine.init_state(init_fn)
    batch = engine.put_batch(host_batch)
  step_fn = engine.train_step(model=model, task=task, schedule=schedule,
                              accum_steps=config.grad_accum_steps)
  return engine, step_fn, state, batch, tuple(spec.init_args[0].shape[1:])


def _flops(cost) -> Optional[float]:
  """The 'flops' of an XLA cost analysis (a dict, a one-element list of one, or None)."""
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return (cost or {}).get('flops')


def host_flops(config, image_size: int = 0) -> Optional[float]:
  """XLA's FLOP count of `config`'s train step as traced for one host CPU device, or
  None if it cannot be counted there (e.g. JAX_PLATFORMS names no CPU). The step is
  built for this process's share of the batch, as `build_step` builds it, and the count
  scaled to all processes.

  JAX 0.11 on GPUs returns no cost analysis of a traced step, and the compiled
  executable's leaves out what cuDNN and cuBLAS custom calls compute (jax-ml/jax#22249;
  on an H100 it gave ResNet-50 about a third of this count and ViT-B/16 under 1 %). The
  model's FLOPs do not depend on the device, so they are counted on the host instead,
  with the matmul attention core (cuDNN's does not lower for a CPU; the same products)
  and no weights loaded (the count does not depend on them). Only shapes are built
  (`build_step(abstract=True)`): no state is initialised.
  """
  try:
    config = export.portable_config(config.copy_and_resolve_references())
    config.init_from, config.init_into = '', ''  # init_into alone is refused.
    _, step_fn, state, batch, _ = build_step(config, image_size, jax.devices('cpu')[:1],
                                             abstract=True)
    flops = _flops(step_fn.lower(state, batch).cost_analysis())
    return flops and flops * jax.process_count()
  except Exception as e:  # pylint: disable=broad-except
    # Only the MFU column depends on it: the benchmark goes on without one.
    logging.warning('No FLOP count for %s on the host CPU: %r', config.model.name, e)
    return None


def benchmark(config, steps: int, image_size: int = 0, devices=None) -> dict:
  """Times `steps` train steps of `config` on the random batch of `build_step`, on
  `devices` (default: all); returns the numbers. gflop_per_step and tflop_per_s count
  the whole step on all its devices (XLA's cost analysis of the jitted step, or of
  the same step lowered for the host CPU where the backend gives none: host_flops).
  Raises ValueError for bad configs and tasks without fixed-shape inputs."""
  engine, step_fn, state, batch, shape = build_step(config, image_size, devices)
  flops = None
  t = time.perf_counter()  # compile_s: compilation and the first step.
  if engine.name == 'jit':
    lowered = step_fn.lower(state, batch)
    # Counted on the step as traced, before XLA's optimisations: the whole step on all
    # devices (the compiled executable's analysis covers one device's share), and on
    # GPUs before matmuls and convolutions become cuBLAS/cuDNN custom calls, which that
    # analysis leaves out (jax-ml/jax#22249).
    flops = _flops(lowered.cost_analysis())
    step_fn = lowered.compile()  # Compiled once, here.
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t) / steps
  if engine.name == 'jit':
    flops = flops or host_flops(config, image_size)  # Outside the timings.
    # A lax.scan body counts once: scale by the gradient-accumulation micro-batches (the
    # optimizer update, outside the scan, is then over-counted; a small part of a step).
    flops = flops and flops * config.grad_accum_steps
  result = {'device': f'{engine.num_devices}x {jax.devices()[0].device_kind}',
            'engine': engine.name, 'model': config.model.name, 'input_shape': shape,
            'batch_size': config.batch_size,
            'compute_dtype': config.compute_dtype, 'compile_s': round(compile_s, 2),
            'step_ms': round(step_s * 1e3, 2),
            'examples_per_s': round(config.batch_size / step_s, 1)}
  if flops:
    result['gflop_per_step'] = round(flops / 1e9, 3)
    result['tflop_per_s'] = round(flops / step_s / 1e12, 4)
  return result


def main(argv):
  del argv
  print(json.dumps(benchmark(FLAGS.config, FLAGS.steps, FLAGS.image_size)))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=run_config.parse_flags)
