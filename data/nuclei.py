"""Nuclei segmentation on one real fluorescence-microscopy image, fully offline.

Data: the 2-D example that the `stardist` package (Schmidt et al. 2018, "Cell Detection
with Star-convex Polygons", MICCAI) ships in its wheel: `stardist/data/images/img2d.tif`,
a 512x512 uint16 image (values 0..235) from the 2018 Data Science Bowl nuclei set (Caicedo
et al. 2019, Nature Methods 16:1247), and `mask2d.tif`, its 512x512 uint16 instance labels
(0 = background, 125 nuclei). `prepare` takes only these two files out of the wheel (a zip);
stardist is never installed. Prepare once (needs the wheel or pip access to PyPI):

  python -m data.prepare --dataset=stardist_nuclei [--data_dir=DIR] [--wheel=PATH.whl]

Task: binary semantic segmentation, label 0 = background, 1 = nucleus. Pixels are labelled
by class, not instance, so a nucleus cut by a split or tile border is fine: each side
labels its own pixels of it as nucleus (12 real nuclei straddle a split border), and no
pixel is in two splits.

Splits: fixed vertical strips of the image, all rows, disjoint in pixels (columns for the
W = 512 image; for another width the same fractions 5/8 and 3/4, rounded):

  'train'       columns [0, 320)    (5/8 of the width)
  'validation'  columns [320, 384)  (1/8)
  'test'        columns [384, 512)  (the right quarter)

Tiles: 'train' yields every tile_size x tile_size window of its strip on a regular grid
with stride max(1, tile_size // 2), plus one window flush with the strip's right / bottom
edge where the grid does not reach it, so every train pixel is covered (the windows
overlap; random augmentation is applied elsewhere). 'validation' and 'test' yield
non-overlapping tiles that cover their strip exactly, each pixel once, so per-pixel
metrics summed over the tiles are metrics of the strip. tile_size must divide both sides
of the eval strip (512x64 and 512x128, height x width, for the real image: any divisor of
64, e.g. 16, 32 or 64, for both eval splits); there is no padding and no ignore label, a
ValueError gives the numbers.

Real image (NucleiSource(...).stats(); nucleus pixels are counted over the strip, each
pixel once; "nuclei" = instances with a pixel in the strip, 5 nuclei are cut at column 320
and 7 at column 384):

  split        pixels  nucleus pixels  fraction  nuclei  tiles at tile_size 32 / 64 / 128
  train        163840           36200    0.2209      89                       589 / 135 / 28
  validation    32768            4896    0.1494      18                        32 /   8 / -
  test          65536           11130    0.1698      30                        64 /  16 / 4
"""

import os

import numpy as np

from data import sources, wheels

DEFAULT_DIR = os.path.expanduser(
    os.environ.get('STARDIST_NUCLEI_DIR', '~/.cache/jax_classics/stardist_nuclei'))
STARDIST_VERSION = '0.9.2'
WHEEL_MEMBERS = {'img2d.tif': 'stardist/data/images/img2d.tif',
                 'mask2d.tif': 'stardist/data/images/mask2d.tif'}
# Split name -> (first column, end column) as fractions of the image width.
CLASS_NAMES = ('background', 'nucleus')  # Label values 0 and 1.
SPLITS = {'train': (0, 5 / 8), 'validation': (5 / 8, 3 / 4), 'test': (3 / 4, 1)}
# The wheel is pinned to one platform so pip never falls back to building the sdist; the two
# image files are the same in every platform's wheel.
_PIP_DOWNLOAD = ('--no-deps', '--only-binary=:all:',
                 '--python-version=3.11', '--implementation=cp', '--abi=cp311',
                 '--platform=manylinux_2_28_x86_64', f'stardist=={STARDIST_VERSION}')
MANUAL_HELP = (f'By hand: `pip download --no-deps stardist=={STARDIST_VERSION} -d /tmp/sd` '
               '(any platform\'s wheel), then `python -m data.prepare --dataset=stardist_nuclei '
               '--wheel=/tmp/sd/stardist-0.9.2-<tags>.whl [--data_dir=DIR]`; or unzip '
               'stardist/data/images/img2d.tif and mask2d.tif from the wheel into DIR.')


