"""Random-access data sources: TFDS ArrayRecord (no TensorFlow) and local Fashion-MNIST.

Each source has `len()` and `__getitem__` returning {'image': [h, w, c] uint8,
'label': int}, the protocol Grain's MapDataset reads.
"""

import dataclasses
import os
import re

import numpy as np

from data import fashion_mnist

# Datasets known to this codebase: number of classes and the image shape (None:
# images of varying size). Which splits a run uses is in its config (data.*_split).
DATASETS = {
    'cifar10': dict(num_classes=10, image_shape=(32, 32, 3)),
    'cifar100': dict(num_classes=100, image_shape=(32, 32, 3)),
    'fashion_mnist': dict(num_classes=10, image_shape=(28, 28, 1)),
    'imagenet2012': dict(num_classes=1000, image_shape=None),
    'oxford_flowers102': dict(num_classes=102, image_shape=None),  # Fine-tuning targets.
    'oxford_iiit_pet': dict(num_classes=37, image_shape=None),
}
_SLICE = re.compile(r'^(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?$')


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not on disk; the message says how to get it."""


@dataclasses.dataclass
class ArraySource:
  """In-memory arrays as a Grain random-access source."""
  images: np.ndarray  # [n, h, w, c] uint8
  labels: np.ndarray  # [n] int32

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    return {'image': self.images[index], 'label': self.labels[index]}


def image_example(record) -> dict:
  """A TFDS image-classification record -> {'image': uint8 array, 'label': int32}."""
  return {'image': np.asarray(record['image']), 'label': np.int32(record['label'])}


class TfdsSource:
  """A TFDS dataset read through `tfds.data_source` (ArrayRecord, no TensorFlow);
  `convert` turns each record into an example (default: image_example)."""

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               convert=image_example):
    import tensorflow_datasets as tfds  # Heavy; only imported when TFDS is used.
    self._convert = convert
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
      len(self._source)
    except Exception as e:  # pylint: disable=broad-except
      where = data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
      raise DatasetNotFoundError(
          f'TFDS dataset {name!r} (split {split!r}) is not prepared in ArrayRecord format under '
          f'{where} ({type(e).__name__}: {str(e).splitlines()[0]}). With network access, '
          f'prepare it once: `pip install tensorflow-cpu && python -m data.prepare '
          f'--dataset={name}`. ImageNet needs the manual download described in the TFDS '
          'imagenet2012 docs.') from e

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return self._convert(self._source[index])


def split_slice(split: str, num_examples: int) -> tuple[str, slice]:
  """A TFDS-style split name -> (base split, slice of its examples), for local data:
  'train' -> ('train', all), 'train[:55000]', 'train[55000:]', 'train[-5000:]',
  'train[:90%]', 'train[90%:]' (percent boundaries rounded to the nearest example).

  Raises ValueError for another syntax.
  """
  match = _SLICE.match(split.replace(' ', ''))
  if not match:
    raise ValueError(f"Cannot parse split {split!r}; use e.g. 'train', 'train[:55000]', "
                     "'train[90%:]'")
  def bound(text):
    if not text:
      return None
    if text.endswith('%'):
      return round(int(text[:-1]) * num_examples / 100)
    return int(text)
  return match.group(1), slice(bound(match.group(2)), bound(match.group(3)))


def splits_overlap(a: str, b: str) -> bool:
  """Whether splits `a` and `b` certainly share examples, decided without the dataset's
  size: equal splits do; splits of different base splits do not; a whole split overlaps
  each slice of it; two slices do when their bounds are in one unit (example counts, or
  percentages) and not negative, and their ranges intersect ('train[:56000]' and
  'train[55000:]'). Pairs it cannot decide that way (mixed units, negative bounds,
  syntax other than `split_slice`'s, such as 'voc/2007:test') count as disjoint."""
  if a.replace(' ', '') == b.replace(' ', ''):
    return True
  matches = [_SLICE.match(split.replace(' ', '')) for split in (a, b)]
  if not all(matches) or matches[0].group(1) != matches[1].group(1):
    return False
  (_, *bounds_a), (_, *bounds_b) = (m.groups() for m in matches)
  if bounds_a == [None, None] or bounds_b == [None, None]:
    return True
  texts = [t for t in bounds_a + bounds_b if t]
  percent = {t.endswith('%') for t in texts}
  if len(percent) > 1 or any(t.startswith('-') for t in texts):
    return False
  end = 100 if percent == {True} else float('inf')
  value = lambda text, default: int(text.rstrip('%')) if text else default
  start_a, stop_a = value(bounds_a[0], 0), value(bounds_a[1], end)
  start_b, stop_b = value(bounds_b[0], 0), value(bounds_b[1], end)
  return max(start_a, start_b) < min(stop_a, stop_b)


def build(config, split: str):
  """Returns the source for `split` of `config.data`: a split name of the dataset
  ('train', 'test', 'validation') or a slice of one ('train[:90%]', 'train[45000:]').

  config.data.source is 'tfds' (config.data.name in DATASETS; TFDS reads the slice)
  or 'local_fashion_mnist' (IDX files in config.data.dir; splits 'train', 'test').

  Raises:
    ValueError: unknown source, dataset or split, or an empty slice.
    DatasetNotFoundError / FileNotFoundError: data not on disk (with instructions).
  """
  data = config.data
  if data.source == 'local_fashion_mnist':
    base = split_slice(split, 0)[0]
    images, labels = fashion_mnist.load(base, data.get('dir') or fashion_mnist.DEFAULT_DIR)
    part = split_slice(split, len(images))[1]
    source = ArraySource(images[part], labels[part])
  elif data.source == 'tfds':
    if data.name not in DATASETS:
      raise ValueError(f'Unknown TFDS dataset {data.name!r}; valid: {sorted(DATASETS)}')
    source = TfdsSource(data.name, split, data.get('tfds_data_dir') or None)
  else:
    raise ValueError(f"Unknown data.source {data.source!r}; valid: ['local_fashion_mnist', "
                     "'tfds']")
  if not len(source):
    raise ValueError(f'Split {split!r} of {data.name} has no examples')
  return source
