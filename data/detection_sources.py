"""Object-detection sources: random-access examples with boxes, for data.detection.

An example (what a source's `[i]` returns): {'image': [h, w, c] uint8, 'boxes': [n, 4]
float32 (x0, y0, x1, y1) in pixel-edge coordinates (pixel (r, c) covers [c, c+1) x
[r, r+1); x1, y1 exclusive), 'classes': [n] int32 in [0, num_classes)}, plus 'difficult':
[n] bool for TFDS datasets; n may be 0. Converters do not repair boxes: a malformed one
passes through and data.box_augment.check_boxes rejects it with the split and index.

Sources (config.data.source):
  'fashion_mnist_scenes': data.scenes (offline): each scene's items with the boxes of
      their visible pixels (scene_example) and Fashion-MNIST classes 0..9. Items with a
      visible fraction below config.data.min_visible (default 0.25) are left out
      (ScenesDetectionSource counts them), as are items with no visible pixel.
  'neon_trees': data.trees (offline): tiles of NEON aerial images, one class 'tree';
      splits 'train', 'test', 'validation', 'train_minus_validation' (see data.trees).
  'tfds': through tfds.data_source (ArrayRecord, no TensorFlow): config.data.name one of
      TFDS_DATASETS, 'voc/2007' and 'voc/2012' (PASCAL VOC, Everingham et al. 2010, IJCV
      88:303) or 'coco/2017' (Lin et al. 2014, "Microsoft COCO: Common Objects in
      Context", ECCV).

TFDS split strings: a TFDS split of config.data.name ('train', 'validation[:50%]',
'train+validation'), or several parts joined by ',' each 'NAME:SPLIT' (or a bare split
of config.data.name), read one after the other as one source (ConcatSource). All parts
must have config.data.name's classes. VOC 07+12 trainval -> VOC 2007 test, the protocol
of Faster R-CNN (Ren et al. 2015, NeurIPS) and YOLO (Redmon et al. 2016, CVPR), is

  name='voc/2007', train_split='voc/2007:train+validation,voc/2012:train+validation',
  test_split='test'

('voc/2012:test' is refused: its annotations are not public and TFDS has none).

Boxes from TFDS are normalised (ymin, xmin, ymax, xmax). TFDS's VOC builder divides
VOC's 1-based inclusive pixel indices by the image size as they are (voc.py), so VOC
boxes become x0 = xmin * w - 1, y0 = ymin * h - 1, x1 = xmax * w, y1 = ymax * h (the
1-based first pixel xmin covers [xmin - 1, xmin)). Its COCO builder divides COCO's
continuous [x, y, width, height] (already pixel-edge coordinates), so COCO boxes are
x0 = xmin * w, y0 = ymin * h, x1 = xmax * w, y1 = ymax * h. 'difficult' is VOC's
is_difficult and COCO's is_crowd: both mark boxes that evaluation ignores (VOC devkit:
difficult objects are neither true nor false positives; COCO: detections matched to a
crowd region are not false positives and crowds are not counted as ground truth).

Config fields read (config.data.*): source, name, dir (scenes: the Fashion-MNIST IDX
folder; neon_trees: the prepared folder), tfds_data_dir, min_visible (scenes), tile_size
(neon_trees; default image_size), tile_overlap (neon_trees; default tile_size // 2),
train_split, num_classes (checked by class_names), and what data.scenes.load_split reads.
"""

import bisect

import numpy as np

from data import scenes, sources

SOURCES = ('fashion_mnist_scenes', 'neon_trees', 'tfds')
# TFDS label order = voc.py's _VOC_LABELS.
VOC_CLASS_NAMES = (
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')
# TFDS's COCO builder takes the label names from the annotation file's categories in file
# order (coco.py), which is category-id order: TFDS label k is the k-th of the 80 used
# category ids (COCO_CATEGORY_IDS, needed to write results for the official evaluation).
COCO_CLASS_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
    'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack',
    'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball',
    'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
    'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
    'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
    'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush')
COCO_CATEGORY_IDS = tuple(
    [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
     *range(72, 83), *range(84, 91)])
# TFDS name -> class names.
TFDS_DATASETS = {'voc/2007': VOC_CLASS_NAMES, 'voc/2012': VOC_CLASS_NAMES,
                 'coco/2017': COCO_CLASS_NAMES}
