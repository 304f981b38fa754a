"""Dense-prediction losses (tasks.dense_losses) and segmentation metrics (tasks.confusion):
values by hand from the papers' formulas, identities between the losses, ignored pixels,
gradients, and the confusion matrix against a NumPy reference."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks import confusion, dense_losses


def s(x):
  return 1.0 / (1.0 + math.exp(-x))


# One image of 1x2 pixels, two classes: pixel 0 logits (2, 0) label 0; pixel 1 logits
# (0, 1) label 1. Softmax of (a, b) is (s(a - b), s(b - a)).
LOGITS = jnp.array([[[[2.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 2, 2)
LABELS = jnp.array([[[0, 1]]], jnp.int32)
VALID = jnp.ones((1, 1, 2), jnp.float32)
# Soft counts per class (TP, FP, FN): class 0 (s(2), s(-1), s(-2)); class 1 (s(1), s(-2), s(-1)).
COUNTS = ((s(2), s(-1), s(-2)), (s(1), s(-2), s(-1)))


def tversky_index(alpha, beta, eps=1.0):
  return [(tp + eps) / (tp + alpha * fp + beta * fn + eps) for tp, fp, fn in COUNTS]


def expected_bce():
  # Per pixel and class: -log s(x) for target 1, -log(1 - s(x)) = -log s(-x) for target 0.
  return (-math.log(s(2)) - math.log(s(-0.0)) - math.log(s(-0.0)) - math.log(s(1))) / 4


def expected_dice(eps=1.0):
  # (2 sum p g + eps) / (sum p + sum g + eps) with sum p + sum g = 2 TP + FP + FN.
  return 1 - np.mean([(2 * tp + eps) / (2 * tp + fp + fn + eps) for tp, fp, fn in COUNTS])


HAND = {
    'cross_entropy': (-math.log(s(2)) - math.log(s(1))) / 2,
    'binary_cross_entropy': expected_bce(),
    'dice': expected_dice(),
    'bce_dice': 0.5 * expected_bce() + expected_dice(),
    'focal': ((1 - s(2)) ** 2 * -math.log(s(2)) + (1 - s(1)) ** 2 * -math.log(s(1))) / 2,
    'tversky': 1 - np.mean(tversky_index(0.3, 0.7)),
    'focal_tversky': np.mean([(1 - ti) ** 0.75 for ti in tversky_index(0.3, 0.7)]),
}


@pytest.mark.parametrize('name', sorted(HAND))
def test_loss_matches_hand_computed_value(name):
  loss = jax.jit(dense_losses.get(name))(LOGITS, LABELS, VALID)
  chex.assert_shape(loss, (1,))
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss[0], HAND[name], rtol=1e-5)


def test_options_by_hand():
  focal = jax.jit(dense_losses.get('focal', gamma=1.0, alpha=[0.25, 0.75]))
  expected = (0.25 * (1 - s(2)) * -math.log(s(2)) + 0.75 * (1 - s(1)) * -math.log(s(1))) / 2
  np.testing.assert_allclose(focal(LOGITS, LABELS, VALID)[0], expected, rtol=1e-5)
  scaled = jax.jit(dense_losses.get('focal', gamma=0.0, alpha=0.5))(LOGITS, LABELS, VALID)
  np.testing.assert_allclose(scaled[0], 0.5 * HAND['cross_entropy'], rtol=1e-5)
  dice = jax.jit(dense_losses.get('dice', eps=0.1))(LOGITS, LABELS, VALID)
  np.testing.assert_allclose(dice[0], expected_dice(0.1), rtol=1e-5)
  ftl = jax.jit(dense_losses.get('focal_tversky', alpha=0.6, beta=0.4, gamma=2.0, eps=0.5))
  expected = np.mean([(1 - ti) ** 2 for ti in tversky_index(0.6, 0.4, 0.5)])
  np.testing.assert_allclose(ftl(LOGITS, LABELS, VALID)[0], expected, rtol=1e-5)


def random_batch(seed=0, batch=3, height=5, width=4, num_classes=4):
  """Random logits, labels, and valid with ~30 % ignored pixels labelled 255."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, height, width, num_classes)).astype(np.float32) * 3
  labels = rng.integers(0, num_classes, size=(batch, height, width)).astype(np.int32)
  valid = (rng.random((batch, height, width)) > 0.3).astype(np.float32)
  labels = np.where(valid > 0, labels, 255).astype(np.int32)
  return jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid)


def test_identities():
  logits, labels, valid = random_batch()
  get = lambda name, **o: jax.jit(dense_losses.get(name, **o))(logits, labels, valid)
  # alpha = beta = 1/2: (TP + e) / (TP + FP/2 + FN/2 + e) = (2TP + 2e) / (2TP + FP + FN + 2e).
  np.testing.assert_allclose(get('tversky', alpha=0.5, beta=0.5, eps=0.5), get('dice'),
                             rtol=1e-6)
  np.testing.assert_allclose(get('tversky', alpha=0.5, beta=0.5, eps=1.0),
                             get('dice', eps=2.0), rtol=1e-6)
  np.testing.assert_array_equal(get('focal', gamma=0.0), get('cross_entropy'))
  np.testing.assert_allclose(get('bce_dice'),
                             0.5 * get('binary_cross_entropy') + get('dice'), rtol=1e-6)
  np.testing.assert_allclose(get('focal_tversky', gamma=1.0), get('tversky'), rtol=1e-6)


