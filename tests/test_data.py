"""Fashion-MNIST IDX reader, augmentations, Grain pipelines, TFDS sources."""

import math
import time
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import vit_cifar10
from data import fashion_mnist, pipeline, sources, transforms
from tasks import classification
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


def _coordinate_images(b, h, w):
  """[b, h, w, 3] uint8 whose pixel (y, x) of image i is (y + 1, x + 1, i + 1); 0 = padding."""
  ys, xs, ids = np.meshgrid(np.arange(h), np.arange(w), np.arange(b), indexing='ij')
  return (np.stack([ys, xs, ids], -1).transpose(2, 0, 1, 3) + 1).astype(np.uint8)


def _shifted(images, padding, top, left):
  """By hand: image i seen through an h x w window at (top[i], left[i]) of its zero-padded self."""
  b, h, w, _ = images.shape
  out = np.zeros_like(images)
  for i in range(b):
    for r in range(h):
      for c in range(w):
        y, x = top[i] + r - padding, left[i] + c - padding
        if 0 <= y < h and 0 <= x < w:
          out[i, r, c] = images[i, y, x]
  return out


def test_random_crop_with_padding_is_a_shifted_window():
  """Each image is its padded self cropped at the replayed (top, left); offsets vary."""
  images = _coordinate_images(16, 6, 5)
  out = transforms.random_crop_with_padding(images, 2, np.random.default_rng(1))
  rng = np.random.default_rng(1)  # The same draws: all tops, then all lefts, in [0, 4].
  top, left = rng.integers(0, 5, size=16), rng.integers(0, 5, size=16)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, _shifted(images, 2, top, left))
  # Offsets read back from the coordinates in the pixels; the original is at (2, 2).
  for i in range(16):
    r, c = np.argwhere(out[i, :, :, 2] > 0)[0]  # The first original pixel in the window.
    assert (out[i, r, c, 0] - 1 - r + 2, out[i, r, c, 1] - 1 - c + 2) == (top[i], left[i])
  assert ((top != 2) | (left != 2)).sum() >= 10 and len(set(zip(top, left))) >= 8
  padding = (out == 0).all(-1)  # Zeros exactly outside the shifted image.
  rows, cols = np.arange(6)[None, :, None], np.arange(5)[None, None, :]
  inside = ((rows + top[:, None, None] - 2 >= 0) & (rows + top[:, None, None] - 2 < 6)
            & (cols + left[:, None, None] - 2 >= 0) & (cols + left[:, None, None] - 2 < 5))
  np.testing.assert_array_equal(padding, ~inside)
  assert padding.any()
  np.testing.assert_array_equal(transforms.random_crop_with_padding(images, 0, rng), images)