# What is passed to tfds.data_source. With a version, TFDS reads the prepared dataset
# from its files; without, it builds the dataset's code first, and coco.py's features
# need TensorFlow (tf.int64), which training does not import. The versions are those
# this TFDS prepares (`python -m data.prepare --dataset=coco/2017`).
_TFDS_READ_NAMES = {'coco/2017': 'coco/2017:1.1.0'}
MIN_VISIBLE = 0.25  # Default config.data.min_visible for scenes.


# TFDS records.

def _pixel_boxes(bbox, height: int, width: int) -> np.ndarray:
  """TFDS normalised (ymin, xmin, ymax, xmax) [n, 4] -> [n, 4] float32 (xmin w, ymin h,
  xmax w, ymax h), computed in float64."""
  bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
  return (bbox[:, [1, 0, 3, 2]] * np.array([width, height, width, height])).astype(np.float32)


def _objects(record, flag: str, dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       np.ndarray]:
  """(image, bbox [n, 4], labels [n], flags [n]) of a TFDS detection record, checked to
  describe the same n objects (ValueError otherwise)."""
  image = np.asarray(record['image'])
  objects = record['objects']
  bbox = np.asarray(objects['bbox'], np.float32)
  labels, flags = np.asarray(objects['label']), np.asarray(objects[flag])
  bbox = bbox.reshape(-1, 4) if bbox.size == 0 else bbox
  if image.ndim != 3:
    raise ValueError(f'{dataset} record: image of shape {image.shape}; need [h, w, c]')
  if (bbox.ndim != 2 or bbox.shape[1] != 4 or labels.shape != (len(bbox),)
      or flags.shape != (len(bbox),)):
    raise ValueError(f'{dataset} record: objects bbox {bbox.shape}, label {labels.shape}, '
                     f'{flag} {flags.shape}; need [n, 4], [n], [n] for the same n')
  return image, bbox, labels, flags


def voc_example(record) -> dict:
  """A TFDS `voc` record -> an example with 'difficult'.

  record['image']: [h, w, 3] uint8; record['objects']: 'bbox' [n, 4] float32 normalised
  (ymin, xmin, ymax, xmax) of VOC's 1-based pixel indices, 'label' [n] int (VOC_CLASS_NAMES
  order), 'is_difficult' [n] bool. Boxes: x0 = xmin w - 1, y0 = ymin h - 1, x1 = xmax w,
  y1 = ymax h (see the module docstring).

  Returns {'image': [h, w, 3] uint8, 'boxes': [n, 4] float32, 'classes': [n] int32,
  'difficult': [n] bool}. Raises ValueError when bbox, label and is_difficult disagree
  in length.
  """
  image, bbox, labels, difficult = _objects(record, 'is_difficult', 'voc')
  boxes = _pixel_boxes(bbox, *image.shape[:2])
  boxes[:, :2] -= 1
  return {'image': image, 'boxes': boxes, 'classes': labels.astype(np.int32),
          'difficult': difficult.astype(bool)}


def coco_example(record) -> dict:
  """A TFDS `coco/2017` record -> an example, 'difficult' = is_crowd.

  record['image']: [h, w, 3] uint8; record['objects']: 'bbox' [n, 4] float32 normalised
  (ymin, xmin, ymax, xmax), 'label' [n] int (COCO_CLASS_NAMES order), 'is_crowd' [n]
  bool. Boxes: x0 = xmin w, y0 = ymin h, x1 = xmax w, y1 = ymax h. Crowd boxes are kept
  and marked 'difficult': COCO evaluation ignores them rather than counting them.

  Returns {'image': [h, w, 3] uint8, 'boxes': [n, 4] float32, 'classes': [n] int32,
  'difficult': [n] bool}. Raises ValueError when bbox, label and is_crowd disagree in
  length.
  """
  image, bbox, labels, crowd = _objects(record, 'is_crowd', 'coco')
  return {'image': image, 'boxes': _pixel_boxes(bbox, *image.shape[:2]),
          'classes': labels.astype(np.int32), 'difficult': crowd.astype(bool)}


_CONVERTERS = {'voc/2007': voc_example, 'voc/2012': voc_example, 'coco/2017': coco_example}


