"""NEON aerial tree crowns: one-class object detection on real airborne RGB images, offline.

Data: the annotated example images that DeepForest ships in its PyPI wheel
(deepforest==2.1.0, folder deepforest/data/; Weinstein et al. 2020, "DeepForest: A Python
package for RGB deep learning tree crown delineation", Methods in Ecology and Evolution
11:1743): RGB orthophoto crops of the NEON Airborne Observation Platform (10 cm pixels),
each with a Pascal VOC XML file of hand-drawn tree-crown boxes, the kind of data of
Weinstein et al. 2019 ("Individual tree-crown detection in RGB imagery using
semi-supervised deep learning neural networks", Remote Sensing 11(11):1309). `prepare`
takes only the four annotated images (PNG) and their XML files out of the wheel (a zip);
deepforest is never installed. Prepare once (needs the wheel or pip access to PyPI):

  python -m data.prepare --dataset=neon_trees [--data_dir=DIR] [--wheel=PATH.whl]

  image (NEON site)                        width x height  boxes
  2019_YELL_2_528000_4978000_image_crop2   2299 x 2472       574  (Yellowstone)
  2019_YELL_2_541000_4977000_image_crop    1249 x 1035       279  (Yellowstone)
  SOAP_061                                  400 x 400         37  (Soaproot Saddle)
  OSBS_029                                  400 x 400         61  (Ordway-Swisher)

Boxes are 9..108 px wide (median 42, 38, 28 and 36 px in the four images). SOAP_061's
boxes are named 'Dead' (28) and 'Alive' (9) in its XML, the others' 'Tree'; all are tree
crowns and all become class 0, 'tree'. The wheel's other images have no XML and are not
taken (SOAP_031.png; 'AWPE Pigeon Lake 2020 DJI_0005.JPG', a drone photo of birds);
OSBS_029.tif holds the same pixels as OSBS_029.png.

Boxes: VOC pixel indices are 1-based and inclusive (xmin = 1 is the first column, xmax =
width the last; the files agree: every xmin, ymin >= 1 and xmax, ymax reach the image
width / height), so in the shared pixel-edge convention (x1 exclusive) a VOC box is
x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax (`parse_voc_xml`).

Splits (image sets; SPLITS):

  'train'                   YELL crop2, YELL crop, SOAP_061: tiles (below)
  'test'                    OSBS_029, the held-out evaluation image: the whole 400x400
                            image, one example; never tiled, so no crown is cut
  'validation'              SOAP_061, the whole image, one example
  'train_minus_validation'  the two YELL images: tiles

'train' holds the validation image: select models with 'validation' only when training
on 'train_minus_validation' (data.detection_sources.build_source refuses the pair
'train' + 'validation'). With four images there is no held-out set that costs nothing:
SOAP_061 is 4 % of the training boxes and another site than the YELL images.

Tiles: each image of a tiled split is cut into tile_size x tile_size windows on a regular
grid with stride tile_size - overlap (default overlap tile_size // 2, so every crown up to
tile_size / 2 on a side lies whole in some tile), plus one window flush with the right /
bottom edge where the grid does not reach it; ordered by image (SPLITS order), then
row-major by (top, left). A box is clipped to each tile it overlaps and kept there when
at least min_kept (0.5) of its area is inside; a box that overlaps a tile with less is
dropped from that tile and counted (`TreesSource.stats`). Tile i is a pure function of i.
tile_size must fit every image of the split (<= 400 for 'train'). At the usual YOLO
strides (a multiple of 32), tile_size 320 trains at native resolution; tile_size 400 with
a 416 network input letterboxes the training tiles and the 400x400 eval images by the
same factor 1.04, so crowns have one scale in training and evaluation.

Real data (`TreesSource(...).stats()` with the default overlap): tiles; boxes = clipped
boxes summed over the tiles; dropped = box-in-tile pairs with less than half the box
inside; empty = tiles without a box (meadow). Every box lies whole in some tile at each
of these sizes, so none is lost.

                          images   tile_size 256           320                400
                                   tiles boxes drop empty  tiles boxes drop   tiles boxes drop
  train                        3     404  3299 1077  36      256  3266  748     163  3223  730
  train_minus_validation       2     395  3156 1042  36      252  3158  740     162  3186  730
  validation, test             1   the whole 400x400 image, 37 and 61 boxes

(empty tiles at 320 / 400: 18 / 3 in both tiled splits.)
"""

import os
import xml.etree.ElementTree as ET

import numpy as np

from data import sources, wheels

