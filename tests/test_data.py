"""Fashion-MNIST IDX reader, augmentations, Grain pipelines, TFDS sources."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import vit_cifar10
from data import fashion_mnist, pipeline, sources, transforms
from tests.conftest import tiny_config, write_idx


def test_idx_reader_roundtrip(tmp_path):
  images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 256
  for gz in (True, False):
    path = write_idx(str(tmp_path / f'x{gz}'), images, gz=gz)
    np.testing.assert_array_equal(fashion_mnist.read_idx(path), images.astype(np.uint8))


def test_idx_reader_truncated_file_gives_clear_error(tmp_path):
  path = write_idx(str(tmp_path / 'cut'), np.zeros((5, 28, 28)), truncate=100)
  with pytest.raises(ValueError, match=r'truncated.*shape \(5, 28, 28\) needs 3920 data bytes, found 3820'):
    fashion_mnist.read_idx(path)
  bad = tmp_path / 'bad'
  bad.write_bytes(b'\x12\x34\x56\x78rest')
  with pytest.raises(ValueError, match='not an IDX file'):
    fashion_mnist.read_idx(str(bad))


def test_fashion_mnist_load_and_missing_dir(fmnist_dir, tmp_path):
  images, labels = fashion_mnist.load('train', fmnist_dir)
  assert images.shape == (64, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (64,) and labels.dtype == np.int32
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
    fashion_mnist.load('test', str(tmp_path / 'nowhere'))


def test_random_crop_with_padding_is_a_shifted_window():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, size=(8, 6, 6, 1)).astype(np.uint8)
  out = transforms.random_crop_with_padding(images, 2, np.random.default_rng(1))
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(8):  # Each output is one of the 25 windows of its padded input.
    assert any(np.array_equal(out[i], padded[i, y:y + 6, x:x + 6])
               for y in range(5) for x in range(5))


def test_random_resized_crop_is_a_resized_window_within_scale():
  image = np.arange(40 * 60 * 3, dtype=np.int64).reshape(40, 60, 3) % 251
  image = image.astype(np.uint8)
  rng = np.random.default_rng(0)
  for _ in range(20):
    out = transforms.random_resized_crop(image, 16, rng)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  # A crop of the whole area at the image's own aspect ratio is a plain resize.
  whole = transforms.random_resized_crop(image[:, :40], 8, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(whole, transforms._resize(image[:, :40], 8, 8))
  # Impossible ratios fall back to the central crop with the ratio clamped.
  tall = np.zeros((100, 10, 1), np.uint8)
  tall[45:55] = 255
  out = transforms.random_resized_crop(tall, 10, rng, scale=(0.99, 1.0), ratio=(1.0, 1.0))
  assert out.shape == (10, 10, 1) and out.mean() > 200  # The middle 10 rows: all bright.


def test_resize_center_crop_takes_the_middle():
  image = np.zeros((300, 400, 3), np.uint8)
  image[140:160, 190:210] = 255  # A bright square in the centre.
  out = transforms.resize_center_crop(image, 224, 256)
  assert out.shape == (224, 224, 3)
  # Shorter side 300 -> 256: the square (20 px -> ~17 px) stays centred.
  bright = np.argwhere(out[..., 0] > 128)
  np.testing.assert_allclose(bright.mean(axis=0), (111.5, 111.5), atol=1.0)
  with pytest.raises(ValueError, match='crop size 300 is larger than the resize size 256'):
    transforms.resize_center_crop(image, 300, 256)


def test_flip_and_erasing():
  images = np.arange(4 * 4 * 5 * 1, dtype=np.float32).reshape(4, 4, 5, 1)
  flipped = transforms.random_flip(images, np.random.default_rng(0))
  for a, b in zip(images, flipped):
    assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
  big = np.zeros((200, 32, 32, 3), np.float32)
  erased = transforms.random_erasing(big, np.random.default_rng(0), probability=0.5)
  changed = (erased != 0).any(axis=(1, 2, 3))
  assert 0.35 < changed.mean() < 0.65
  fractions = (erased[changed] != 0).any(-1).mean(axis=(1, 2))
  assert fractions.min() >= 0.015 and fractions.max() <= 0.41  # Area ratio in [0.02, 0.4].


@pytest.mark.parametrize('mixup,cutmix', [(0.8, 0.0), (0.0, 1.0)])
def test_mixup_cutmix_ratio_matches_pixels(mixup, cutmix):
  images = np.concatenate([np.zeros((4, 8, 8, 1)), np.ones((4, 8, 8, 1))]).astype(np.float32)
  labels = np.array([0] * 4 + [1] * 4, np.int32)
  out = transforms.mix(images, labels, np.random.default_rng(3), mixup, cutmix)
  # The mean pixel equals the share of the 'ones' images, predicted by mix_ratio.
  share = np.where(labels == 1, out['mix_ratio'], 0) + np.where(out['label2'] == 1,
                                                                 1 - out['mix_ratio'], 0)
  np.testing.assert_allclose(out['image'].mean(axis=(1, 2, 3)), share, atol=1e-6)


def test_train_pipeline_is_deterministic_and_resumable(fmnist_dir):
  c = tiny_config(fmnist_dir)
  c.augment.random_erasing_prob = 0.5
  source = sources.build(c, 'train')
  a = pipeline.train_iterator(c, source)
  first = [next(a) for _ in range(3)]
  state = a.get_state()
  rest = [next(a) for _ in range(3)]
  b = pipeline.train_iterator(c, source)
  for x, y in zip(first, [next(b) for _ in range(3)]):
    np.testing.assert_array_equal(x['image'], y['image'])
  resumed = pipeline.train_iterator(c, source)
  resumed.set_state(state)
  for x, y in zip(rest, [next(resumed) for _ in range(3)]):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert first[0]['image'].shape == (16, 28, 28, 1) and first[0]['image'].dtype == np.float32


def test_train_pipeline_shards_per_process(fmnist_dir):
  c = tiny_config(fmnist_dir)
  source = sources.build(c, 'train')
  batches = [next(pipeline.train_iterator(c, source, process_index=i, process_count=2))
             for i in range(2)]
  assert batches[0]['image'].shape[0] == 8  # Global 16 over 2 processes.


def test_eval_batches_cover_split_exactly_once(fmnist_dir):
  c = tiny_config(fmnist_dir)
  c.eval_batch_size = 16
  source = sources.build(c, 'eval')  # 36 examples.
  for count in (1, 2):
    seen = []
    lengths = set()
    for index in range(count):
      batches = list(pipeline.eval_batches(c, source, process_index=index, process_count=count))
      lengths.add(len(batches))
      seen += [b['label'][b['mask'] > 0] for b in batches]
    assert len(lengths) == 1  # Every process runs the same number of batches.
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(source.labels))


def test_tfds_source_under_mock_data():
  c = vit_cifar10.get_config()
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    source = sources.build(c, 'train')
    assert len(source) == 10
    assert source[0]['image'].shape == (32, 32, 3)


def test_missing_tfds_dataset_fails_fast_with_instructions(tmp_path):
  c = vit_cifar10.get_config()
  c.data.tfds_data_dir = str(tmp_path)
  start = time.time()
  with pytest.raises(sources.DatasetNotFoundError, match='python -m data.prepare --dataset=cifar10'):
    sources.build(c, 'train')
  assert time.time() - start < 30


def test_unknown_dataset_and_source():
  c = vit_cifar10.get_config()
  c.data.name = 'cifar11'
  with pytest.raises(ValueError, match="Unknown TFDS dataset 'cifar11'; valid"):
    sources.build(c, 'train')
  c.data.source = 'ftp'
  with pytest.raises(ValueError, match='Unknown data.source'):
    sources.build(c, 'train')
