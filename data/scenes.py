"""Fashion-MNIST scenes: real Fashion-MNIST items pasted on generated canvases, with
exact per-pixel labels, instance maps and boxes (segmentation now, detection later).

A scene is a canvas (default 64x64, 1 channel, black) holding 1..4 items drawn from an
item pool (the 28x28 Fashion-MNIST images of one split), each resized to a random side
(default 20..48 px, square, bilinear) and placed at a random position; an item may stick
out of the canvas by up to a quarter of its side, so its centre is always on the canvas.
Items are pasted in order and a later item covers an earlier one with its foreground
pixels only (occlusion).

Foreground: a pixel of the resized item is foreground when its intensity is >
FOREGROUND_THRESHOLD (10 of 255). Fashion-MNIST items are bright objects on an exact-0
background (half of all pixels are 0), surrounded by a faint halo of values 1..10 (JPEG
and downscaling residue in the source photos, about 5 % of the non-zero pixels) that the
bilinear resize spreads a little further; 10 cuts that halo and keeps the object (the
first object intensities are far above it). Darker gaps inside an item (a bag's handle)
stay background, so the item below shows through them.

Labels: 0 = background, k + 1 = Fashion-MNIST class k of the item visible at that pixel
(11 classes, CLASS_NAMES). Scene i is a pure function of (seed, item pool, i): its random
numbers come from np.random.default_rng([seed, i]), so any scene can be generated in any
order and in any process, and a restarted run sees the same scenes.

Keep train and test items apart: build training scenes from training-split items and
eval scenes from test-split items (`load_split` does), so eval objects are unseen.
"""

import zlib

import numpy as np
from PIL import Image

from data import fashion_mnist, sources

CLASS_NAMES = ('background',) + tuple(fashion_mnist.CLASS_NAMES)  # Label k -> name.
NUM_CLASSES = len(CLASS_NAMES)  # 11: background + the 10 Fashion-MNIST classes.
FOREGROUND_THRESHOLD = 10  # Resized item pixels > this are the item's foreground.