def test_random_resized_crop_is_a_resized_window_within_scale():
  image = np.arange(40 * 60 * 3, dtype=np.int64).reshape(40, 60, 3) % 251
  image = image.astype(np.uint8)
  rng = np.random.default_rng(0)
  for _ in range(20):
    out = transforms.random_resized_crop(image, 16, rng)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  # A crop of the whole area at the image's own aspect ratio is a plain resize.
  whole = transforms.random_resized_crop(image[:, :40], 8, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(whole, transforms.resize(image[:, :40], 8, 8))
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


def test_random_flip_mirrors_exactly_the_replayed_images():
  """Image i is mirrored left-right iff the replayed rng.random(b)[i] < 0.5; others unchanged."""
  images = np.arange(8 * 3 * 5 * 2, dtype=np.uint8).reshape(8, 3, 5, 2)
  out = transforms.random_flip(images, np.random.default_rng(0))
  flip = np.random.default_rng(0).random(8) < 0.5
  assert 0 < flip.sum() < 8  # The batch has both flipped and unflipped images.
  expected = images.copy()
  for i in np.flatnonzero(flip):
    for x in range(5):
      expected[i, :, x] = images[i, :, 4 - x]
  np.testing.assert_array_equal(out, expected)
  assert out.dtype == np.uint8


def _erased_by_hand(images, seed, probability, area_range=(0.02, 0.4), min_aspect=0.3):
  """Replays random_erasing's draws (10 candidate areas, aspects; apply; top; left; noise)
  and erases by hand. Returns (expected images, indices of the erased images)."""
  b, h, w, _ = images.shape
  rng = np.random.default_rng(seed)
  area = rng.uniform(*area_range, size=(b, 10)) * h * w
  aspect = rng.uniform(min_aspect, 1 / min_aspect, size=(b, 10))
  apply, top_draw, left_draw = rng.random(b) < probability, rng.random(b), rng.random(b)
  noise = rng.uniform(0.0, 255.0, size=images.shape).astype(np.float32)
  expected, erased = images.copy(), []
  for i in range(b):
    sizes = [(round(math.sqrt(s * r)), round(math.sqrt(s / r))) for s, r in zip(area[i], aspect[i])]
    fits = [(eh, ew) for eh, ew in sizes if 0 < eh < h and 0 < ew < w]
    if fits and apply[i]:
      eh, ew = fits[0]
      top, left = int(top_draw[i] * (h - eh + 1)), int(left_draw[i] * (w - ew + 1))
      expected[i, top:top + eh, left:left + ew] = noise[i, top:top + eh, left:left + ew]
      erased.append(i)
  return expected, erased


def test_random_erasing_fills_one_replayed_rectangle():
  """Erasing equals the hand-built result; the change is one rectangle in the chosen images."""
  images = -1.0 - np.arange(32 * 16 * 12 * 3, dtype=np.float32).reshape(32, 16, 12, 3)
  out = transforms.random_erasing(images, np.random.default_rng(0), probability=0.5)
  expected, erased = _erased_by_hand(images, 0, 0.5)
  np.testing.assert_array_equal(out, expected)
  assert 8 <= len(erased) <= 24  # About half the images.
  changed = out >= 0  # Noise is in [0, 255]; every original pixel is negative.
  np.testing.assert_array_equal(np.flatnonzero(changed.any(axis=(1, 2, 3))), erased)
  for i in erased:  # All channels of one filled axis-aligned rectangle, 2 % to 40 % of the area.
    ys, xs = np.nonzero(changed[i].any(-1))
    assert changed[i, ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    assert ys.size == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert 0.015 <= ys.size / (16 * 12) <= 0.41


def test_random_erasing_probability_zero_and_one():
  """probability=0 changes nothing; probability=1 erases one rectangle in every image."""
  images = -1.0 - np.arange(32 * 16 * 12 * 3, dtype=np.float32).reshape(32, 16, 12, 3)
  never = transforms.random_erasing(images, np.random.default_rng(1), probability=0.0)
  np.testing.assert_array_equal(never, images)
  always = transforms.random_erasing(images, np.random.default_rng(1), probability=1.0)
  expected, erased = _erased_by_hand(images, 1, 1.0)
  np.testing.assert_array_equal(always, expected)
  assert erased == list(range(32)) and (always >= 0).any(axis=(1, 2, 3)).all()


def test_train_augment_crops_flips_and_normalises():
  """TrainAugment = crop, then flip (one generator, in that order), then normalise."""
  images = _coordinate_images(8, 6, 6)
  out = transforms.TrainAugment(mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=1, flip=True)
  out = out.random_map({'image': images, 'label': np.arange(8)}, np.random.default_rng(2))
  rng = np.random.default_rng(2)
  top, left = rng.integers(0, 3, size=8), rng.integers(0, 3, size=8)
  flip = rng.random(8) < 0.5
  assert ((top != 1) | (left != 1)).any() and 0 < flip.sum() < 8
  expected = _shifted(images, 1, top, left)
  expected[flip] = expected[flip][:, :, ::-1]
  np.testing.assert_allclose(out['image'], (expected / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out['label'], np.arange(8))
  assert out['image'].dtype == np.float32 and out['label'].dtype == np.int32


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
  """Two processes' epochs are disjoint shards that together cover the split once."""
  c = tiny_config(fmnist_dir)  # Global batch 16: 8 per process.
  c.augment.flip, c.augment.random_erasing_prob = False, 0.0  # Images pass unchanged.
  n = 48  # 24 examples per process: exactly 3 local batches per epoch.
  images = np.zeros((n, 4, 4, 1), np.uint8) + np.arange(n, dtype=np.uint8)[:, None, None, None]
  source = sources.ArraySource(images, np.arange(n, dtype=np.int32))  # Example i: pixels i.
  shards = []
  for i in range(2):
    it = pipeline.train_iterator(c, source, process_index=i, process_count=2)
    batches = [next(it) for _ in range(3)]
    assert all(b['image'].shape == (8, 4, 4, 1) for b in batches)
    labels = np.concatenate([b['label'] for b in batches])
    pixels = np.concatenate([b['image'] for b in batches]) * c.data.std[0] + c.data.mean[0]
    np.testing.assert_allclose(pixels * 255, np.broadcast_to(labels[:, None, None, None],
                                                             pixels.shape), atol=1e-3)
    assert len(set(labels.tolist())) == 24  # One epoch: every example of the shard once.
    shards.append(set(labels.tolist()))
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(range(n))



def test_each_process_draws_its_own_augmentations(fmnist_dir):
  """Grain seeds an element's draws with (seed, local index): one seed on every host
  would augment each host's k-th example the same way."""
  c = tiny_config(fmnist_dir)
  c.augment.random_erasing_prob = 0.5
  c.augment.random_resized_crop_size = 20
  image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), np.uint8)
  # Every example the same image: what differs between batches is the augmentation.
  source = sources.ArraySource(np.repeat(image[None], 32, 0), np.zeros(32, np.int32))
  first, second = (next(pipeline.train_iterator(c, source, process_index=i, process_count=2))
                   for i in range(2))
  c.batch_size = 8  # Alone with process 0's local batch: process 0 draws what it drew alone.
  np.testing.assert_array_equal(first['image'], next(pipeline.train_iterator(c, source))['image'])
  assert not np.array_equal(first['image'], second['image'])
  assert pipeline.process_seed(5, 0) == 5
  # Distinct per process, and none is process 0's seed + 1 or + 2 (its other streams).
  assert len({pipeline.process_seed(5, i) for i in range(4)} | {6, 7}) == 6

def test_eval_batches_cover_split_exactly_once(fmnist_dir):
  c = tiny_config(fmnist_dir)
  c.eval_batch_size = 48
  source = sources.build(c, 'test')  # 36 examples.
  for count in (1, 2, 48):  # 48 processes: 12 of them have no example at all.
    seen = []
    lengths, shapes = set(), set()
    for index in range(count):
      batches = list(pipeline.eval_batches(c, source, process_index=index, process_count=count))
      lengths.add(len(batches))
      seen += [b['label'][b['mask'] > 0] for b in batches]
      shapes |= {(b['image'].shape, b['image'].dtype) for b in batches}
    assert len(lengths) == 1  # Every process runs the same number of batches.
    assert len(shapes) == 1  # Of the same shapes, empty shards' padding included.
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(source.labels))


