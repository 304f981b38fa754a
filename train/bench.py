r"""Training throughput of a config on synthetic data: compile time, step time,
examples/s and model FLOP/s (XLA's cost analysis of the compiled step).

  python -m train.bench --config=configs/vit_fashion_mnist.py [--steps=30] \
      [--config.batch_size=256 --config.compute_dtype=bfloat16 ...]

Uses the trainer's own components (model, task, optax chain, engine), so it times
exactly the step that `launch.py` runs, without the input pipeline.
"""

import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from data import pipeline, sources
from train import parallel, trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps (after one compile step).')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', 0, 'Input side in pixels; 0: the config\'s model.image_size, else its '
    'augment.random_resized_crop_size, else the dataset\'s (224 if it varies).')
flags.mark_flags_as_required(['config'])


def benchmark(config, steps: int, image_size: int = 0) -> dict:
  """Times `steps` train steps of `config` on random images of side `image_size`
  (0: from the config, see --image_size); returns the numbers."""
  if config.task != 'classification':
    raise ValueError(f'train.bench times image-classification configs (task={config.task!r}); '
                     'seq2seq runs report their throughput in the training log, and '
                     '`python -m train.predict --eval` times decoding.')
  engine = parallel.build(config.parallel)
  trainer.validate(config, engine.num_devices)
  m = config.model
  dataset_shape = sources.DATASETS.get(config.data.name, {}).get('image_shape') or (224,)
  size = (image_size or m.get('image_size', 0) or config.augment.random_resized_crop_size
          or dataset_shape[0])
  shape = (size, size, m.get('num_channels', 3))
  num_classes = sources.DATASETS.get(config.data.name, {}).get('num_classes', config.num_classes)
  model, task, _, schedule, init_fn = trainer.build_components(
      config, 10 ** 6, pipeline.image_spec(num_classes, shape), engine.axis_name)
  state = engine.init_state(init_fn)
  rng = np.random.default_rng(0)
  local_batch = config.batch_size // jax.process_count()
  batch = engine.put_batch({'image': rng.normal(size=(local_batch,) + shape).astype(np.float32),
                            'label': rng.integers(0, 10, local_batch).astype(np.int32)})
  step_fn = engine.train_step(model=model, task=task, schedule=schedule,
                              accum_steps=config.grad_accum_steps)
  flops = None
  if engine.name == 'jit':
    cost = step_fn.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get('flops')
  t = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t) / steps
  result = {'device': f'{jax.device_count()}x {jax.devices()[0].device_kind}',
            'engine': engine.name, 'model': m.name, 'image_shape': shape,
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
  print(json.dumps(benchmark(_CONFIG.value, _STEPS.value, _IMAGE_SIZE.value)))


if __name__ == '__main__':
  app.run(main)
