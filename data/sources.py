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