def prepare(directory: str = DEFAULT_DIR, wheel: str | None = None) -> str:
  """Puts img2d.tif and mask2d.tif into `directory`, taken from the stardist wheel.

  Idempotent: returns at once when both files are already there. Only the two files are
  read from the wheel (a zip); nothing is installed.

  Args:
    directory: destination folder (created).
    wheel: path to a downloaded stardist wheel; None: `pip download` it (needs PyPI access)
      into a temporary folder that is removed afterwards.
  Returns:
    `directory`.
  Raises:
    RuntimeError: pip download failed (the message says how to do it by hand).
    ValueError: the wheel lacks one of the two files, or they are not a matching pair.
    FileNotFoundError: `wheel` does not exist.
  """
  return wheels.extract(directory, wheel, WHEEL_MEMBERS, load,
                        package=f'stardist-{STARDIST_VERSION}', pip_args=_PIP_DOWNLOAD,
                        manual_help=MANUAL_HELP)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Intensities -> uint8: a direct cast when they lie in 0..255 (the stardist image is
  0..235, so its values are kept exactly), else a linear rescale of 0..max to 0..255."""
  image = np.asarray(image)
  top = int(image.max()) if image.size else 0
  if image.min() >= 0 and top <= 255:
    return image.astype(np.uint8)
  low = float(min(image.min(), 0))
  return np.round((image - low) * (255 / (top - low))).astype(np.uint8)


def load(directory: str = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
  """Loads the image and its instance labels.

  Returns:
    image [512, 512] uint8 (see `to_uint8`) and labels [512, 512] int32 (0 = background,
    k > 0 = nucleus k).
  Raises:
    sources.DatasetNotFoundError: a file is missing (the message gives the command).
    ValueError: the files are not two 2-D images of one shape.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  directory = os.path.expanduser(directory)
  paths = {name: os.path.join(directory, name) for name in WHEEL_MEMBERS}
  missing = [path for path in paths.values() if not os.path.exists(path)]
  if missing:
    raise sources.DatasetNotFoundError(
        f'StarDist nuclei files missing: {missing}. Prepare them once with '
        f'`python -m data.prepare --dataset=stardist_nuclei --data_dir={directory}` '
        f'(needs PyPI access). {MANUAL_HELP}')
  with Image.open(paths['img2d.tif']) as f:
    image = np.asarray(f)
  with Image.open(paths['mask2d.tif']) as f:
    labels = np.asarray(f)
  if image.ndim != 2 or image.shape != labels.shape:
    raise ValueError(f'{directory}: image {image.shape} and mask {labels.shape} are not two '
                     '2-D images of one shape')
  return to_uint8(image), labels.astype(np.int32)


def split_columns(split: str, width: int) -> tuple[int, int]:
  """[start, end) columns of `split` in an image `width` pixels wide.

  Raises ValueError for an unknown split (listing the valid ones).
  """
  if split not in SPLITS:
    raise ValueError(f'Unknown nuclei split {split!r}; valid: {list(SPLITS)}')
  start, end = SPLITS[split]
  return round(start * width), round(end * width)


def split_stats(instances: np.ndarray, split: str) -> dict:
  """Counts over the strip of `split` in instance labels [H, W] (each pixel once):
  columns, num_pixels, nucleus_pixels, nucleus_fraction, num_nuclei (instances with a
  pixel in the strip, cut ones included)."""
  start, end = split_columns(split, instances.shape[1])
  strip = instances[:, start:end]
  nucleus = int((strip > 0).sum())
  return {'columns': (start, end), 'num_pixels': int(strip.size), 'nucleus_pixels': nucleus,
          'nucleus_fraction': nucleus / strip.size,
          'num_nuclei': int(len(np.unique(strip[strip > 0])))}


def _grid(length: int, tile: int, stride: int) -> list[int]:
  """Window offsets along one axis: a regular grid plus one window flush with the end."""
  offsets = list(range(0, length - tile + 1, stride))
  if offsets[-1] != length - tile:
    offsets.append(length - tile)
  return offsets


class NucleiSource:
  """Tiles of one split as a Grain random-access source (see the module docstring).

  Each example: {'image': [tile_size, tile_size, 1] uint8, 'label': [tile_size, tile_size]
  uint8, 0 = background, 1 = nucleus}. Tiles are ordered row-major by (top, left).

  Raises:
    ValueError: unknown split; tile_size < 1, larger than the split's strip, or (eval
      splits) not dividing the strip's height and width.
    sources.DatasetNotFoundError: the files are not prepared.
  """

  def __init__(self, directory: str, split: str, tile_size: int):
    image, instances = load(directory)
    height, width = image.shape
    start, end = split_columns(split, width)
    if tile_size < 1 or tile_size > min(height, end - start):
      raise ValueError(f'tile_size {tile_size} does not fit the {split!r} strip of '
                       f'{height}x{end - start} pixels (columns {start}..{end})')
    if split == 'train':
      stride = max(1, tile_size // 2)
      rows, cols = _grid(height, tile_size, stride), _grid(end - start, tile_size, stride)
    else:
      if height % tile_size or (end - start) % tile_size:
        raise ValueError(f'tile_size {tile_size} must divide the {split!r} strip of '
                         f'{height}x{end - start} pixels (columns {start}..{end}) so its '
                         'tiles cover it exactly')
      rows = list(range(0, height, tile_size))
      cols = list(range(0, end - start, tile_size))
    self.split, self.tile_size, self.columns = split, tile_size, (start, end)
    self._image = image[:, start:end, None]  # (H, strip, 1)
    self._label = (instances[:, start:end] > 0).astype(np.uint8)  # (H, strip)
    self._offsets = [(top, left) for top in rows for left in cols]
    self._stats = {'num_tiles': len(self._offsets), **split_stats(instances, split)}

  def __len__(self) -> int:
    return len(self._offsets)

  def __getitem__(self, index: int) -> dict:
    top, left = self._offsets[index]
    window = np.s_[top:top + self.tile_size, left:left + self.tile_size]
    return {'image': self._image[window].copy(), 'label': self._label[window].copy()}

  def stats(self) -> dict:
    """num_tiles and the strip's counts (see `split_stats`)."""
    return dict(self._stats)
