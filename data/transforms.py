"""Image augmentations, vectorised over a batch with NumPy (no per-example Python loop).

Every transform takes a batch and a `np.random.Generator`; Grain derives that
generator from the pipeline seed and the batch index, so the augmentation of a
given batch is the same on every run and after every resume.

  images: [batch, height, width, channels] uint8 before `normalize`, float32 after.

Datasets with images of varying size (ImageNet) are first brought to one size per
example, before batching: `random_resized_crop` for training, `resize_center_crop`
for evaluation (resampling by Pillow).
"""

import dataclasses
import math

import grain
import numpy as np
from PIL import Image


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (antialiased) resize of one [h, w, c] uint8 image to [height, width, c]."""
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
  return out.reshape(height, width, channels)


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        attempts: int = 10) -> np.ndarray:
  """The Inception crop (Szegedy et al. 2015, "Going Deeper with Convolutions", Sec. 6):
  a crop covering a uniform fraction `scale` of the image area with a log-uniform
  aspect ratio in `ratio`, resized to size x size. After `attempts` misses, the
  largest central crop with the aspect ratio clamped to `ratio`.

  image: [h, w, c] uint8 -> [size, size, c] uint8.
  """
  height, width = image.shape[:2]
  area = height * width
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return resize(image[top:top + h, left:left + w], size, size)
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return resize(image[top:top + h, left:left + w], size, size)


def resize_center_crop(image: np.ndarray, size: int, resize_size: int) -> np.ndarray:
  """The standard ImageNet eval view: resize the shorter side to `resize_size` (256),
  then take the central size x size (224) crop.

  image: [h, w, c] uint8 -> [size, size, c] uint8. Raises ValueError if size > resize_size.
  """
  if size > resize_size:
    raise ValueError(f'crop size {size} is larger than the resize size {resize_size}')
  height, width = image.shape[:2]
  factor = resize_size / min(height, width)
  h, w = max(size, round(height * factor)), max(size, round(width * factor))
  image = resize(image, h, w)
  top, left = (h - size) // 2, (w - size) // 2
  return image[top:top + size, left:left + size]


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(grain.transforms.RandomMap):
  """Per-example `random_resized_crop` of {'image', 'label'} (before batching)."""
  size: int
  scale: tuple = (0.08, 1.0)

  def random_map(self, example: dict, rng: np.random.Generator) -> dict:
    return {**example, 'image': random_resized_crop(example['image'], self.size, rng,
                                                    tuple(self.scale))}


@dataclasses.dataclass(frozen=True)
class ResizeCenterCrop(grain.transforms.Map):
  """Per-example `resize_center_crop` of {'image', 'label'} (before batching)."""
  size: int
  resize_size: int

  def map(self, example: dict) -> dict:
    return {**example, 'image': resize_center_crop(example['image'], self.size,
                                                   self.resize_size)}


def random_crop_with_padding(images: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
  """Zero-pads each side by `padding` pixels and crops back to the input size at a
  random offset per image (the CIFAR augmentation of He et al. 2016, Sec. 4.2).

  images: [b, h, w, c] -> [b, h, w, c], same dtype.
  """
  if padding <= 0:
    return images
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  top = rng.integers(0, 2 * padding + 1, size=b)
  left = rng.integers(0, 2 * padding + 1, size=b)
  rows = (top[:, None] + np.arange(h))[:, :, None]   # (b, h, 1)
  cols = (left[:, None] + np.arange(w))[:, None, :]  # (b, 1, w)
  return padded[np.arange(b)[:, None, None], rows, cols]


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Flips each image left-right with probability 1/2. [b, h, w, c] -> same."""
  flip = rng.random(images.shape[0]) < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_erasing(images: np.ndarray, rng: np.random.Generator, probability: float = 0.5,
                   area_range: tuple[float, float] = (0.02, 0.4), min_aspect: float = 0.3,
                   max_value: float = 255.0, attempts: int = 10) -> np.ndarray:
  """Random Erasing (Zhong et al. 2017, "Random Erasing Data Augmentation", Alg. 1).

  With `probability`, each image gets one rectangle of area S_e ~ U(area_range) * h * w
  and aspect ratio r_e ~ U(min_aspect, 1 / min_aspect) filled with uniform random values
  in [0, max_value]. Algorithm 1 draws a size and a corner and redraws both until the
  rectangle lies inside the image; here, as in the authors' code, torchvision and timm,
  a size is redrawn until it fits (the first of `attempts` candidates drawn at once;
  none fits: no erasing) and then placed uniformly where it fits. Large rectangles are
  thus accepted more often than under Algorithm 1 (mean erased fraction of a 32x32
  image at the defaults: 0.20 against 0.15 in a NumPy simulation of both).

  images: [b, h, w, c] float32 -> same.
  """
  b, h, w, c = images.shape
  area = rng.uniform(*area_range, size=(b, attempts)) * h * w
  aspect = rng.uniform(min_aspect, 1.0 / min_aspect, size=(b, attempts))
  eh = np.round(np.sqrt(area * aspect)).astype(np.int64)
  ew = np.round(np.sqrt(area / aspect)).astype(np.int64)
  fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
  first = np.argmax(fits, axis=1)
  pick = lambda a: a[np.arange(b), first]
  eh, ew = pick(eh), pick(ew)
  apply = fits.any(axis=1) & (rng.random(b) < probability)
  top = (rng.random(b) * (h - eh + 1)).astype(np.int64)
  left = (rng.random(b) * (w - ew + 1)).astype(np.int64)
  ys, xs = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
  inside = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
            & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]) & apply[:, None, None])
  noise = rng.uniform(0.0, max_value, size=images.shape).astype(images.dtype)
  return np.where(inside[..., None], noise, images)


