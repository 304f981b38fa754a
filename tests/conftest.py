"""Test setup: 8 fake CPU devices and the default XLA flags (set before JAX starts), and
small shared fixtures."""

import atexit
import gzip
import os
import shutil
import struct
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
import jax  # noqa: E402

import train  # noqa: E402,F401  (its default XLA flags, before any test computes)

jax.config.update('jax_num_cpu_devices', 8)

# One persistent compilation cache for the session and the launch.py processes the tests
# start: many tests build the same programs again through new jit objects (a run, then
# its resume; eval-only runs of a trained workdir; restarts), and XLA's CPU compile is
# the bulk of this suite's time. Programs are keyed by their HLO and compile options, so
# a hit is the executable the compile would have produced. Under pytest-xdist the
# controller makes the directory before it starts the workers, which inherit its
# environment and share it; the process that made it deletes it at exit.
_CACHE_DIR = os.environ.get('TESTS_JAX_CACHE_DIR')
if _CACHE_DIR is None:
  _CACHE_DIR = tempfile.mkdtemp(prefix='jax_cache_tests_')
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
  os.environ['TESTS_JAX_CACHE_DIR'] = _CACHE_DIR
os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
jax.config.update('jax_compilation_cache_dir', _CACHE_DIR)
# A size limit turns on the cache's file lock, so that two workers (or a test and the
# launch.py processes it starts) never read an entry another is still writing.
os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = str(8 << 30)
jax.config.update('jax_compilation_cache_max_size', 8 << 30)
# Writing an entry costs time too: only programs that took >= 2 s to compile are kept
# (at 0.5 s, test_transformer.py, which repeats no program, ran 187 s instead of 157 s;
# the on-device augmentation resume test, three runs of one config, 21 s instead of 51 s).
jax.config.update('jax_persistent_cache_min_compile_time_secs', 2.0)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_idx(path: str, array: np.ndarray, *, gz: bool = True, truncate: int = 0) -> str:
  """Writes `array` (uint8) as an IDX file; drops the last `truncate` bytes."""
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack('>' + 'I' * array.ndim, *array.shape)
  raw = (header + array.astype(np.uint8).tobytes())
  raw = raw[:len(raw) - truncate] if truncate else raw
  if gz:
    path += '.gz'
    with gzip.open(path, 'wb') as f:
      f.write(raw)
  else:
    with open(path, 'wb') as f:
      f.write(raw)
  return path


def make_fashion_mnist_dir(directory: str, num_train: int = 64, num_test: int = 36,
                           seed: int = 0) -> str:
  """A tiny learnable Fashion-MNIST stand-in: class k lights up horizontal band k."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for split, n in (('train', num_train), ('t10k', num_test)):
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
      images[i, 2 * k + 4: 2 * k + 6] = 255
    write_idx(os.path.join(directory, f'{split}-images-idx3-ubyte'), images)
    write_idx(os.path.join(directory, f'{split}-labels-idx1-ubyte'), labels)
  return directory


def tiny_config(data_dir: str):
  """The offline default config shrunk to a few-second run on the tiny IDX files."""
  from configs import vit_fashion_mnist  # pylint: disable=import-outside-toplevel
  c = vit_fashion_mnist.get_config()
  c.data.dir = data_dir
  c.model.hidden_size = 16
  c.model.num_layers = 1
  c.model.mlp_dim = 32
  c.model.num_heads = 2
  c.model.patch_size = 7
  c.model.conv_stem = ()  # Patchify: the fastest compile (the launch tests run the stem).
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_train_steps = 6
  c.warmup_steps = 0
  c.optim.schedule = 'constant'
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint_every_steps = 3
  c.checkpoint.async_save = False
  c.data.num_threads = 1
  c.data.train_split = 'train[:48]'  # 16 of the 64 training examples select checkpoints.
  c.data.validation_split = 'train[48:]'
  return c


def saved_state(workdir: str, step: int) -> dict:
  """The fields of a run's checkpoint at `step` as saved ('params', 'ema', ...), read
  with Orbax alone (independently of train.checkpoint)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))


@pytest.fixture
def fmnist_dir(tmp_path):
  return make_fashion_mnist_dir(str(tmp_path / 'fmnist'))