def parse_tfds_split(split: str, default_name: str) -> list[tuple[str, str]]:
  """A split string (module docstring) -> [(TFDS name, TFDS split), ...].

  'test' -> [(default_name, 'test')]; 'voc/2007:train+validation,voc/2012:train' -> two
  parts. A ':' inside brackets is a slice ('train[:50%]'), not a dataset separator.

  Raises ValueError for an empty part or split, an unknown dataset, a dataset whose
  classes differ from default_name's, or 'voc/2012' test (no public annotations).
  """
  if default_name not in TFDS_DATASETS:
    raise ValueError(f'Unknown TFDS detection dataset {default_name!r}; valid: '
                     f'{sorted(TFDS_DATASETS)}')
  parts = []
  for part in split.split(','):
    part = part.strip()
    head, sep, tail = part.partition(':')
    name, sub = (head.strip(), tail.strip()) if sep and '[' not in head else (default_name, part)
    if not sub:
      raise ValueError(f'Empty split in {split!r}; use e.g. "test" or '
                       '"voc/2007:train+validation,voc/2012:train+validation"')
    if name not in TFDS_DATASETS:
      raise ValueError(f'Unknown TFDS detection dataset {name!r} in split {split!r}; valid: '
                       f'{sorted(TFDS_DATASETS)}')
    if TFDS_DATASETS[name] != TFDS_DATASETS[default_name]:
      raise ValueError(f'Split {split!r} mixes {name!r} into {default_name!r}, whose classes '
                       'differ')
    if name == 'voc/2012' and 'test' in sub:
      raise ValueError(f'{split!r}: VOC 2012 test annotations are not public (TFDS has none); '
                       "use 'voc/2012:train' / 'validation', or VOC 2007 test")
    parts.append((name, sub))
  return parts


class ConcatSource:
  """Several random-access sources read one after the other: index i of the first
  len(sources[0]) items is sources[0][i], the next ones sources[1][i - len(sources[0])],
  and so on."""

  def __init__(self, parts):
    self.parts = list(parts)
    self._ends = np.cumsum([len(p) for p in self.parts]).tolist()

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def __getitem__(self, index: int):
    if not 0 <= index < len(self):
      raise IndexError(f'Index {index} outside [0, {len(self)})')
    k = bisect.bisect_right(self._ends, index)
    return self.parts[k][index - (self._ends[k - 1] if k else 0)]


def tfds_source(name: str, split: str, data_dir: str | None = None):
  """The examples of a split string (parse_tfds_split) of TFDS dataset `name`: one
  sources.TfdsSource per part, a ConcatSource of them when there are several.

  Raises what parse_tfds_split raises and sources.DatasetNotFoundError when a dataset is
  not prepared.
  """
  parts = [sources.TfdsSource(_TFDS_READ_NAMES.get(n, n), s, data_dir,
                              convert=_CONVERTERS[n])
           for n, s in parse_tfds_split(split, name)]
  return parts[0] if len(parts) == 1 else ConcatSource(parts)


# Fashion-MNIST scenes.

def visible_boxes(instances: np.ndarray, count: int) -> np.ndarray:
  """The box of each item's visible pixels: instances [S, S] int (0 background, k = item
  k, 1-based) -> [count, 4] float32 xyxy pixel-edge boxes, all 0 for an item with no
  visible pixel."""
  boxes = np.zeros((count, 4), np.float32)
  for k in range(count):
    visible = instances == k + 1
    rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    if rows.size:
      boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
  return boxes


def scene_example(scene: dict, min_visible: float = MIN_VISIBLE) -> tuple[dict, int]:
  """A data.scenes scene -> (example, number of items left out).

  Boxes are those of the items' visible pixels, as PASCAL VOC annotates ("the bounding
  box of the visible area of the object, not the estimated total extent", VOC2007
  annotation guidelines) and COCO's boxes enclose visible segments: a detector cannot
  know how far a hidden part extends. Items are kept when their visible fraction is
  >= min_visible and some pixel of them is visible.
  scene: FashionMnistScenes.scene(i) ('image' [S, S, 1] uint8, 'instances' [S, S] int32,
  'classes' [n] int32, 'visible' [n] float32).
  Returns {'image': [S, S, 1] uint8, 'boxes': [m, 4] float32, 'classes': [m] int32}.
  """
  boxes = visible_boxes(scene['instances'], len(scene['classes']))
  keep = ((scene['visible'] >= min_visible) & (boxes[:, 2] > boxes[:, 0])
          & (boxes[:, 3] > boxes[:, 1]))
  return ({'image': scene['image'], 'boxes': boxes[keep], 'classes': scene['classes'][keep]},
          int((~keep).sum()))