DEFAULT_DIR = os.path.expanduser(
    os.environ.get('NEON_TREES_DIR', '~/.cache/jax_classics/neon_trees'))
DEEPFOREST_VERSION = '2.1.0'
CLASS_NAMES = ('tree',)
TEST_IMAGE = 'OSBS_029'
VALIDATION_IMAGE = 'SOAP_061'
_YELL = ('2019_YELL_2_528000_4978000_image_crop2', '2019_YELL_2_541000_4977000_image_crop')
IMAGES = _YELL + (VALIDATION_IMAGE, TEST_IMAGE)  # The annotated images, each NAME.png + .xml.
# Split -> (image names, tiled?).
SPLITS = {
    'train': (_YELL + (VALIDATION_IMAGE,), True),
    'test': ((TEST_IMAGE,), False),
    'validation': ((VALIDATION_IMAGE,), False),
    'train_minus_validation': (_YELL, True),
}
MIN_KEPT = 0.5  # A box keeps a tile when this fraction of its area is inside it.
_MEMBER = 'deepforest/data/{}'
# deepforest is pure Python (py3-none-any); the Python version is pinned so pip accepts
# the wheel's Requires-Python from any interpreter, and binaries only, never the sdist.
_PIP_DOWNLOAD = ('--no-deps', '--only-binary=:all:',
                 '--python-version=3.11', f'deepforest=={DEEPFOREST_VERSION}')
MANUAL_HELP = (f'By hand: `pip download --no-deps deepforest=={DEEPFOREST_VERSION} -d /tmp/df`, '
               'then `python -m data.prepare --dataset=neon_trees --wheel=/tmp/df/'
               f'deepforest-{DEEPFOREST_VERSION}-py3-none-any.whl [--data_dir=DIR]`; or unzip '
               'deepforest/data/NAME.png and NAME.xml for NAME in '
               f'{", ".join(IMAGES)} from the wheel into DIR.')


def parse_voc_xml(text: str, where: str = 'VOC XML') -> dict:
  """A Pascal VOC annotation -> its image size and boxes in pixel-edge coordinates.

  VOC's xmin..xmax, ymin..ymax are 1-based inclusive pixel indices; the box covering them
  is x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax (x1, y1 exclusive).

  Returns:
    {'width': int, 'height': int, 'depth': int, 'boxes': [n, 4] float32 (x0, y0, x1, y1),
     'names': [n] str (each object's <name>), 'difficult': [n] bool}.
  Raises:
    ValueError: malformed XML, a missing size or coordinate, or a box that is not
      1 <= xmin <= xmax <= width, 1 <= ymin <= ymax <= height (`where` names the file).
  """
  try:
    root = ET.fromstring(text)
    size = root.find('size')
    width, height = int(size.findtext('width')), int(size.findtext('height'))
    depth = int(size.findtext('depth') or 3)
  except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
    raise ValueError(f'{where}: not a VOC annotation with <size><width>/<height> ({e})') from e
  boxes, names, difficult = [], [], []
  for k, obj in enumerate(root.findall('object')):
    try:
      box = obj.find('bndbox')
      xmin, ymin, xmax, ymax = (float(box.findtext(t)) for t in ('xmin', 'ymin', 'xmax', 'ymax'))
    except (AttributeError, TypeError, ValueError) as e:
      raise ValueError(f'{where}: object {k} lacks a numeric <bndbox> xmin/ymin/xmax/ymax') from e
    if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
      raise ValueError(f'{where}: object {k} box xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} '
                       f'ymax={ymax:g} is not within the 1-based {width}x{height} image '
                       '(need 1 <= xmin <= xmax <= width, 1 <= ymin <= ymax <= height)')
    boxes.append((xmin - 1, ymin - 1, xmax, ymax))
    names.append(obj.findtext('name') or '')
    difficult.append((obj.findtext('difficult') or '0').strip() == '1')
  return {'width': width, 'height': height, 'depth': depth,
          'boxes': np.asarray(boxes, np.float32).reshape(-1, 4), 'names': names,
          'difficult': np.asarray(difficult, bool)}


