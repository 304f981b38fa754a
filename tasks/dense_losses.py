"""Losses for dense prediction (semantic segmentation), one per-image value each.

Every loss has the same signature, so a config picks one by name (`get`):

  loss(logits, labels, valid, **options) -> [batch] float32

  logits: [batch, height, width, num_classes], any float dtype (computed in float32).
  labels: [batch, height, width] int32 class ids in [0, num_classes) where valid is 1;
    any value (e.g. the ignore label 255) where valid is 0.
  valid: [batch, height, width] float32, 1 where the pixel counts, 0 for the ignore
    label and padding (the caller builds it).

The result is one loss per image; the trainer multiplies by per-image weights and
averages. Pixels with valid 0 contribute nothing to the value or the gradient, and an
image without valid pixels gets loss 0 (no NaN). The region losses (Dice, Tversky) use
soft counts over the image's valid pixels, per class, then average over the classes.
"""

import functools
import inspect
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax


def _inputs(logits, labels, valid):
  """float32 logits and valid; labels set to 0 where valid is 0 (guards one-hot/gather)."""
  logits = logits.astype(jnp.float32)
  valid = valid.astype(jnp.float32)
  labels = jnp.where(valid > 0, labels, 0).astype(jnp.int32)  # Ignore label 255 -> 0.
  return logits, labels, valid


def _one_hot(labels, num_classes):
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _safe_divide(total, count):
  """total / count, 0 where count is 0 (value and gradient)."""
  nonzero = count > 0
  return jnp.where(nonzero, total / jnp.where(nonzero, count, 1.0), 0.0)


def _pixel_mean(per_pixel, valid):
  """[b, h, w] float32 -> [b]: the mean over each image's valid pixels (0 if none)."""
  return _safe_divide((per_pixel * valid).sum(axis=(1, 2)), valid.sum(axis=(1, 2)))


def _soft_counts(logits, labels, valid):
  """Soft true positives, false positives and false negatives [b, num_classes] float32.

  With softmax probabilities p and one-hot targets g over the valid pixels:
  TP = sum p g, FP = sum p (1 - g), FN = sum (1 - p) g.
  """
  logits, labels, valid = _inputs(logits, labels, valid)
  probs = jax.nn.softmax(logits, axis=-1)  # (B, H, W, C)
  targets = _one_hot(labels, logits.shape[-1])
  v = valid[..., None]
  tp = (probs * targets * v).sum(axis=(1, 2))
  fp = (probs * (1.0 - targets) * v).sum(axis=(1, 2))
  fn = ((1.0 - probs) * targets * v).sum(axis=(1, 2))
  return tp, fp, fn


def _safe_power(x, exponent):
  """x ** exponent for x >= 0 with a finite gradient at x = 0 (set to 0 there)."""
  positive = x > 0
  return jnp.where(positive, jnp.where(positive, x, 1.0) ** exponent, 0.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
  """Per-pixel softmax cross entropy, averaged over the image's valid pixels.

  -log softmax(logits)[label] (optax.softmax_cross_entropy_with_integer_labels), the
  per-pixel multinomial logistic loss of FCN (Long et al. 2015). Shapes: module docstring;
  returns [batch] float32, 0 for an image without valid pixels.
  """
  logits, labels, valid = _inputs(logits, labels, valid)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # (B, H, W)
  return _pixel_mean(nll, valid)


def binary_cross_entropy(logits: jax.Array, labels: jax.Array,
                         valid: jax.Array) -> jax.Array:
  """Per-class sigmoid binary cross entropy on one-hot targets, averaged over the
  image's valid pixels and the classes.

  -[g log sigmoid(x) + (1 - g) log(1 - sigmoid(x))] per pixel and class
  (optax.sigmoid_binary_cross_entropy): the BCE term of UNet++ (Zhou et al. 2018,
  Sec. 2, Eq. 1), whose outputs are per-class sigmoids. Shapes: module docstring;
  returns [batch] float32.
  """
  logits, labels, valid = _inputs(logits, labels, valid)
  targets = _one_hot(labels, logits.shape[-1])
  bce = optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)  # (B, H, W)
  return _pixel_mean(bce, valid)


def dice(logits: jax.Array, labels: jax.Array, valid: jax.Array, *,
         eps: float = 1.0) -> jax.Array:
  """Soft Dice loss on softmax probabilities, per class, averaged over the classes.

  Per image and class c, with softmax probabilities p and one-hot targets g summed
  over the image's valid pixels:

    Dice_c = (2 sum p g + eps) / (sum p + sum g + eps),  loss = mean_c (1 - Dice_c).

  This is the common (un-squared) form; V-Net (Milletari et al. 2016, Eq. 1)
  squares p and g in the denominator. eps (default 1.0, the smoothing of the UNet++
  code) keeps classes absent from both the image and the prediction at Dice near 1.
  An image without valid pixels gets 0. Shapes: module docstring; returns [batch]
  float32.
  """
  tp, fp, fn = _soft_counts(logits, labels, valid)
  # sum p + sum g = 2 TP + FP + FN.
  score = (2.0 * tp + eps) / (2.0 * tp + fp + fn + eps)  # (B, C)
  return (1.0 - score).mean(axis=-1)