@pytest.mark.parametrize('name', sorted(dense_losses.LOSSES))
def test_ignored_pixels_change_nothing(name):
  loss = jax.jit(dense_losses.get(name))
  # A third pixel, valid 0, label 255, with two different sets of logits.
  extra = lambda x: jnp.concatenate([LOGITS, jnp.full((1, 1, 1, 2), x)], axis=2)
  labels = jnp.array([[[0, 1, 255]]], jnp.int32)
  valid = jnp.array([[[1.0, 1.0, 0.0]]])
  reference = loss(LOGITS, LABELS, VALID)
  for x in (-7.0, 40.0):
    np.testing.assert_allclose(loss(extra(x), labels, valid), reference, rtol=1e-6)


@pytest.mark.parametrize('name', sorted(dense_losses.LOSSES))
def test_gradients_finite_and_zero_on_ignored_pixels(name):
  logits, labels, valid = random_batch(seed=1)
  # Confident logits, a bfloat16 input, and an image without valid pixels.
  logits = logits.at[0, 0, 0].set(jnp.array([60.0, -60.0, 0.0, 0.0]))
  labels = labels.at[0, 0, 0].set(0)
  valid = valid.at[0, 0, 0].set(1.0).at[2].set(0.0)
  labels = labels.at[2].set(255)
  loss_fn = jax.jit(dense_losses.get(name))
  loss = loss_fn(logits.astype(jnp.bfloat16), labels, valid)
  assert loss.dtype == jnp.float32
  assert np.all(np.isfinite(loss))
  np.testing.assert_allclose(loss_fn(logits, labels, valid)[2], 0.0, atol=1e-7)
  grads = jax.jit(jax.grad(lambda x: loss_fn(x, labels, valid).sum()))(logits)
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(np.asarray(grads)[np.asarray(valid) == 0], 0.0)
  assert np.abs(np.asarray(grads)).sum() > 0


def test_get_fails_loudly():
  with pytest.raises(ValueError, match=r"Unknown loss 'hinge'; valid: \['cross_entropy'"):
    dense_losses.get('hinge')
  with pytest.raises(ValueError, match='gamma'):
    dense_losses.get('cross_entropy', gamma=2.0)
  with pytest.raises(ValueError, match='beta'):
    dense_losses.get('focal', beta=0.5)


def reference_confusion(labels, predictions, weights, num_classes):
  matrix = np.zeros((num_classes, num_classes), np.float64)
  keep = weights > 0
  np.add.at(matrix, (labels[keep], predictions[keep]), weights[keep])
  return matrix


@pytest.mark.parametrize('num_classes', [2, 21])
def test_confusion_matrix_matches_numpy(num_classes):
  rng = np.random.default_rng(num_classes)
  shape = (4, 16, 12)
  labels = rng.integers(0, num_classes, size=shape).astype(np.int32)
  predictions = rng.integers(0, num_classes, size=shape).astype(np.int32)
  weights = (rng.random(shape) > 0.25).astype(np.float32)
  ignore = rng.random(shape) < 0.1
  labels[ignore], weights[ignore] = 255, 0.0
  expected = reference_confusion(labels, predictions, weights, num_classes)
  fn = jax.jit(confusion.confusion_matrix, static_argnums=3)
  got = fn(labels, predictions, weights, num_classes)
  chex.assert_shape(got, (num_classes, num_classes))
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(got.sum(), weights.sum())
  as_float = confusion.confusion_matrix(labels, predictions, weights * 0.5, num_classes,
                                        dtype=jnp.float32)
  np.testing.assert_allclose(as_float, expected * 0.5)


def test_segmentation_metrics_by_hand():
  # Class 0: TP 3, FP 2, FN 1; class 1: TP 4, FP 1, FN 2.
  metrics = confusion.segmentation_metrics(np.array([[3, 1], [2, 4]]), ['bg', 'cat'])
  assert metrics['iou/bg'] == pytest.approx(3 / 6)
  assert metrics['iou/cat'] == pytest.approx(4 / 7)
  assert metrics['dice/bg'] == pytest.approx(6 / 9)
  assert metrics['dice/cat'] == pytest.approx(8 / 11)
  assert metrics['miou'] == pytest.approx((3 / 6 + 4 / 7) / 2)
  assert metrics['mean_dice'] == pytest.approx((6 / 9 + 8 / 11) / 2)
  assert metrics['pixel_accuracy'] == pytest.approx(7 / 10)
  # A third class absent from labels and predictions is left out of the means.
  absent = confusion.segmentation_metrics(np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]]))
  assert absent['miou'] == pytest.approx(metrics['miou'])
  assert absent['mean_dice'] == pytest.approx(metrics['mean_dice'])
  assert math.isnan(absent['iou/2']) and absent['iou/0'] == pytest.approx(0.5)
  with pytest.raises(ValueError, match='square'):
    confusion.segmentation_metrics(np.zeros((2, 3)))
