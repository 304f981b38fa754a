"""On-device augmentation (data/device_augment.py): each transform does what its NumPy twin
in data/transforms.py does, and a run augmenting in the train step is deterministic and
resumes like an uninterrupted one."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import device_augment
from tasks import classification
from tests.conftest import make_fashion_mnist_dir, tiny_config
from tests.test_trainer import _assert_same_params, _params
from train import trainer

KEY = jax.random.key(3)


def _images(b=64, h=8, w=6, c=2):
  return np.random.default_rng(0).integers(0, 256, (b, h, w, c)).astype(np.float32)


def test_flip_mirrors_some_images_and_keeps_the_others():
  x = _images()
  y = np.asarray(device_augment.random_flip(jnp.asarray(x), KEY))
  flipped = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(flipped | np.all(y == x, axis=(1, 2, 3)))
  assert 0 < flipped.sum() < len(x)


def test_crop_is_a_window_of_the_zero_padded_image():
  x, p = _images(), 2
  y = np.asarray(device_augment.random_crop_with_padding(jnp.asarray(x), p, KEY))
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  offsets = set()
  for i in range(len(x)):
    found = [(t, l) for t in range(2 * p + 1) for l in range(2 * p + 1)
             if np.array_equal(padded[i, t:t + 8, l:l + 6], y[i])]
    assert found, i
    offsets.update(found)
  assert len(offsets) > 5  # Offsets vary per image.
  np.testing.assert_array_equal(device_augment.random_crop_with_padding(jnp.asarray(x), 0, KEY), x)


def test_erasing_fills_one_rectangle_per_image_with_values_in_range():
  x = _images(b=200, h=16, w=16, c=1)
  y = np.asarray(device_augment.random_erasing(jnp.asarray(x), KEY, probability=1.0))
  for i in range(len(x)):
    rows, cols = np.nonzero((y[i] != x[i]).any(-1))
    if len(rows):  # A rectangle: the changed pixels' bounding box (up to noise equal to x).
      box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
      assert (y[i][box] != x[i][box]).mean() > 0.9
      area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) / 256
      assert 0.005 <= area <= 0.46  # (0.02, 0.4) of 256 px, each side rounded.
  assert (y >= 0).all() and (y <= 255).all()
  assert (np.asarray(y) != x).any(axis=(1, 2, 3)).mean() > 0.95  # Nearly all fit at once.
  unchanged = device_augment.random_erasing(jnp.asarray(x), KEY, probability=0.0)
  np.testing.assert_array_equal(unchanged, x)


@pytest.mark.parametrize('mixup_alpha,cutmix_alpha', [(0.4, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_mix_each_image_with_its_partner(mixup_alpha, cutmix_alpha):
  x, labels = _images(b=16), jnp.arange(16, dtype=jnp.int32)  # label = index
  out = jax.tree.map(np.asarray, device_augment.mix(jnp.asarray(x), labels, KEY, mixup_alpha,
                                                    cutmix_alpha))
  partner, ratio = x[out['label2']], out['mix_ratio']
  assert sorted(out['label2']) == list(range(16)) and np.all(ratio == ratio[0])
  if mixup_alpha:
    np.testing.assert_allclose(out['image'], ratio[0] * x + (1 - ratio[0]) * partner, rtol=1e-5)
  else:  # One box, the same for all, pasted from the partner; ratio = the area kept.
    from_partner = np.all(out['image'] == partner, axis=(0, 3)) & ~np.all(x == partner,
                                                                          axis=(0, 3))
    kept = np.all(out['image'] == x, axis=(0, 3))
    assert np.all(from_partner | kept) and from_partner.any()
    assert ratio[0] == pytest.approx(1 - from_partner.mean(), abs=1e-6)


def test_device_augment_is_deterministic_and_normalises():
  aug = device_augment.DeviceAugment(mean=(0.5,), std=(0.25,), crop_padding=1, flip=True,
                                     random_erasing_prob=0.5, mixup_alpha=0.2, cutmix_alpha=1.0)
  batch = {'image': jnp.asarray(_images(c=1), jnp.uint8), 'label': jnp.arange(64) % 10}
  a, b = aug(batch, KEY), aug(batch, KEY)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert a['image'].dtype == jnp.float32 and set(a) == {'image', 'label', 'label2', 'mix_ratio'}
  assert float(a['image'].min()) >= -2.0 - 1e-6 and float(a['image'].max()) <= 2.0 + 1e-6
  c = aug(batch, jax.random.key(4))
  assert not np.array_equal(a['image'], c['image'])


def test_on_device_runs_read_uint8_and_resume_like_uninterrupted(tmp_path):
  """The host sends the images as read; the step augments (every transform on), and a run
  stopped at step 2 and resumed to 4 ends with the uninterrupted run's parameters."""
  config = tiny_config(make_fashion_mnist_dir(str(tmp_path / 'fmnist')))
  aug = config.augment
  aug.on_device, aug.crop_padding, aug.random_erasing_prob = True, 2, 0.5
  aug.mixup_alpha, aug.cutmix_alpha = 0.2, 1.0
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 4, 0, 2
  data = classification.build_data(config)
  batch = next(data.train_iterator())
  assert batch['image'].dtype == np.uint8 and set(batch) == {'image', 'label'}
  assert classification.build_task(config, data.spec).device_augment is not None

  trainer.run(config, str(tmp_path / 'full'))
  short = copy.deepcopy(config)
  short.num_train_steps = 2
  trainer.run(short, str(tmp_path / 'split'))
  trainer.run(config, str(tmp_path / 'split'))
  _assert_same_params(*(_params(str(tmp_path / run), 4) for run in ('full', 'split')))


def test_on_device_augmentation_is_refused_for_other_tasks():
  from configs import unetpp_fashion_mnist_scenes  # pylint: disable=import-outside-toplevel
  config = unetpp_fashion_mnist_scenes.get_config()
  config.augment.on_device = True
  with pytest.raises(ValueError, match="augment.on_device=True is supported for task="):
    trainer.validate(config, 1)
