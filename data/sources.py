"""Random-access data sources: TFDS ArrayRecord (no TensorFlow) and local Fashion-MNIST.

Each source has `len()` and `__getitem__` returning {'image': [h, w, c] uint8,
'label': int}, the protocol Grain's MapDataset reads.
"""

import dataclasses
import os

import numpy as np

from data import fashion_mnist

# Datasets known to this codebase: number of classes, TFDS split names and the image
# shape (None: images of varying size).
DATASETS = {
    'cifar10': dict(num_classes=10, train_split='train', eval_split='test',
                    image_shape=(32, 32, 3)),
    'cifar100': dict(num_classes=100, train_split='train', eval_split='test',
                     image_shape=(32, 32, 3)),
    'fashion_mnist': dict(num_classes=10, train_split='train', eval_split='test',
                          image_shape=(28, 28, 1)),
    'imagenet2012': dict(num_classes=1000, train_split='train', eval_split='validation',
                         image_shape=None),
}


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


def build(config, split: str):
  """Returns the source for `split` ('train' or 'eval') of `config.data`.

  config.data.source is 'tfds' (config.data.name in DATASETS) or 'local_fashion_mnist'
  (IDX files in config.data.dir).

  Raises:
    ValueError: unknown source, dataset or split.
    DatasetNotFoundError / FileNotFoundError: data not on disk (with instructions).
  """
  data = config.data
  if split not in ('train', 'eval'):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  if data.source == 'local_fashion_mnist':
    images, labels = fashion_mnist.load('train' if split == 'train' else 'test',
                                        data.get('dir') or fashion_mnist.DEFAULT_DIR)
    return ArraySource(images, labels)
  if data.source == 'tfds':
    if data.name not in DATASETS:
      raise ValueError(f'Unknown TFDS dataset {data.name!r}; valid: {sorted(DATASETS)}')
    tfds_split = DATASETS[data.name][f'{split}_split']
    return TfdsSource(data.name, tfds_split, data.get('tfds_data_dir') or None)
  raise ValueError(f"Unknown data.source {data.source!r}; valid: ['local_fashion_mnist', 'tfds']")
