r"""Anchor box shapes by k-means on the training boxes with the distance 1 - IoU.

YOLOv2 (Redmon & Farhadi 2017, "YOLO9000: Better, Faster, Stronger", Sec. 2 "Dimension
Clusters") picks its priors by k-means on the training boxes' sizes with

  d(box, centroid) = 1 - IoU(box, centroid),

the IoU of the two shapes placed on a common centre, so that large boxes do not dominate
as they would with the Euclidean distance. YOLOv3 (Redmon & Farhadi 2018, "YOLOv3: An
Incremental Improvement", Sec. 2.3) takes 9 clusters and gives 3 to each of its 3 scales,
the smallest to stride 8; its COCO clusters are YOLOV3_COCO_ANCHORS.

  python -m data.anchors --config=configs/yolov3_fashion_mnist_scenes.py \
      [--num_anchors=9] [--max_examples=N] [--seed=0]

prints the anchors (in the network's input pixels) ready to paste into the config's
anchors (configs/common.py), their mean best IoU with the training boxes, and that of
YOLOv3's COCO anchors scaled to the same input size. Boxes sharing a centre or a corner
have the same IoU, so "shape IoU" needs no positions.
"""

import numpy as np

# YOLOv3's COCO anchors (width, height) in pixels of a 416x416 input (yolov3.cfg).
YOLOV3_COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119),
                       (116, 90), (156, 198), (373, 326))
YOLOV3_INPUT_SIZE = 416
STRIDES = (8, 16, 32)


def shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
  """IoU of boxes and anchors placed on a common centre (shapes only).

  wh: [n, 2] box (width, height); anchors: [k, 2] (width, height), both >= 0.
  Returns [n, k] float64: min(w) min(h) / (w h + w' h' - min(w) min(h)); 0 where both
  areas are 0.
  """
  wh = np.asarray(wh, np.float64)[:, None, :]
  anchors = np.asarray(anchors, np.float64)[None, :, :]
  inter = np.prod(np.minimum(wh, anchors), axis=-1)
  union = np.prod(wh, axis=-1) + np.prod(anchors, axis=-1) - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _kmeans_pp_init(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """k-means++ (Arthur & Vassilvitskii 2007) seeding with d = 1 - IoU: each next centre is
  a box drawn with probability proportional to d^2 to its nearest centre so far."""
  centres = [wh[rng.integers(len(wh))]]
  d2 = (1.0 - shape_iou(wh, np.array(centres))[:, 0]) ** 2
  for _ in range(1, k):
    total = d2.sum()
    # All boxes already coincide with a centre (fewer distinct shapes than k): uniform.
    i = rng.choice(len(wh), p=d2 / total) if total > 0 else rng.integers(len(wh))
    centres.append(wh[i])
    d2 = np.minimum(d2, (1.0 - shape_iou(wh, wh[i:i + 1])[:, 0]) ** 2)
  return np.array(centres)


def kmeans_anchors(wh: np.ndarray, k: int = 9, seed: int = 0,
                   iterations: int = 300) -> tuple[np.ndarray, float]:
  """k-means of box shapes with the distance 1 - shape IoU (YOLOv2, Sec. 2).

  wh: [n, 2] float box (width, height), all > 0, n >= k.
  k-means++ seeding from the data (numpy Generator seeded with `seed`); each box goes to
  the centroid of highest shape IoU; each centroid becomes the *mean* (width, height) of
  its boxes (Lloyd's k-means update; a median is a common variant); stops
  when no assignment changes, or after `iterations` updates. An empty cluster is
  re-seeded with the box that fits its current centroid worst (lowest best IoU).

  Returns (anchors [k, 2] float32 sorted by area ascending, mean over the boxes of the
  best IoU with any anchor).
  """
  wh = np.asarray(wh, np.float64)
  if wh.ndim != 2 or wh.shape[1] != 2:
    raise ValueError(f'wh must be [n, 2] (width, height), got shape {wh.shape}')
  if not np.isfinite(wh).all() or (wh <= 0).any():
    raise ValueError('wh must be finite and > 0 (drop empty boxes first)')
  if k < 1 or len(wh) < k:
    raise ValueError(f'k must be in [1, n = {len(wh)}] boxes, got k = {k}')
  if iterations < 1:
    raise ValueError(f'iterations must be >= 1, got {iterations}')
  rng = np.random.default_rng(seed)
  centroids = _kmeans_pp_init(wh, k, rng)
  assignment = None
  for _ in range(iterations):
    iou = shape_iou(wh, centroids)
    new_assignment = iou.argmax(axis=1)
    best = iou.max(axis=1)
    counts = np.bincount(new_assignment, minlength=k)
    for empty in np.flatnonzero(counts == 0):
      # Re-seed from the worst-fit box, taken from a cluster it does not empty (one
      # exists: n >= k boxes in fewer than k clusters).
      movable = np.flatnonzero(counts[new_assignment] > 1)
      worst = movable[best[movable].argmin()]
      counts[new_assignment[worst]] -= 1
      new_assignment[worst], counts[empty], best[worst] = empty, 1, 1.0
    if assignment is not None and np.array_equal(new_assignment, assignment):
      break
    assignment = new_assignment
    for j in range(k):
      centroids[j] = wh[assignment == j].mean(axis=0)
  anchors = centroids[np.argsort(centroids.prod(axis=1), kind='stable')].astype(np.float32)
  return anchors, mean_best_iou(wh, anchors)


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
  """The mean over boxes [n, 2] of the highest shape IoU with any anchor [k, 2]."""
  return float(shape_iou(wh, anchors).max(axis=1).mean())


def scaled_yolov3_anchors(input_size: tuple[int, int]) -> np.ndarray:
  """YOLOv3's COCO anchors [9, 2] (width, height) scaled from 416x416 to an input of
  (height, width) pixels."""
  height, width = input_size
  return (np.array(YOLOV3_COCO_ANCHORS, np.float64) *
          np.array([width, height]) / YOLOV3_INPUT_SIZE).astype(np.float32)


def format_anchors(anchors: np.ndarray) -> str:
  """Anchors [k, 2] (k divisible by 3, sorted by area) -> Python source of a tuple of
  (w, h) pairs, 1 decimal, one line per scale (the smallest third for stride 8), as the
  configs write their anchors."""
  anchors = np.asarray(anchors)
  if len(anchors) % len(STRIDES):
    raise ValueError(f'{len(anchors)} anchors do not split over the {len(STRIDES)} scales')
  per_scale = len(anchors) // len(STRIDES)
  lines = []
  for s, stride in enumerate(STRIDES):
    pairs = ', '.join(f'({w:.1f}, {h:.1f})' for w, h in anchors[s * per_scale:(s + 1) * per_scale])
    end = ')' if s == len(STRIDES) - 1 else ','
    lines.append(f'{"(" if s == 0 else " "}{pairs}{end}  # stride {stride}')
  return '\n'.join(lines)


def _input_size(config) -> tuple[int, int]:
  """(height, width) of the network input: config.data.image_size, else
  config.model.image_size (an int for a square input, or (height, width))."""
  size = None
  for group in ('data', 'model'):
    if size is None and group in config:
      size = config[group].get('image_size')
  if size is None:
    raise ValueError('neither config.data.image_size nor config.model.image_size (the '
                     'network input size) is set')
  return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))