class FashionMnistScenes:
  """Generated scenes as a Grain random-access source (`len`, `[]`).

  Args:
    images: the item pool, [n, 28, 28] or [n, 28, 28, 1] uint8 (Fashion-MNIST images).
    labels: [n] int, their classes 0..9.
    num_scenes: the number of scenes (the length of the source).
    canvas_size: side of the square canvas, in pixels.
    min_items, max_items: items per scene, drawn uniformly in [min_items, max_items]
      (distinct items of the pool when the pool is large enough).
    item_size: (smallest, largest) side of a pasted item in pixels, uniform integers;
      None: default_item_size(canvas_size), (20, 48) on the 64-pixel canvas.
    seed: scene i uses np.random.default_rng([seed, i]).

  Raises:
    ValueError: an empty pool, images and labels of different lengths, num_scenes < 1,
      1 <= min_items <= max_items violated, or item sizes outside [1, canvas_size].
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_scenes: int, *,
               canvas_size: int = 64, min_items: int = 1, max_items: int = 4,
               item_size: tuple[int, int] | None = None, seed: int = 0):
    images = np.asarray(images)
    images = images[..., 0] if images.ndim == 4 else images
    labels = np.asarray(labels)
    if images.ndim != 3 or len(images) != len(labels) or not len(images):
      raise ValueError(f'Need an item pool of [n, h, w] images with [n] labels, n > 0; got '
                       f'images {images.shape} and labels {labels.shape}')
    if num_scenes < 1:
      raise ValueError(f'num_scenes must be >= 1, got {num_scenes}')
    if not 1 <= min_items <= max_items:
      raise ValueError(f'Need 1 <= min_items <= max_items, got {min_items}, {max_items}')
    item_size = default_item_size(canvas_size) if item_size is None else tuple(item_size)
    if not 1 <= item_size[0] <= item_size[1] <= canvas_size:
      raise ValueError(f'item_size {tuple(item_size)} must satisfy 1 <= smallest <= largest '
                       f'<= canvas_size ({canvas_size})')
    self.images, self.labels = images.astype(np.uint8), labels.astype(np.int32)
    self.num_scenes, self.canvas_size = int(num_scenes), int(canvas_size)
    self.min_items, self.max_items = int(min_items), int(max_items)
    self.item_size = (int(item_size[0]), int(item_size[1]))
    self.seed = int(seed)

  def __len__(self) -> int:
    return self.num_scenes

  def __getitem__(self, index: int) -> dict:
    """{'image': [S, S, 1] uint8, 'label': [S, S] uint8} of scene `index` (see `scene`)."""
    scene = self.scene(index)
    return {'image': scene['image'], 'label': scene['label']}

  def scene(self, index: int) -> dict:
    """Scene `index` with everything known about it; n = the number of items in it.

    Returns:
      'image': [S, S, 1] uint8, the canvas.
      'label': [S, S] uint8, 0 = background, class + 1 of the visible item elsewhere.
      'instances': [S, S] int32, 0 = background, k = the k-th pasted item (1-based).
      'boxes': [n, 4] float32, [x0, y0, x1, y1] in pixel-edge coordinates (x1, y1
        exclusive: width = x1 - x0 pixels) of the item's whole foreground on the canvas,
        occluded parts included, clipped to the canvas; all 0 when none of it is on the
        canvas (cannot happen for items with any foreground: their centre is on it).
      'classes': [n] int32, the items' Fashion-MNIST classes 0..9.
      'visible': [n] float32, the fraction of each item's foreground pixels that is
        visible (on the canvas and not covered by a later item).
      'items': [n] int32, the items' indices into the pool.
    Raises IndexError for an index outside [0, len).
    """
    if not 0 <= index < self.num_scenes:
      raise IndexError(f'Scene index {index} outside [0, {self.num_scenes})')
    rng = np.random.default_rng([self.seed, int(index)])
    size = self.canvas_size
    count = int(rng.integers(self.min_items, self.max_items + 1))
    items = rng.choice(len(self.images), size=count, replace=count > len(self.images))
    sides = rng.integers(self.item_size[0], self.item_size[1] + 1, size=count)
    margins = sides // 4  # How far an item may stick out of the canvas.
    tops = rng.integers(-margins, size - sides + margins + 1)
    lefts = rng.integers(-margins, size - sides + margins + 1)

    image = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.int32)
    boxes = np.zeros((count, 4), np.float32)
    foreground_pixels = np.zeros(count, np.int64)
    for k, (item, side, top, left) in enumerate(zip(items, sides, tops, lefts)):
      patch = np.asarray(Image.fromarray(self.images[item]).resize(
          (int(side), int(side)), Image.Resampling.BILINEAR))
      foreground = patch > FOREGROUND_THRESHOLD
      foreground_pixels[k] = foreground.sum()
      # The part of the patch on the canvas: canvas rows y0:y1 = patch rows py0:py1.
      y0, x0 = max(top, 0), max(left, 0)
      y1, x1 = min(top + side, size), min(left + side, size)
      patch, foreground = (a[y0 - top:y1 - top, x0 - left:x1 - left]
                           for a in (patch, foreground))
      image[y0:y1, x0:x1][foreground] = patch[foreground]
      instances[y0:y1, x0:x1][foreground] = k + 1
      rows, cols = np.flatnonzero(foreground.any(1)), np.flatnonzero(foreground.any(0))
      if rows.size:
        boxes[k] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
    classes = self.labels[items]
    visible_pixels = np.bincount(instances.ravel(), minlength=count + 1)[1:]
    visible = visible_pixels / np.maximum(foreground_pixels, 1)
    label = np.concatenate([[0], classes + 1]).astype(np.uint8)[instances]
    return {'image': image[..., None], 'label': label, 'instances': instances,
            'boxes': boxes, 'classes': classes.astype(np.int32),
            'visible': visible.astype(np.float32), 'items': items.astype(np.int32)}


def default_item_size(canvas_size: int) -> tuple[int, int]:
  """Item sides 5/16 .. 3/4 of the canvas side: (20, 48) px on a 64-pixel canvas."""
  return max(1, round(canvas_size * 5 / 16)), max(1, round(canvas_size * 3 / 4))


def split_seed(split: str) -> int:
  """The scene seed of a split: a stable hash of its name, so that the scenes of a split
  are the same in every run (whatever config.seed) and differ between splits."""
  return zlib.crc32(split.encode())


def load_split(config, split: str, num_scenes: int | None = None) -> FashionMnistScenes:
  """The scenes of `split`: items from that slice of the Fashion-MNIST base split.

  `split` uses data.sources.split_slice syntax on 'train' / 'test' ('train[:55000]',
  'train[55000:]', 'test'). Reads config.data.dir (IDX folder, '' = Debian's path),
  config.data.canvas_size, config.data.num_train_scenes (for config.data.train_split) or
  config.data.num_eval_scenes (any other split; `num_scenes` overrides both), and the
  optional config.data.min_items (1), max_items (4) and item_size (None:
  default_item_size(canvas_size), (20, 48) px on 64-pixel canvases).

  Raises what fashion_mnist.load and FashionMnistScenes raise, and ValueError for an
  empty slice.
  """
  data = config.data
  base = sources.split_slice(split, 0)[0]
  images, labels = fashion_mnist.load(base, data.get('dir') or fashion_mnist.DEFAULT_DIR)
  part = sources.split_slice(split, len(images))[1]
  images, labels = images[part], labels[part]
  if not len(images):
    raise ValueError(f'Split {split!r} of Fashion-MNIST has no items')
  if num_scenes is None:
    num_scenes = data.num_train_scenes if split == data.train_split else data.num_eval_scenes
  return FashionMnistScenes(images, labels, num_scenes, canvas_size=data.canvas_size,
                            min_items=data.get('min_items', 1),
                            max_items=data.get('max_items', 4),
                            item_size=data.get('item_size', None),
                            seed=split_seed(split))


def main(argv):
  """Writes one scene's image (and its label map, coloured) as PNG files."""
  del argv
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from configs import common  # pylint: disable=import-outside-toplevel
  from tasks import overlay  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  if not f.out.lower().endswith('.png'):
    raise app.UsageError(f'--out={f.out} must name a .png file')
  config = common.get_segmentation_config()
  scene = load_split(config, f.split, num_scenes=f.index + 1).scene(f.index)
  Image.fromarray(scene['image'][..., 0]).save(f.out)
  label_path = f.out.rsplit('.', 1)[0] + '_label.png'
  Image.fromarray(overlay.PALETTE[scene['label'] % len(overlay.PALETTE)]).save(label_path)
  names = [CLASS_NAMES[c + 1] for c in scene['classes']]
  print(f'{f.out} ({label_path}): {len(names)} items: {", ".join(names)}')


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=ungrouped-imports
  flags.DEFINE_string('split', 'test', "Items' split: 'test', 'train[:55000]', ...")
  flags.DEFINE_integer('index', 0, 'Scene index.')
  flags.DEFINE_string('out', 'scene.png', 'Output PNG (the label map goes to *_label.png).')
  app.run(main)
