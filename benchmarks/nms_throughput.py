r"""Throughput of tasks.nms.batched_nms per method under jax.jit, on YOLOv3-like
candidates: per image, num_boxes boxes in clusters of heavily overlapping jittered
copies around a few objects (plus low-scoring background boxes), num_classes classes.

  python -m benchmarks.nms_throughput [--batch_size=8] [--num_boxes=1000] \
      [--num_classes=10] [--max_detections=100] [--repeats=20] \
      [--methods=greedy,diou,soft_linear,soft_gaussian]

Each method is compiled and run twice (warm-up), then timed over --repeats calls on a
batch already on the device (jax.block_until_ready after each call). Prints, per
method: ms per batch, ms per image, images/s and the mean number of detections kept.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from tasks import nms

_BATCH = flags.DEFINE_integer('batch_size', 8, 'Images per batch.')
_BOXES = flags.DEFINE_integer('num_boxes', 1000, 'Candidate boxes per image.')
_CLASSES = flags.DEFINE_integer('num_classes', 10, 'Classes.')
_OBJECTS = flags.DEFINE_integer('num_objects', 20, 'Objects per image (cluster centres).')
_SIZE = flags.DEFINE_integer('image_size', 416, 'Square image side in pixels.')
_MAX_DET = flags.DEFINE_integer('max_detections', 100, 'Output rows per image.')
_TOP_K = flags.DEFINE_integer('pre_nms_top_k', 1000, 'Candidates entering NMS.')
_IOU = flags.DEFINE_float('iou_threshold', 0.45, 'IoU threshold (N_t for Soft-NMS).')
_SCORE = flags.DEFINE_float('score_threshold', 0.001, 'Score threshold.')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed calls per method.')
_METHODS = flags.DEFINE_list('methods', list(nms.METHODS), 'Methods to time.')
_CLASS_AWARE = flags.DEFINE_bool('class_aware', True, 'Per-class suppression.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed of the candidates.')


def candidates(rng: np.random.Generator, batch: int, num_boxes: int, num_classes: int,
               num_objects: int, size: int):
  """boxes [batch, num_boxes, 4] float32, scores [batch, num_boxes] float32 and classes
  [batch, num_boxes] int32: 90% of the boxes are copies of an object's box jittered by
  ~10% of its size (score high, mostly the object's class), 10% random background
  boxes (score low, random class), like the raw output of a YOLOv3 head."""
  centre = rng.uniform(0.1, 0.9, (batch, num_objects, 2)) * size
  extent = rng.uniform(0.05, 0.4, (batch, num_objects, 2)) * size
  label = rng.integers(0, num_classes, (batch, num_objects))
  owner = rng.integers(0, num_objects, (batch, num_boxes))
  take = lambda x: np.take_along_axis(x, owner[..., None] if x.ndim == 3 else owner, axis=1)
  ext = take(extent) * rng.uniform(0.85, 1.15, (batch, num_boxes, 2))
  cen = take(centre) + rng.normal(0, 0.1, (batch, num_boxes, 2)) * take(extent)
  cls = np.where(rng.uniform(size=(batch, num_boxes)) < 0.8, take(label),
                 rng.integers(0, num_classes, (batch, num_boxes)))
  score = rng.beta(2, 2, (batch, num_boxes))
  background = rng.uniform(size=(batch, num_boxes)) < 0.1
  cen = np.where(background[..., None], rng.uniform(0, size, (batch, num_boxes, 2)), cen)
  score = np.where(background, score * 0.05, score)
  boxes = np.clip(np.concatenate([cen - ext / 2, cen + ext / 2], axis=-1), 0, size)
  return boxes.astype(np.float32), score.astype(np.float32), cls.astype(np.int32)


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  batch = candidates(rng, _BATCH.value, _BOXES.value, _CLASSES.value, _OBJECTS.value,
                     _SIZE.value)
  batch = jax.device_put(batch)
  print(f'device: {jax.devices()[0].device_kind} ({jax.default_backend()}); '
        f'{_BATCH.value} images x {_BOXES.value} boxes, {_CLASSES.value} classes, '
        f'max_detections {_MAX_DET.value}, pre_nms_top_k {_TOP_K.value}, '
        f'class_aware {_CLASS_AWARE.value}')
  print(f'{"method":<14} {"ms/batch":>9} {"ms/image":>9} {"images/s":>9} {"kept/image":>10}')
  for method in _METHODS.value:
    fn = jax.jit(functools.partial(
        nms.batched_nms, method=method, iou_threshold=_IOU.value,
        score_threshold=_SCORE.value, pre_nms_top_k=_TOP_K.value,
        max_detections=_MAX_DET.value, class_aware=_CLASS_AWARE.value))
    for _ in range(2):  # Compiles, then one more untimed call.
      out = jax.block_until_ready(fn(*batch))
    start = time.perf_counter()
    for _ in range(_REPEATS.value):
      jax.block_until_ready(fn(*batch))
    seconds = (time.perf_counter() - start) / _REPEATS.value
    kept = float(jnp.mean(out['valid'].sum(axis=-1)))
    print(f'{method:<14} {seconds * 1e3:9.2f} {seconds * 1e3 / _BATCH.value:9.3f} '
          f'{_BATCH.value / seconds:9.1f} {kept:10.1f}')


if __name__ == '__main__':
  app.run(main)
