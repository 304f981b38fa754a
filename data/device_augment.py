"""Training augmentation inside the jitted train step (config.augment.on_device): the
same crop, flip, Random Erasing and mixup/CutMix as data/transforms.py (which runs them
on the host, in NumPy), written in jax.numpy, so that the host only reads and batches.

Randomness comes from the step's key (train/step.py folds the step number into the run's
seed), so the augmented batches are a pure function of (seed, step, batch): a restarted
run sees the same ones. Each function takes one key and splits per-example keys where it
needs them; under the jit engine the batch is global, so the result does not depend on
the number of devices.
"""

import dataclasses

import jax
import jax.numpy as jnp

from data import transforms


def random_crop_with_padding(images: jax.Array, padding: int, key: jax.Array) -> jax.Array:
  """Zero-pads each side by `padding` and crops back at a random offset per image (He et
  al. 2016, Sec. 4.2). images: [b, h, w, c] -> same shape and dtype."""
  if padding <= 0:
    return images
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
  crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2. [b, h, w, c] -> same."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_erasing(images: jax.Array, key: jax.Array, probability: float = 0.5,
                   area_range: tuple[float, float] = (0.02, 0.4), min_aspect: float = 0.3,
                   max_value: float = 255.0, attempts: int = 10) -> jax.Array:
  """Random Erasing (Zhong et al. 2017, Alg. 1), as data.transforms.random_erasing: with
  `probability`, one rectangle of area ~ U(area_range) * h * w and aspect ratio ~
  U(min_aspect, 1 / min_aspect) (the first of `attempts` candidates that fits) is filled
  with uniform values in [0, max_value]. images: [b, h, w, c] float32 -> same."""
  b, h, w, _ = images.shape
  k_area, k_aspect, k_apply, k_top, k_left, k_noise = jax.random.split(key, 6)
  area = jax.random.uniform(k_area, (b, attempts), minval=area_range[0],
                            maxval=area_range[1]) * h * w
  aspect = jax.random.uniform(k_aspect, (b, attempts), minval=min_aspect, maxval=1 / min_aspect)
  eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
  first = jnp.argmax(fits, axis=1)
  eh, ew = (jnp.take_along_axis(a, first[:, None], axis=1)[:, 0] for a in (eh, ew))
  apply = fits.any(axis=1) & jax.random.bernoulli(k_apply, probability, (b,))
  top = (jax.random.uniform(k_top, (b,)) * (h - eh + 1)).astype(jnp.int32)
  left = (jax.random.uniform(k_left, (b,)) * (w - ew + 1)).astype(jnp.int32)
  ys, xs = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  inside = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
            & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None])
            & apply[:, None, None])
  noise = jax.random.uniform(k_noise, images.shape, images.dtype, 0.0, max_value)
  return jnp.where(inside[..., None], noise, images)


def mix(images: jax.Array, labels: jax.Array, key: jax.Array, mixup_alpha: float,
        cutmix_alpha: float) -> dict:
  """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019, Alg. A1) within the batch, as
  data.transforms.mix: one lambda ~ Beta(alpha, alpha) per batch, partners from a random
  permutation, CutMix's lambda recomputed from the box pasted; with both alphas > 0 each
  batch picks one of the two with probability 1/2.

  images: [b, h, w, c] float32, labels: [b] int32 -> {'image', 'label', 'label2': [b]
  int32 (the partner's), 'mix_ratio': [b] float32 (the weight of 'label')}.
  """
  b, h, w, _ = images.shape
  k_perm, k_pick, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
  perm = jax.random.permutation(k_perm, b)
  partners = images[perm]
  use_cutmix = jnp.asarray(cutmix_alpha > 0) & (
      (mixup_alpha <= 0) | jax.random.bernoulli(k_pick, 0.5))
  beta = lambda k, alpha: jax.random.beta(k, max(alpha, 1e-3), max(alpha, 1e-3))  # (unused
  lam_mixup, lam_cutmix = beta(k_mixup, mixup_alpha), beta(k_cutmix, cutmix_alpha)  # if 0)
  cut_h = (h * jnp.sqrt(1 - lam_cutmix)).astype(jnp.int32)
  cut_w = (w * jnp.sqrt(1 - lam_cutmix)).astype(jnp.int32)
  cy, cx = jax.random.randint(k_y, (), 0, h), jax.random.randint(k_x, (), 0, w)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
  ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
  cutmixed = jnp.where(box, partners, images)
  mixed = lam_mixup * images + (1 - lam_mixup) * partners
  lam = jnp.where(use_cutmix, 1.0 - (y1 - y0) * (x1 - x0) / (h * w), lam_mixup)
  return {'image': jnp.where(use_cutmix, cutmixed, mixed).astype(jnp.float32), 'label': labels,
          'label2': labels[perm].astype(jnp.int32),
          'mix_ratio': jnp.full((b,), lam, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class DeviceAugment(transforms.AugmentOptions):
  """The training augmentation of data.transforms.TrainAugment, on the device: crop, flip,
  erasing, mixup/CutMix, normalisation (fields: data.transforms.AugmentOptions)."""

  def __call__(self, batch: dict, key: jax.Array) -> dict:
    """batch {'image': [b, h, w, c] uint8 or float in [0, 255], 'label': [b] int} ->
    {'image': [b, h, w, c] float32 normalised, 'label': [b] int32, and with mixup/CutMix
    'label2', 'mix_ratio'}; other entries pass through."""
    k_crop, k_flip, k_erase, k_mix = jax.random.split(key, 4)
    images = random_crop_with_padding(batch['image'], self.crop_padding, k_crop)
    if self.flip:
      images = random_flip(images, k_flip)
    images = images.astype(jnp.float32)
    if self.random_erasing_prob > 0:
      images = random_erasing(images, k_erase, probability=self.random_erasing_prob)
    out = {**batch, 'label': batch['label'].astype(jnp.int32)}
    if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
      out.update(mix(images, out['label'], k_mix, self.mixup_alpha, self.cutmix_alpha))
      images = out['image']
    mean = jnp.asarray(self.mean, jnp.float32) * 255.0
    std = jnp.asarray(self.std, jnp.float32) * 255.0
    out['image'] = (images - mean) / std
    return out
