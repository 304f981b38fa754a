"""Fashion-MNIST scenes, paired segmentation augmentation, segmentation pipelines and
sources (scenes, Oxford-IIIT Pet under TFDS mock data)."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from data import fashion_mnist, scenes, segmentation
from tests.conftest import make_fashion_mnist_dir


def _config(**data):
  """The shared defaults plus the segmentation fields (Fashion-MNIST scenes)."""
  c = common.get_base_config()
  c.data.update(dict(source='fashion_mnist_scenes', name='fashion_mnist_scenes', dir='',
                     train_split='train[:48]', validation_split='train[48:]',
                     test_split='test', num_classes=11, ignore_label=255, image_size=32,
                     num_train_scenes=24, num_eval_scenes=10, canvas_size=32,
                     mean=(0.1,), std=(0.3,), num_threads=1, prefetch_batches=2))
  c.data.update(data)
  c.augment.scale_range = (1.0, 1.0)
  c.batch_size = 4
  c.eval_batch_size = 4
  return c


def _pool(n=40, seed=0, low=30):
  """n random items: a blob of random intensities in [low, 255] on a zero background."""
  rng = np.random.default_rng(seed)
  ys, xs = np.mgrid[:28, :28]
  images = np.zeros((n, 28, 28), np.uint8)
  for i in range(n):
    cy, cx = rng.integers(8, 20, size=2)
    ry, rx = rng.integers(4, 9, size=2)
    blob = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    images[i][blob] = rng.integers(low, 256, size=blob.sum())
  return images, rng.integers(0, 10, size=n)


def _squares(n, value0, step=1):
  """n items that are whole squares of constant intensity value0 + step * i (all
  foreground; a constant image stays constant under bilinear resizing)."""
  values = value0 + step * np.arange(n)
  return np.broadcast_to(values[:, None, None], (n, 28, 28)).astype(np.uint8), np.arange(n) % 10


def test_scenes_are_pure_functions_of_the_index():
  images, labels = _pool()
  a = scenes.FashionMnistScenes(images, labels, 12, canvas_size=48, seed=3)
  b = scenes.FashionMnistScenes(images, labels, 12, canvas_size=48, seed=3)
  forward = [a.scene(i) for i in range(12)]
  backward = [b.scene(i) for i in reversed(range(12))][::-1]
  for x, y in zip(forward, backward):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  np.testing.assert_array_equal(a[5]['image'], forward[5]['image'])
  assert len({f['image'].tobytes() for f in forward}) == 12  # Scenes differ.
  other = scenes.FashionMnistScenes(images, labels, 12, canvas_size=48, seed=4)
  assert not np.array_equal(other.scene(0)['image'], forward[0]['image'])
  counts = [len(f['items']) for f in forward]
  assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
  with pytest.raises(IndexError):
    a.scene(12)


def test_scenes_never_mix_train_and_test_items():
  """Train items are squares of intensity 100..139, test items 200..239: every canvas
  pixel tells which pool it came from."""
  train = scenes.FashionMnistScenes(*_squares(40, 100), 30, canvas_size=40, seed=1)
  test = scenes.FashionMnistScenes(*_squares(40, 200), 30, canvas_size=40, seed=1)
  for i in range(30):
    s, t = train.scene(i), test.scene(i)
    assert set(np.unique(s['image'])) <= {0} | set(range(100, 140))
    assert set(np.unique(t['image'])) <= {0} | set(range(200, 240))
    for scene in (s, t):  # Items are pool indices; each visible pixel shows its item.
      assert scene['items'].min() >= 0 and scene['items'].max() < 40
      inst = scene['instances']
      shown = scene['image'][..., 0][inst > 0] - (100 if scene is s else 200)
      np.testing.assert_array_equal(shown, scene['items'][inst[inst > 0] - 1])
      np.testing.assert_array_equal(scene['classes'], scene['items'] % 10)


def test_scene_labels_instances_boxes_and_occlusion_agree():
  images, labels = _pool(seed=2)
  source = scenes.FashionMnistScenes(images, labels, 40, canvas_size=64, seed=0)
  occluded = 0
  for i in range(40):
    s = source.scene(i)
    n = len(s['items'])
    assert s['image'].shape == (64, 64, 1) and s['image'].dtype == np.uint8
    assert s['label'].dtype == np.uint8 and s['instances'].dtype == np.int32
    assert s['boxes'].shape == (n, 4) and s['classes'].shape == s['visible'].shape == (n,)
    inst = s['instances']
    expected = np.where(inst > 0, np.concatenate([[0], s['classes'] + 1])[inst], 0)
    np.testing.assert_array_equal(s['label'], expected)
    np.testing.assert_array_equal(s['classes'], labels[s['items']])
    assert ((s['image'][..., 0] > scenes.FOREGROUND_THRESHOLD) == (inst > 0)).all()
    for k in range(n):
      ys, xs = np.nonzero(inst == k + 1)
      x0, y0, x1, y1 = s['boxes'][k]
      assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64
      if ys.size:
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
      assert (s['visible'][k] > 0) == (ys.size > 0) and s['visible'][k] <= 1
    occluded += (s['visible'][:-1] < 1).sum()
  assert occluded > 0
  # Squares: the last pasted item is on top, so its box is all its own and fully visible.
  source = scenes.FashionMnistScenes(*_squares(40, 100), 20, canvas_size=64, seed=0)
  for i in range(20):
    s = source.scene(i)
    x0, y0, x1, y1 = s['boxes'][-1].astype(int)
    assert (s['instances'][y0:y1, x0:x1] == len(s['items'])).all()
    on_canvas = (x1 - x0) * (y1 - y0) / s['visible'][-1]  # Its whole square, in pixels.
    assert np.sqrt(on_canvas) == pytest.approx(round(np.sqrt(on_canvas)), abs=1e-3)


def test_scenes_from_the_real_fashion_mnist_files():
  if not os.path.exists(os.path.join(fashion_mnist.DEFAULT_DIR, 't10k-labels-idx1-ubyte.gz')):
    pytest.skip('Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)')
  c = _config(canvas_size=64, train_split='train[:55000]', validation_split='train[55000:]')
  test = scenes.load_split(c, 'test')
  assert len(test) == c.data.num_eval_scenes
  assert len(scenes.load_split(c, 'train[:55000]')) == c.data.num_train_scenes
  labels = np.stack([test[i]['label'] for i in range(len(test))])
  assert labels.shape == (10, 64, 64) and labels.max() < scenes.NUM_CLASSES == 11
  assert 0.1 < (labels > 0).mean() < 0.7  # Items cover a good part of the canvases.
  assert len(scenes.CLASS_NAMES) == 11 and scenes.CLASS_NAMES[10] == 'Ankle boot'
  validation = scenes.load_split(c, 'train[55000:]')
  assert validation.images.shape == (5000, 28, 28) and validation.seed != test.seed


def _blocks(b, size, channels=1, block=8, seed=0):
  """[b, size, size, channels] uint8 of random 0 / 255 blocks and the label image > 127."""
  rng = np.random.default_rng(seed)
  cells = rng.integers(0, 2, size=(b, size // block, size // block), dtype=np.uint8) * 255
  images = np.repeat(np.repeat(cells, block, 1), block, 2)[..., None].repeat(channels, -1)
  return images, (images[..., 0] > 127).astype(np.uint8)


def _agreement(images, labels, ignore=255):
  """Fraction of non-ignored label pixels equal to (image > 127) among the pixels whose
  image value is decisive (< 64 or > 191). Bilinear resampling gives ~128 where a pixel
  centre falls on a block edge, and anything near a block corner, where nearest
  neighbour may pick either side: a few pixels disagree without misalignment."""
  values = images[..., 0]
  decisive = ((values < 64) | (values > 191)) & (labels != ignore)
  assert decisive.sum() >= 0.6 * (labels != ignore).sum()
  return ((values > 127) == (labels == 1))[decisive].mean()


def test_flip_keeps_labels_aligned():
  images, labels = _blocks(16, 32)
  flipped, flipped_labels = segmentation.random_flip_pair(images, labels,
                                                          np.random.default_rng(0))
  np.testing.assert_array_equal(flipped_labels, flipped[..., 0] > 127)
  changed = (flipped != images).any((1, 2, 3))
  assert 3 <= changed.sum() <= 13


@pytest.mark.parametrize('channels', [1, 3])
def test_scale_crop_and_resize_keep_labels_aligned(channels):
  images, labels = _blocks(12, 32, channels)
  rng = np.random.default_rng(0)
  padded = 0
  for image, label in zip(images, labels):
    out, out_label = segmentation.random_scale_crop(image, label, rng, (0.5, 2.0), 255)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out_label.shape == label.shape and out_label.dtype == np.int32
    assert _agreement(out, out_label) >= 0.99
    pad = out_label == 255
    padded += pad.any()
    assert (out[pad] == 0).all()
    for size in (20, 45, 64):
      resized, resized_label = segmentation.resize_pair(image, label, size, size + 3)
      assert resized.shape == (size, size + 3, channels) and resized_label.shape == (size, size + 3)
      assert _agreement(resized, resized_label) >= 0.99
  assert padded >= 2  # Some factors < 1 padded with the ignore label.
  # A one-pixel shift of the label would break the agreement: the check has teeth.
  out, out_label = segmentation.resize_pair(images[0], labels[0], 40, 40)
  assert _agreement(out, np.roll(out_label, 1, 1)) < 0.97


def test_train_augment_aligns_and_normalises():
  images, labels = _blocks(8, 32)
  augment = segmentation.TrainAugment(mean=(0.5,), std=(0.25,), num_classes=2,
                                      ignore_label=255, split='train', flip=True,
                                      scale_range=(0.5, 1.5))
  out = augment.random_map({'image': images, 'label': labels}, np.random.default_rng(0))
  assert out['image'].dtype == np.float32 and out['label'].dtype == np.int32
  assert out['image'].shape == (8, 32, 32, 1) and out['label'].shape == (8, 32, 32)
  pixels = (out['image'] * 0.25 + 0.5) * 255
  assert _agreement(pixels, out['label']) >= 0.99


class _IndexedSource:
  """Example i: a 6x5 image filled with i + 1 and a label filled with i % 3."""

  def __init__(self, n, bad_index=None, bad_value=7):
    self.n, self.bad_index, self.bad_value = n, bad_index, bad_value

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    label = np.full((6, 5), i % 3, np.uint8)
    if i == self.bad_index:
      label[2, 3] = self.bad_value
    return {'image': np.full((6, 5, 1), i + 1, np.uint8), 'label': label}


def _ids(batch, c):
  """The example indices of a normalised batch (see _IndexedSource)."""
  pixels = batch['image'][:, 0, 0, 0] * c.data.std[0] * 255 + c.data.mean[0] * 255
  return np.round(pixels).astype(int) - 1


def test_train_iterator_state_round_trip():
  c = _config(num_classes=3)
  c.augment.flip = True
  c.augment.scale_range = (0.75, 1.25)
  it = segmentation.train_iterator(c, _IndexedSource(10), 'train')
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  it2 = segmentation.train_iterator(c, _IndexedSource(10), 'train')
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    assert got['image'].shape == (4, 6, 5, 1) and got['label'].shape == (4, 6, 5)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_batches_cover_the_split_once(process_count):
  c = _config(num_classes=3)
  c.eval_batch_size = 4
  seen, num_batches = [], set()
  for process in range(process_count):
    batches = list(segmentation.eval_batches(c, _IndexedSource(11), 'test',
                                             process_index=process,
                                             process_count=process_count))
    num_batches.add(len(batches))
    for batch in batches:
      assert batch['mask'].dtype == np.float32 and batch['label'].dtype == np.int32
      assert batch['label'].shape == (4 // process_count, 6, 5)
      real = batch['mask'] == 1
      ids = _ids(batch, c)[real]
      np.testing.assert_array_equal(batch['label'][real][:, 0, 0], ids % 3)
      seen.extend(ids.tolist())
  assert sorted(seen) == list(range(11)) and len(num_batches) == 1


def test_bad_labels_and_shapes_raise_with_details():
  c = _config(num_classes=3)
  with pytest.raises(ValueError, match=r"Split 'train\[:9\]': label value\(s\) \[7\] outside "
                     r'the valid range \[0, 3\)'):
    it = segmentation.train_iterator(c, _IndexedSource(8, bad_index=5), 'train[:9]')
    for _ in range(3):
      next(it)
  with pytest.raises(ValueError, match=r"Split 'test': label value\(s\) \[9\]"):
    list(segmentation.eval_batches(c, _IndexedSource(8, bad_index=2, bad_value=9), 'test'))
  # The ignore label is fine.
  list(segmentation.eval_batches(c, _IndexedSource(8, bad_index=2, bad_value=255), 'test'))

  class Mismatched(_IndexedSource):
    def __getitem__(self, i):
      return {**super().__getitem__(i), 'label': np.zeros((6, 4), np.uint8)}
  with pytest.raises(ValueError, match=r'image of shape \(6, 5, 1\) and label of shape \(6, 4\)'):
    list(segmentation.eval_batches(c, Mismatched(8), 'test'))


def test_segmentation_data_on_scenes(tmp_path):
  c = _config(dir=make_fashion_mnist_dir(str(tmp_path / 'fmnist')))
  c.augment.flip = True
  c.augment.scale_range = (0.75, 1.25)
  data = segmentation.SegmentationData(c)
  assert data.eval_splits == {'validation': 'train[48:]', 'test': 'test'}
  assert data.num_train_examples == 24 and len(data.class_names) == 11
  assert data.spec.model_kwargs == {'num_classes': 11}
  assert data.spec.init_args[0].shape == (1, 32, 32, 1)
  batch = next(data.train_iterator())
  assert batch['image'].shape == (4, 32, 32, 1) and batch['label'].shape == (4, 32, 32)
  assert batch['label'].max() <= 255 and set(np.unique(batch['label'])) - {255} <= set(range(11))
  # Validation items are train[48:], test items the test file: disjoint pools.
  assert len(data.eval_sources['validation'].images) == 16
  assert len(data.eval_sources['test'].images) == 36
  batches = list(data.eval_batches('test', process_index=1, process_count=2))
  assert sum(b['mask'].sum() for b in batches) == 5  # Scenes 1, 3, 5, 7, 9 of 10.
  c.data.num_classes = 10
  with pytest.raises(ValueError, match='num_classes=10, but fashion_mnist_scenes'):
    segmentation.SegmentationData(c)


def test_unknown_sources_fail_listing_the_valid_ones():
  with pytest.raises(ValueError, match=r"Unknown data.source 'voc'.*'fashion_mnist_scenes', "
                     r"'tfds', 'stardist_nuclei'"):
    segmentation.build_source(_config(source='voc'), 'train')
  with pytest.raises(ValueError, match=r"Unknown TFDS segmentation dataset 'voc'.*oxford_iiit_pet"):
    segmentation.build_source(_config(source='tfds', name='voc'), 'train')


def test_pet_trimap_conversion():
  trimap = np.array([[1, 2], [3, 2]], np.uint8).repeat(4, 0).repeat(4, 1)[..., None]
  image = np.zeros((8, 8, 3), np.uint8)
  image[trimap[..., 0] == 1] = 200
  out = segmentation.pet_example({'image': image, 'segmentation_mask': trimap}, 8)
  np.testing.assert_array_equal(out['label'],
                                np.array([[1, 0], [2, 0]]).repeat(4, 0).repeat(4, 1))
  assert out['label'].dtype == np.uint8 and out['image'] is image
  out = segmentation.pet_example({'image': image, 'segmentation_mask': trimap}, 16)
  assert out['image'].shape == (16, 16, 3) and out['label'].shape == (16, 16)
  np.testing.assert_array_equal(out['label'],
                                np.array([[1, 0], [2, 0]]).repeat(8, 0).repeat(8, 1))
  assert ((out['image'][..., 0] > 100) == (out['label'] == 1)).all()


def test_pets_under_tfds_mock_data():
  c = _config(source='tfds', name='oxford_iiit_pet', num_classes=3, image_size=24,
              train_split='train[:90%]', validation_split='train[90%:]', mean=(0.5,) * 3,
              std=(0.25,) * 3)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    source = segmentation.build_source(c, 'test')
    example = source[0]
    assert example['image'].shape == (24, 24, 3) and example['image'].dtype == np.uint8
    assert example['label'].shape == (24, 24)
    # Mock trimaps hold arbitrary bytes; those that are not 1..3 become 255 (ignored).
    assert set(np.unique(example['label'])) <= {0, 1, 2, 255}
    data = segmentation.SegmentationData(c)
    assert data.class_names == ['background', 'pet', 'border']
    assert data.spec.init_args[0].shape == (1, 24, 24, 3)
    batch = next(data.train_iterator())
    assert batch['image'].shape == (4, 24, 24, 3) and batch['label'].shape == (4, 24, 24)


def test_scenes_oracle_scores_exact_masks_with_the_given_item_classes():
  """benchmarks/scenes_oracle: the true classes give mIoU 1; relabelling one item class
  as another moves exactly its pixels in the confusion matrix."""
  from benchmarks import scenes_oracle  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  labels = np.arange(30) % 10
  pool = scenes.FashionMnistScenes(rng.integers(0, 255, (30, 28, 28), np.uint8), labels, 12,
                                   canvas_size=32)
  exact = scenes_oracle.oracle_confusion(pool, lambda index, scene: labels[scene['items']])
  assert exact.sum() == 12 * 32 * 32
  np.testing.assert_array_equal(exact, np.diag(np.diag(exact)))
  wrong = np.where(labels == 3, 5, labels)  # Every Dress called Coat.
  matrix = scenes_oracle.oracle_confusion(pool, lambda index, scene: wrong[scene['items']])
  assert exact[4, 4] > 0 and matrix[4, 4] == 0 and matrix[4, 6] == exact[4, 4]
  np.testing.assert_array_equal(np.delete(np.delete(matrix, 4, 0), 4, 1),
                                np.delete(np.delete(exact, 4, 0), 4, 1))


def test_scenes_oracle_gives_each_item_the_segmenters_majority_class():
  """An item takes the most frequent foreground class predicted over its visible pixels,
  background votes ignored; an item with none gets -1 (labelled background)."""
  from benchmarks import scenes_oracle  # pylint: disable=import-outside-toplevel
  instances = np.array([[1, 1, 1, 0],
                        [1, 1, 2, 2],
                        [0, 0, 2, 3]])
  predicted = np.array([[4, 4, 0, 0],   # Item 1: classes 3, 3, (bg), 6, 3 -> 3.
                        [7, 4, 0, 0],   # Item 2: all background -> -1.
                        [9, 9, 0, 5]])  # Item 3: class 4. Item 4 is hidden -> -1.
  np.testing.assert_array_equal(scenes_oracle.majority_classes(predicted, instances, 4),
                                [3, -1, 4, -1])
  label = np.array([[0, 4], [5, 5]])
  matrix = scenes_oracle.pixel_confusion(label, np.array([[0, 4], [4, 5]]))
  assert matrix.sum() == 4 and matrix[0, 0] == matrix[4, 4] == matrix[5, 4] == matrix[5, 5] == 1