def bce_dice(logits: jax.Array, labels: jax.Array, valid: jax.Array, *,
             eps: float = 1.0) -> jax.Array:
  """The UNet++ loss: 0.5 * binary_cross_entropy + dice.

  Zhou et al. 2018 ("UNet++", Sec. 2, Eq. 1) write
  L(Y, Y^) = -1/N sum_b (1/2 Y_b log Y^_b + 2 Y_b Y^_b / (Y_b + Y^_b)), i.e. half the
  binary cross entropy minus the Dice coefficient; their code (helper_functions.py
  bce_dice_loss) computes 0.5 * BCE - Dice_coefficient with smoothing 1 over the whole
  batch of sigmoid outputs. Here, per image: 0.5 * `binary_cross_entropy` (sigmoid,
  mean over valid pixels and classes) + `dice` (1 - Dice, softmax probabilities,
  mean over classes, smoothing eps). 1 - Dice instead of -Dice adds the constant 1
  (same gradient, loss >= 0); Dice on softmax rather than sigmoid outputs is the
  multi-class form. Shapes: module docstring; returns [batch] float32.
  """
  return 0.5 * binary_cross_entropy(logits, labels, valid) + dice(
      logits, labels, valid, eps=eps)


def focal(logits: jax.Array, labels: jax.Array, valid: jax.Array, *,
          gamma: float = 2.0, alpha: float | Sequence[float] | None = None) -> jax.Array:
  """Softmax focal loss, averaged over the image's valid pixels.

  FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017, "Focal Loss for Dense
  Object Detection", Sec. 3.2, Eq. 5), with p_t the softmax probability of the true
  class (the paper's sigmoid form is optax.sigmoid_focal_loss; not used here). alpha:
  None (alpha_t = 1), a float (every class), or one weight per class (alpha_t =
  alpha[label]). gamma = 0 and alpha None give `cross_entropy` exactly. Shapes: module
  docstring; returns [batch] float32.
  """
  logits, labels, valid = _inputs(logits, labels, valid)
  log_pt = -optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # (B, H, W)
  loss = -log_pt
  if gamma != 0:
    loss = _safe_power(-jnp.expm1(log_pt), gamma) * loss  # 1 - p_t, no cancellation near 1.
  if alpha is not None:
    loss = jnp.asarray(alpha, jnp.float32)[labels] * loss if jnp.ndim(alpha) else alpha * loss
  return _pixel_mean(loss, valid)


def tversky(logits: jax.Array, labels: jax.Array, valid: jax.Array, *,
            alpha: float = 0.3, beta: float = 0.7, eps: float = 1.0) -> jax.Array:
  """1 - Tversky index with soft counts, per class, averaged over the classes.

  TI_c = (TP + eps) / (TP + alpha FP + beta FN + eps) (Salehi et al. 2017, "Tversky
  loss function for image segmentation", Eq. 3: alpha weighs false positives,
  beta false negatives; their best lesion results used alpha 0.3, beta 0.7, the
  defaults). TP, FP, FN: soft counts of softmax probabilities against one-hot targets
  over the image's valid pixels. alpha = beta = 0.5 gives `dice` with smoothing
  2 * eps exactly: (TP + eps) / (TP + FP/2 + FN/2 + eps) = (2TP + 2eps) /
  (2TP + FP + FN + 2eps). Shapes: module docstring; returns [batch] float32.
  """
  tp, fp, fn = _soft_counts(logits, labels, valid)
  index = (tp + eps) / (tp + alpha * fp + beta * fn + eps)  # (B, C)
  return (1.0 - index).mean(axis=-1)


def focal_tversky(logits: jax.Array, labels: jax.Array, valid: jax.Array, *,
                  alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75,
                  eps: float = 1.0) -> jax.Array:
  """Focal Tversky loss: mean_c (1 - TI_c)^gamma, TI_c as in `tversky`.

  Abraham & Khan 2019 ("A Novel Focal Tversky loss function with improved Attention
  U-Net for lesion segmentation", Eq. 4) write FTL = sum_c (1 - TI_c)^(1/γ)
  with γ = 4/3 in their experiments: the default exponent gamma = 1/γ = 0.75. Their
  Eq. 3 puts alpha on false negatives and beta on false positives (alpha 0.7, beta
  0.3); here alpha weighs false positives and beta false negatives as in Salehi et
  al., so the defaults 0.3 / 0.7 are the same weighting. The mean over classes (not
  the paper's sum) keeps the scale independent of num_classes. The gradient at
  TI_c = 1 (e.g. an image without valid pixels) is set to 0 instead of infinity.
  Shapes: module docstring; returns [batch] float32.
  """
  tp, fp, fn = _soft_counts(logits, labels, valid)
  index = (tp + eps) / (tp + alpha * fp + beta * fn + eps)
  return _safe_power(jnp.maximum(1.0 - index, 0.0), gamma).mean(axis=-1)


LOSSES: dict[str, Callable[..., jax.Array]] = {
    'cross_entropy': cross_entropy,
    'binary_cross_entropy': binary_cross_entropy,
    'dice': dice,
    'bce_dice': bce_dice,
    'focal': focal,
    'tversky': tversky,
    'focal_tversky': focal_tversky,
}


def get(name: str, **options) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """The loss `name` with `options` (gamma, alpha, beta, eps, as the loss takes them)
  bound: a function (logits, labels, valid) -> [batch] float32.

  Raises ValueError for an unknown name (listing the valid names) or an option the
  loss does not take (naming it and the loss's options).
  """
  if name not in LOSSES:
    raise ValueError(f'Unknown loss {name!r}; valid: {list(LOSSES)}')
  fn = LOSSES[name]
  accepted = [p.name for p in inspect.signature(fn).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f'Unknown option(s) {unknown} for loss {name!r}; valid: {accepted}')
  return functools.partial(fn, **options) if options else fn
