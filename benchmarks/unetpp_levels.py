r"""UNet++ pruned at inference (Zhou et al. 2019, IEEE TMI, Sec. III-C "model pruning"):
for each level L1..L<depth> of a trained run, the sub-network's parameters, GFLOPs per
image, mIoU on an eval split and inference speed.

  python -m benchmarks.unetpp_levels --config=configs/unetpp_fashion_mnist_scenes.py \
      [--workdir=runs/unetpp_fashion_mnist_scenes] [--split=test] [--repeats=5]

Every level is evaluated from the same (latest) checkpoint with
--config.inference.level=k, which runs only the nodes X^{i,j} with i + j <= k.
images/s: the compiled prediction of one eval batch (config.eval_batch_size images,
already on the device), timed over --repeats runs after a compiling one; mIoU: the whole
split through train.predict's timed evaluation (input pipeline included).
"""

import copy
import json
import os
import time

import jax
from absl import app, flags

from nets import unet
from tasks import common
from train import predict, reporting, run_config  # predict defines --config, --workdir, --split.
from train.restore import Predictor

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed predictions of one batch per level.')


def measure(config, workdir: str, level: int, split: str, repeats: int) -> dict:
  """One level's parameters, GFLOPs per image, eval metrics and images/s."""
  config = copy.deepcopy(config)
  config.inference.level = level
  predictor = Predictor(config, workdir)
  metrics = predictor.timed_eval(split)
  batch = next(iter(predictor.data.eval_batches(split)))
  predictor.predict_batch(batch)  # Compiles.
  start = time.perf_counter()
  for _ in range(repeats):
    predictor.predict_batch(batch)
  seconds = (time.perf_counter() - start) / repeats
  model = common.build_model(config, **predictor.data.spec.model_kwargs)
  shape = predictor.data.spec.init_args[0].shape[1:]
  cost, = unet.level_costs(model, shape, [level or model.depth])
  return {'level': level or model.depth, 'params': cost['params'],
          'gflops_per_image': round(cost['gflops'], 4), 'miou': round(metrics['miou'], 4),
          'pixel_accuracy': round(metrics['pixel_accuracy'], 4),
          'images_per_s': round(len(batch['image']) / seconds, 1)}


def main(argv):
  del argv
  reporting.quiet_library_logs()
  f = flags.FLAGS
  config = f.config
  name = os.path.splitext(os.path.basename(f['config'].config_filename))[0]
  workdir = f.workdir or os.path.join('runs', name)
  print(f'device: {jax.device_count()}x {jax.devices()[0].device_kind}; split: {f.split}')
  rows = [measure(config, workdir, k, f.split, _REPEATS.value)
          for k in range(1, config.model.depth + 1)]
  print('| level | params | GFLOPs / image | mIoU | pixel acc. | images/s |')
  print('|---|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f"| L{r['level']} | {r['params']:,} | {r['gflops_per_image']} | {r['miou']:.4f} | "
          f"{r['pixel_accuracy']:.4f} | {r['images_per_s']} |")
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main, flags_parser=run_config.parse_flags)
