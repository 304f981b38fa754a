"""Fashion-MNIST from local IDX files (Xiao et al. 2017, arXiv:1708.07747).

Reads the four files that Debian's `dataset-fashion-mnist` package installs in
/usr/share/datasets/fashion-mnist (gzipped or not), or the same files in any
directory. The IDX format (LeCun et al., the MNIST page): a 4-byte magic number
(two zero bytes, a type code, the number of dimensions), one big-endian uint32 per
dimension, then the data in C order.
"""

import gzip
import os

import numpy as np

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
NUM_CLASSES = 10
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle boot')
_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
          'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
               0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}
MISSING_HELP = ('Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), '
                'or put train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], '
                't10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] in a directory and '
                'pass --config.data.dir=DIR.')


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into an array of its stored shape and dtype.

  Raises:
    ValueError: bad magic number or a file shorter than its header says (truncated).
  """
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    try:
      raw = f.read()
    except (EOFError, OSError) as e:  # a cut gzip stream
      raise ValueError(f'{path}: unreadable or truncated IDX file ({e})') from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f'{path}: not an IDX file (magic bytes {raw[:4].hex()})')
  dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{path}: truncated IDX header ({len(raw)} of {header} bytes)')
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, offset=4))
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f'{path}: truncated or corrupt IDX file: shape {shape} needs {expected} '
                     f'data bytes, found {len(raw) - header}')
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder('='))


def _find(directory: str, name: str) -> str:
  for candidate in (name + '.gz', name):
    path = os.path.join(directory, candidate)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f'Fashion-MNIST file {name}[.gz] not found in {directory}. '
                          + MISSING_HELP)


def load(split: str, directory: str = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
  """Loads a split.

  Args:
    split: 'train' (60 000 examples) or 'test' (10 000).
    directory: folder with the IDX files.
  Returns:
    images [n, 28, 28, 1] uint8 and labels [n] int32.
  Raises:
    ValueError: unknown split, unreadable files, or image/label counts that differ.
    FileNotFoundError: a file is missing (the message says how to install it).
  """
  if split not in _FILES:
    raise ValueError(f'Unknown Fashion-MNIST split {split!r}; valid: {sorted(_FILES)}')
  images_name, labels_name = _FILES[split]
  images = read_idx(_find(directory, images_name))
  labels = read_idx(_find(directory, labels_name))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f'Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} '
                     'do not match')
  return images[..., None], labels.astype(np.int32)