class ScenesDetectionSource:
  """Fashion-MNIST scenes as detection examples (scene_example), a Grain random-access
  source. Raises ValueError for min_visible outside [0, 1]."""

  def __init__(self, scene_source: scenes.FashionMnistScenes, min_visible: float = MIN_VISIBLE):
    if not 0 <= min_visible <= 1:
      raise ValueError(f'min_visible {min_visible} must be in [0, 1]')
    self.scenes, self.min_visible = scene_source, float(min_visible)

  def __len__(self) -> int:
    return len(self.scenes)

  def __getitem__(self, index: int) -> dict:
    return scene_example(self.scenes.scene(index), self.min_visible)[0]

  def stats(self, num_scenes: int | None = None) -> dict:
    """Counts over the first num_scenes scenes (default all; each is generated):
    num_scenes, items, kept, left_out (by min_visible or with no foreground)."""
    n = len(self) if num_scenes is None else min(num_scenes, len(self))
    items = kept = 0
    for i in range(n):
      example, left_out = scene_example(self.scenes.scene(i), self.min_visible)
      items, kept = items + len(example['boxes']) + left_out, kept + len(example['boxes'])
    return {'num_scenes': n, 'items': items, 'kept': kept, 'left_out': items - kept}


# Config -> source.

def build_source(config, split: str):
  """The random-access detection source of `split` for config.data.source (SOURCES).

  Raises:
    ValueError: unknown source or dataset, a bad split string, an empty split, or the
      neon_trees pair train_split 'train' + split 'validation' (the validation image is
      in 'train').
    FileNotFoundError / sources.DatasetNotFoundError: data not on disk (with instructions).
  """
  data = config.data
  if data.source == 'fashion_mnist_scenes':
    source = ScenesDetectionSource(scenes.load_split(config, split),
                                   data.get('min_visible', MIN_VISIBLE))
  elif data.source == 'neon_trees':
    from data import trees  # pylint: disable=import-outside-toplevel
    if split == 'validation' and data.get('train_split') == 'train':
      raise ValueError("neon_trees: split 'validation' (SOAP_061) is part of train_split "
                       "'train'; train on 'train_minus_validation' to validate, or set no "
                       'validation split')
    source = trees.TreesSource(data.get('dir') or trees.DEFAULT_DIR, split,
                               data.get('tile_size') or data.image_size,
                               overlap=data.get('tile_overlap', None))
  elif data.source == 'tfds':
    source = tfds_source(data.name, split, data.get('tfds_data_dir') or None)
  else:
    raise ValueError(f'Unknown data.source {data.source!r} for detection; valid: '
                     f'{list(SOURCES)}')
  if not len(source):
    raise ValueError(f'Split {split!r} of {data.name} has no examples')
  return source


def difficult_overlap(config) -> str:
  """The overlap the evaluation uses against 'difficult' boxes (tasks.coco_map): 'iod'
  where they are COCO's crowd boxes (COCO's rule: a detection inside a crowd region is
  ignored), 'iou' for VOC's difficult objects and elsewhere."""
  coco = config.data.source == 'tfds' and config.data.name.startswith('coco')
  return 'iod' if coco else 'iou'


def class_names(config) -> tuple[str, ...]:
  """The names of classes 0..num_classes - 1 of config.data.

  Raises ValueError for an unknown source or TFDS dataset, or when config.data.num_classes
  (if set) is not the dataset's number of classes.
  """
  data = config.data
  if data.source == 'fashion_mnist_scenes':
    names = scenes.CLASS_NAMES[1:]  # Scene label k + 1 is item class k; no background.
  elif data.source == 'neon_trees':
    from data import trees  # pylint: disable=import-outside-toplevel
    names = trees.CLASS_NAMES
  elif data.source == 'tfds':
    if data.name not in TFDS_DATASETS:
      raise ValueError(f'Unknown TFDS detection dataset {data.name!r}; valid: '
                       f'{sorted(TFDS_DATASETS)}')
    names = TFDS_DATASETS[data.name]
  else:
    raise ValueError(f'Unknown data.source {data.source!r} for detection; valid: '
                     f'{list(SOURCES)}')
  num_classes = data.get('num_classes')
  if num_classes is not None and num_classes != len(names):
    raise ValueError(f'config.data.num_classes={num_classes}, but {data.source} {data.name} '
                     f'has {len(names)} classes: {list(names)}')
  return tuple(names)