def _read_example(png: str, xml: str) -> dict:
  """One image and its annotation, checked against each other (ValueError if they
  disagree): {'image': [h, w, 3] uint8, 'boxes': [n, 4] float32, 'classes': [n] int32}."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with open(xml, encoding='utf-8') as f:
    annotation = parse_voc_xml(f.read(), xml)
  with Image.open(png) as f:
    if f.mode != 'RGB':
      raise ValueError(f'{png}: Pillow mode {f.mode!r}; expected an RGB image')
    image = np.asarray(f)
  if image.shape != (annotation['height'], annotation['width'], 3):
    raise ValueError(f'{png}: image of shape {image.shape}, but {xml} describes a '
                     f'{annotation["height"]}x{annotation["width"]}x3 image')
  boxes = annotation['boxes']
  return {'image': image, 'boxes': boxes, 'classes': np.zeros(len(boxes), np.int32)}


def _files(name: str) -> tuple[str, str]:
  return f'{name}.png', f'{name}.xml'


def prepare(directory: str = DEFAULT_DIR, wheel: str | None = None) -> str:
  """Puts NAME.png and NAME.xml of the four annotated images (IMAGES) into `directory`,
  taken from the deepforest wheel.

  Idempotent: returns at once when all eight files are already there. Only these files
  are read from the wheel (a zip); nothing is installed. Every pair is checked (readable
  RGB PNG, XML of the same size, boxes inside the image) before any file is moved into
  `directory`.

  Args:
    directory: destination folder (created).
    wheel: path to a downloaded deepforest wheel; None: `pip download` it (needs PyPI
      access) into a temporary folder that is removed afterwards.
  Returns:
    `directory`.
  Raises:
    RuntimeError: pip download failed (the message says how to do it by hand).
    ValueError: the wheel lacks a file, or an image and its XML disagree.
    FileNotFoundError: `wheel` does not exist.
  """
  def validate(folder):  # Every image with its XML, before anything lands in `directory`.
    for name in IMAGES:
      _read_example(*(os.path.join(folder, f) for f in _files(name)))

  members = {f: _MEMBER.format(f) for name in IMAGES for f in _files(name)}
  return wheels.extract(directory, wheel, members, validate,
                        package=f'deepforest-{DEEPFOREST_VERSION}', pip_args=_PIP_DOWNLOAD,
                        manual_help=MANUAL_HELP)


def load(directory: str = DEFAULT_DIR, names=None) -> dict[str, dict]:
  """Loads annotated images (default all of IMAGES) from a prepared `directory`.

  Returns:
    {name: {'image': [h, w, 3] uint8, 'boxes': [n, 4] float32 xyxy pixel-edge (see
    `parse_voc_xml`), 'classes': [n] int32, all 0 ('tree')}}, in the order of `names`.
  Raises:
    sources.DatasetNotFoundError: a file is missing (the message gives the command).
    ValueError: an unknown name, or an image and its XML disagree.
  """
  directory = os.path.expanduser(directory)
  names = IMAGES if names is None else tuple(names)
  unknown = [n for n in names if n not in IMAGES]
  if unknown:
    raise ValueError(f'Unknown NEON tree images {unknown}; valid: {list(IMAGES)}')
  paths = {name: [os.path.join(directory, f) for f in _files(name)] for name in names}
  missing = [p for pair in paths.values() for p in pair if not os.path.exists(p)]
  if missing:
    raise sources.DatasetNotFoundError(
        f'NEON tree-crown files missing: {missing}. Prepare them once with '
        f'`python -m data.prepare --dataset=neon_trees --data_dir={directory}` '
        f'(needs PyPI access). {MANUAL_HELP}')
  return {name: _read_example(*paths[name]) for name in names}


def tile_offsets(length: int, tile: int, stride: int) -> list[int]:
  """Window starts along one axis of `length` pixels: 0, stride, 2 stride, ... plus one
  window flush with the end where the grid does not reach it (tile <= length)."""
  offsets = list(range(0, length - tile + 1, stride))
  if offsets[-1] != length - tile:
    offsets.append(length - tile)
  return offsets


def crop_boxes(boxes: np.ndarray, window: tuple[int, int, int, int],
               min_kept: float = MIN_KEPT) -> tuple[np.ndarray, np.ndarray, int]:
  """Boxes seen through a window: clipped to it, in the window's coordinates.

  Args:
    boxes: [n, 4] float32 xyxy pixel-edge, each of positive area.
    window: (x0, y0, x1, y1) pixel-edge.
    min_kept: a box is kept when at least this fraction of its area is in the window.
  Returns:
    kept boxes [m, 4] float32 (origin at the window's corner), their indices [m] int64
    into `boxes`, and the number dropped: boxes overlapping the window with positive
    area but less than min_kept of theirs.
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  x0, y0, x1, y1 = window
  clipped = np.stack([np.clip(boxes[:, 0], x0, x1), np.clip(boxes[:, 1], y0, y1),
                      np.clip(boxes[:, 2], x0, x1), np.clip(boxes[:, 3], y0, y1)], axis=-1)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
  overlaps = inside > 0
  keep = overlaps & (inside >= min_kept * area)
  kept = clipped[keep] - np.asarray([x0, y0, x0, y0], np.float32)
  return kept.astype(np.float32), np.flatnonzero(keep), int((overlaps & ~keep).sum())


class TreesSource:
  """The examples of one split as a Grain random-access source (see the module docstring).

  Each example: {'image': [t, t, 3] uint8, 'boxes': [n, 4] float32 xyxy pixel-edge in the
  tile, 'classes': [n] int32 (all 0)}, t = tile_size for tiled splits; whole-image splits
  ('validation', 'test') give each image as it is (400x400 for the real data) and ignore
  tile_size and overlap.

  Args:
    directory: the prepared folder (`prepare`).
    split: a key of SPLITS.
    tile_size: side of the square tiles, in pixels.
    overlap: pixels shared by neighbouring tiles, in [0, tile_size); None: tile_size // 2.
    min_kept: fraction of a box's area a tile must hold for the box to be in it.
  Raises:
    ValueError: unknown split; tile_size < 1 or larger than an image of the split;
      overlap or min_kept out of range.
    sources.DatasetNotFoundError: the files are not prepared.
  """

  def __init__(self, directory: str, split: str, tile_size: int, overlap: int | None = None,
               min_kept: float = MIN_KEPT):
    if split not in SPLITS:
      raise ValueError(f'Unknown NEON trees split {split!r}; valid: {list(SPLITS)}')
    names, tiled = SPLITS[split]
    overlap = tile_size // 2 if overlap is None else int(overlap)
    if tiled and not 0 <= overlap < tile_size:
      raise ValueError(f'overlap {overlap} must be in [0, tile_size={tile_size})')
    if not 0 <= min_kept <= 1:
      raise ValueError(f'min_kept {min_kept} must be in [0, 1]')
    self.split, self.tile_size, self.overlap, self.min_kept = split, tile_size, overlap, min_kept
    self.tiled = tiled
    self._examples = load(directory, names)
    self._windows = []  # (image name, (x0, y0, x1, y1)) per example.
    for name, example in self._examples.items():
      height, width = example['image'].shape[:2]
      if not tiled:
        self._windows.append((name, (0, 0, width, height)))
        continue
      if tile_size < 1 or tile_size > min(height, width):
        raise ValueError(f'tile_size {tile_size} does not fit image {name} of {height}x{width} '
                         f'pixels in split {split!r}; the smallest image there is '
                         f'{min(min(e["image"].shape[:2]) for e in self._examples.values())} '
                         'pixels on a side')
      stride = tile_size - overlap
      self._windows += [(name, (left, top, left + tile_size, top + tile_size))
                        for top in tile_offsets(height, tile_size, stride)
                        for left in tile_offsets(width, tile_size, stride)]

  def __len__(self) -> int:
    return len(self._windows)

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self._windows):
      raise IndexError(f'Index {index} outside [0, {len(self._windows)}) of split {self.split!r}')
    name, (x0, y0, x1, y1) = self._windows[index]
    example = self._examples[name]
    boxes, keep, _ = crop_boxes(example['boxes'], (x0, y0, x1, y1), self.min_kept)
    return {'image': example['image'][y0:y1, x0:x1].copy(), 'boxes': boxes,
            'classes': example['classes'][keep]}

  def window(self, index: int) -> tuple[str, tuple[int, int, int, int]]:
    """(image name, (x0, y0, x1, y1) in that image's pixels) of example `index`."""
    return self._windows[index]

  def stats(self) -> dict:
    """Counts over the split: num_images, num_tiles (examples), image_boxes (boxes in
    its images), boxes (kept boxes summed over examples), dropped (box-in-tile pairs with
    less than min_kept of the box inside), lost (image boxes kept in no example), and
    empty_tiles (examples without a box)."""
    kept, dropped, empty = 0, 0, 0
    seen = {name: np.zeros(len(e['boxes']), bool) for name, e in self._examples.items()}
    for name, window in self._windows:
      _, keep, n = crop_boxes(self._examples[name]['boxes'], window, self.min_kept)
      kept, dropped, empty = kept + len(keep), dropped + n, empty + (len(keep) == 0)
      seen[name][keep] = True
    return {'num_images': len(self._examples), 'num_tiles': len(self._windows),
            'image_boxes': int(sum(len(s) for s in seen.values())), 'boxes': kept,
            'dropped': dropped, 'lost': int(sum((~s).sum() for s in seen.values())),
            'empty_tiles': empty}