def test_local_split_slices_hold_out_part_of_train(fmnist_dir):
  c = tiny_config(fmnist_dir)
  whole = sources.build(c, 'train')  # 64 examples.
  for train, held_out in (('train[:48]', 'train[48:]'), ('train[:75%]', 'train[75%:]'),
                          ('train[:-16]', 'train[-16:]')):
    a, b = sources.build(c, train), sources.build(c, held_out)
    assert (len(a), len(b)) == (48, 16), (train, held_out)
    np.testing.assert_array_equal(np.concatenate([a.images, b.images]), whole.images)
  with pytest.raises(ValueError, match=r"Cannot parse split 'train\[1\]'"):
    sources.build(c, 'train[1]')
  with pytest.raises(ValueError, match=r"Split 'train\[64:\]' of fashion_mnist has no examples"):
    sources.build(c, 'train[64:]')
  with pytest.raises(ValueError, match='Unknown Fashion-MNIST split'):
    sources.build(c, 'validation')
  c.data.train_split = 'train'  # Training on all of train while validating on part of it:
  with pytest.raises(ValueError, match=r"validation_split='train\[48:\]' overlaps "
                     r"config.data.train_split='train'"):
    pipeline.eval_splits(c)
  for train, held_out in (('train[:55000]', 'train'), ('train[:56000]', 'train[55000:]'),
                          ('train[:91%]', 'train[90%:]'), ('train[10:20]', 'train[15:16]')):
    c.data.train_split, c.data.validation_split = train, held_out
    with pytest.raises(ValueError, match=r'overlaps config.data.train_split'):
      pipeline.eval_splits(c)
  for train, held_out in (('train[:55000]', 'train[55000:]'), ('train[:90%]', 'train[90%:]'),
                          ('train', 'test'), ('train[:-16]', 'train[-16:]')):
    c.data.train_split, c.data.validation_split = train, held_out
    assert pipeline.eval_splits(c)['validation'] == held_out


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


@pytest.mark.parametrize('crop', [0, 8])
def test_image_predictions_see_the_eval_view(tmp_path, crop, capsys):
  # train.predict --image for a classifier: with eval_crop_size the ImageNet view
  # (shorter side to eval_resize_size, central crop) that the eval batches use, else
  # the image resized to the input size; normalised as the eval batches are.
  pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), np.uint8)
  path = str(tmp_path / 'photo.png')
  Image.fromarray(pixels).save(path)
  config = vit_cifar10.get_config()
  config.data.eval_crop_size, config.data.eval_resize_size = crop, 10
  config.eval_batch_size = 2
  data = types.SimpleNamespace(spec=pipeline.image_spec(10, (8, 8, 3)))
  seen = []
  classification.predict_cli(config, data, lambda batch: seen.append(batch['image']) or
                             np.array([7, 0]), {'image': [path]})
  view = (transforms.resize_center_crop(pixels, 8, 10) if crop
          else transforms.resize(pixels, 8, 8))
  np.testing.assert_allclose(seen[0][0], transforms.normalize(
      view[None], config.data.mean, config.data.std)[0], atol=1e-6)
  assert not seen[0][1].any() and capsys.readouterr().out == f'{path}\t7\n'