def mix(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, mixup_alpha: float,
        cutmix_alpha: float) -> dict:
  """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) within the batch.

  One lambda ~ Beta(alpha, alpha) per batch; each image is mixed with the image at a
  random permutation of the batch. When both alphas are > 0 each batch picks one of the
  two with probability 1/2. CutMix pastes a box of area (1 - lambda) h w and recomputes
  lambda from the box actually pasted (Yun et al. 2019, Alg. A1).

  Returns {'image': [b, h, w, c] float32, 'label': [b], 'label2': [b] int32 (the partner's
  label), 'mix_ratio': [b] float32 (weight of 'label')}. The loss is
  mix_ratio * CE(label) + (1 - mix_ratio) * CE(label2).
  """
  b, h, w, _ = images.shape
  perm = rng.permutation(b)
  use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
  if use_cutmix:
    lam = rng.beta(cutmix_alpha, cutmix_alpha)
    cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = rng.integers(h), rng.integers(w)
    y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
    images = images.copy()
    images[:, y0:y1, x0:x1] = images[perm, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
  else:
    lam = rng.beta(mixup_alpha, mixup_alpha)
    images = lam * images + (1 - lam) * images[perm]
  return {'image': images.astype(np.float32), 'label': labels,
          'label2': labels[perm].astype(np.int32),
          'mix_ratio': np.full((b,), lam, np.float32)}


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """(images / 255 - mean) / std with per-channel `mean`, `std` in [0, 1] units.

  images: [b, h, w, c] in [0, 255] -> float32.
  """
  mean = np.asarray(mean, np.float32) * 255.0
  std = np.asarray(std, np.float32) * 255.0
  return ((images.astype(np.float32) - mean) / std).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """The fields of the image-classification training augmentation, shared by TrainAugment
  (host, NumPy) and data.device_augment.DeviceAugment (in the train step). They mirror
  `config.augment` (configs/common.py); mean / std are the dataset's, in [0, 1] units."""
  mean: tuple
  std: tuple
  crop_padding: int = 0
  flip: bool = False
  random_erasing_prob: float = 0.0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0


def augment_options(config) -> dict:
  """The AugmentOptions fields from config.augment and the dataset's mean / std."""
  aug = config.augment
  return dict(mean=tuple(config.data.mean), std=tuple(config.data.std),
              crop_padding=aug.crop_padding, flip=aug.flip,
              random_erasing_prob=aug.random_erasing_prob, mixup_alpha=aug.mixup_alpha,
              cutmix_alpha=aug.cutmix_alpha)


@dataclasses.dataclass(frozen=True)
class TrainAugment(AugmentOptions, grain.transforms.RandomMap):
  """The training augmentation of a batch: crop, flip, erasing, mixup/cutmix, normalise."""

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    images = random_crop_with_padding(batch['image'], self.crop_padding, rng)
    if self.flip:
      images = random_flip(images, rng)
    images = images.astype(np.float32)
    if self.random_erasing_prob > 0:
      images = random_erasing(images, rng, probability=self.random_erasing_prob)
    out = {'label': batch['label'].astype(np.int32)}
    if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
      out = mix(images, out['label'], rng, self.mixup_alpha, self.cutmix_alpha)
      images = out['image']
    out['image'] = normalize(images, self.mean, self.std)
    return out


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.transforms.Map):
  """Eval preprocessing of a batch: normalisation only."""
  mean: tuple
  std: tuple

  def map(self, batch: dict) -> dict:
    return {**batch, 'image': normalize(batch['image'], self.mean, self.std),
            'label': batch['label'].astype(np.int32)}