def report(wh: np.ndarray, input_size: tuple[int, int], num_anchors: int = 9,
           seed: int = 0) -> str:
  """The text `main` prints for training box sizes wh [n, 2] in input pixels."""
  wh = np.asarray(wh, np.float64)
  valid = (wh > 0).all(axis=1)
  anchors, fit = kmeans_anchors(wh[valid], num_anchors, seed=seed)
  lines = [f'{valid.sum()} training boxes ({(~valid).sum()} empty ones dropped), input '
           f'{input_size[0]}x{input_size[1]}; k-means (1 - IoU) anchors, {num_anchors}:',
           format_anchors(anchors),
           f'mean best IoU: {fit:.4f}']
  default = scaled_yolov3_anchors(input_size)
  lines.append(f'YOLOv3 COCO anchors scaled from {YOLOV3_INPUT_SIZE}x{YOLOV3_INPUT_SIZE}: '
               f'mean best IoU {mean_best_iou(wh[valid], default):.4f}')
  return '\n'.join(lines)


def run(config, num_anchors: int = 9, max_examples: int = 0, seed: int = 0) -> str:
  """`report` for the training boxes of a detection config (what `main` prints), of its
  first `max_examples` training examples (0: all)."""
  from data import detection  # pylint: disable=import-outside-toplevel
  wh = np.asarray(detection.training_box_sizes(config, max_examples), np.float32)
  return report(wh, _input_size(config), num_anchors, seed)


def main(argv):
  del argv
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  if f.num_anchors < 3 or f.num_anchors % 3 or f.max_examples < 0:
    raise app.UsageError('--num_anchors must be a positive multiple of 3 (three scales) and '
                         f'--max_examples >= 0; got {f.num_anchors} and {f.max_examples}')
  print(run(f.config, f.num_anchors, f.max_examples, f.seed))


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
  flags.DEFINE_integer('num_anchors', 9, 'Anchors (clusters), a multiple of 3.')
  flags.DEFINE_integer('max_examples', 0, 'Training examples to read (0: all).')
  flags.DEFINE_integer('seed', 0, 'k-means++ seed.')
  flags.mark_flags_as_required(['config'])
  from train import run_config  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=run_config.parse_flags)
