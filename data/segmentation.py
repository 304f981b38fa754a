"""Semantic segmentation data: sources, paired (image + label) augmentation, and the
Grain pipelines of the trainer.

An example (what a source's `[i]` returns): {'image': [h, w, c] uint8, 'label': [h, w]
uint8 or int32}, the label a class id per pixel in [0, num_classes) or
config.data.ignore_label (pixels that count in no loss or metric).

Batches:
  train: {'image': [local_batch, h, w, c] float32 (normalised with config.data.mean/std),
          'label': [local_batch, h, w] int32}.
  eval:  the same plus 'mask': [local_batch] float32 (1 real example, 0 padding), padded
         by data.pipeline.padded_batches so every example of the split is seen once over
         all processes.

Sources (config.data.source):
  'fashion_mnist_scenes': data.scenes, generated from local Fashion-MNIST (offline).
  'tfds': Oxford-IIIT Pet (Parkhi et al. 2012, "Cats and Dogs", CVPR) through
          tfds.data_source; the trimap becomes 0 = background, 1 = pet, 2 = border.
  'stardist_nuclei': data.nuclei, tiles of one fluorescence-microscopy image (offline).

Every spatial transform moves the label with the image: images are resampled bilinearly
(Pillow), labels by nearest neighbour, both with pixel-centre-aligned coordinates, so a
label pixel stays on the image pixel it labels. Labels are checked per batch (vectorised):
a value that is neither a class nor the ignore label raises ValueError.

Config fields read (config.data.*): source, name, dir, tfds_data_dir, train_split,
validation_split, test_split, num_classes, ignore_label, image_size, num_train_scenes,
num_eval_scenes, canvas_size (and optionally min_items, max_items, item_size), mean,
std, num_threads, prefetch_batches, num_workers (optional, 0); config.augment.flip,
config.augment.scale_range; config.seed, batch_size, eval_batch_size.
"""

import dataclasses
import functools
from typing import Iterator

import grain
import numpy as np

from data import pipeline, scenes, sources, transforms

SOURCES = ('fashion_mnist_scenes', 'tfds', 'stardist_nuclei')
PET_CLASS_NAMES = ('background', 'pet', 'border')
# Oxford-IIIT Pet trimap value -> class id: 1 = pet -> 1, 2 = background -> 0,
# 3 = border (the uncertain outline) -> 2.
_TRIMAP_TO_CLASS = {1: 1, 2: 0, 3: 2}
_TRIMAP_TABLE = np.full(256, 255, np.uint8)  # Lookup table of the above; others -> 255.
_TRIMAP_TABLE[list(_TRIMAP_TO_CLASS)] = list(_TRIMAP_TO_CLASS.values())
TFDS_DATASETS = {'oxford_iiit_pet': PET_CLASS_NAMES}  # TFDS name -> class names.


# Paired transforms of one example or a batch.

def resize_label(label: np.ndarray, height: int, width: int) -> np.ndarray:
  """Nearest-neighbour resize of [h, w] (any integer dtype) to [height, width]; output
  pixel (i, j) takes the input pixel whose area contains its centre, the same
  pixel-centre alignment as Pillow's bilinear image resize."""
  h, w = label.shape
  rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
  return label[rows[:, None], cols[None, :]]


def resize_pair(image: np.ndarray, label: np.ndarray, height: int,
                width: int) -> tuple[np.ndarray, np.ndarray]:
  """Resizes image [h, w, c] uint8 (bilinear) and label [h, w] (nearest) to
  [height, width, c] and [height, width]."""
  if image.shape[:2] == (height, width) and label.shape == (height, width):
    return image, label
  return transforms.resize(image, height, width), resize_label(label, height, width)


def random_scale_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                      scale_range: tuple[float, float],
                      ignore_label: int) -> tuple[np.ndarray, np.ndarray]:
  """Random scale, then random crop or pad back to the input size: the scale
  augmentation of DeepLabv3 (Chen et al. 2017, "Rethinking Atrous Convolution for
  Semantic Image Segmentation", Sec. 4.1: factors 0.5 to 2.0, with left-right flips).

  A factor s ~ U(scale_range) resizes the pair to round(s h) x round(s w); a random
  h x w window of it is kept where it is larger, and where it is smaller it is placed at
  a random offset on an h x w canvas padded with 0 (image) and `ignore_label` (label).

  image: [h, w, c] uint8, label: [h, w] int -> same shapes, label int32.
  """
  h, w = label.shape
  s = rng.uniform(*scale_range)
  sh, sw = max(1, round(h * s)), max(1, round(w * s))
  image, label = resize_pair(image, label.astype(np.int32), sh, sw)
  out_image = np.zeros((h, w, image.shape[-1]), image.dtype)
  out_label = np.full((h, w), ignore_label, np.int32)
  top, left = int(rng.integers(0, abs(sh - h) + 1)), int(rng.integers(0, abs(sw - w) + 1))
  # Larger: read a window at the offset; smaller: write the whole at the offset.
  src_y, dst_y = (slice(top, top + h), slice(0, h)) if sh >= h else (slice(0, sh),
                                                                      slice(top, top + sh))
  src_x, dst_x = (slice(left, left + w), slice(0, w)) if sw >= w else (slice(0, sw),
                                                                       slice(left, left + sw))
  out_image[dst_y, dst_x] = image[src_y, src_x]
  out_label[dst_y, dst_x] = label[src_y, src_x]
  return out_image, out_label


def random_flip_pair(images: np.ndarray, labels: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Flips each (image, label) left-right with probability 1/2, vectorised.

  images: [b, h, w, c], labels: [b, h, w] -> same.
  """
  flip = rng.random(images.shape[0]) < 0.5
  return (np.where(flip[:, None, None, None], images[:, :, ::-1], images),
          np.where(flip[:, None, None], labels[:, :, ::-1], labels))


def check_labels(labels: np.ndarray, num_classes: int, ignore_label: int, split: str) -> None:
  """Raises ValueError when a label is outside [0, num_classes) and not `ignore_label`.

  labels: [...] integers. One min/max reduction when all labels are classes.
  """
  if labels.size and labels.min() >= 0 and labels.max() < num_classes:
    return
  bad = (labels < 0) | (labels >= num_classes)
  bad &= labels != ignore_label
  if bad.any():
    values = np.unique(labels[bad])
    raise ValueError(f'Split {split!r}: label value(s) {values[:10].tolist()} outside the '
                     f'valid range [0, {num_classes}) and not the ignore label '
                     f'({ignore_label}); check config.data.num_classes / ignore_label')


@dataclasses.dataclass(frozen=True)
class CheckExample(grain.transforms.Map):
  """Raises ValueError unless an example's image is [h, w, c] and its label [h, w]."""
  split: str

  def map(self, example: dict) -> dict:
    image, label = example['image'], example['label']
    if image.ndim != 3 or label.shape != image.shape[:2]:
      raise ValueError(f'Split {self.split!r}: image of shape {image.shape} and label of '
                       f'shape {label.shape}; need [h, w, c] and [h, w] of the same h, w')
    return example


@dataclasses.dataclass(frozen=True)
class TrainAugment(grain.transforms.RandomMap):
  """Training augmentation of a batch: label check, random scale + crop (per example),
  flip (vectorised), normalisation. Fields mirror config.data / config.augment."""
  mean: tuple
  std: tuple
  num_classes: int
  ignore_label: int
  split: str
  flip: bool = False
  scale_range: tuple = (1.0, 1.0)

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    images, labels = batch['image'], batch['label']
    check_labels(labels, self.num_classes, self.ignore_label, self.split)
    labels = labels.astype(np.int32)
    if tuple(self.scale_range) != (1.0, 1.0):
      pairs = [random_scale_crop(image, label, rng, tuple(self.scale_range), self.ignore_label)
               for image, label in zip(images, labels)]
      images, labels = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if self.flip:
      images, labels = random_flip_pair(images, labels, rng)
    return {'image': transforms.normalize(images, self.mean, self.std), 'label': labels}


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.transforms.Map):
  """Eval preprocessing of a padded batch: label check and normalisation."""
  mean: tuple
  std: tuple
  num_classes: int
  ignore_label: int
  split: str

  def map(self, batch: dict) -> dict:
    check_labels(batch['label'], self.num_classes, self.ignore_label, self.split)
    return {**batch, 'image': transforms.normalize(batch['image'], self.mean, self.std),
            'label': batch['label'].astype(np.int32)}


# Sources.

def pet_example(record, size: int) -> dict:
  """An Oxford-IIIT Pet TFDS record -> {'image': [size, size, 3] uint8, 'label': [size,
  size] uint8}.

  record['image']: [h, w, 3] uint8; record['segmentation_mask']: [h, w, 1] uint8 trimap,
  1 = pet, 2 = background, 3 = border, mapped to 1, 0, 2. Other values (none in the real
  data; TFDS mock data has arbitrary ones) become 255, which check_labels rejects unless
  it is the ignore label. Image (bilinear) and label (nearest) are resized to size x size
  independently of each other, so both cover the same scene whatever their sizes.
  """
  image = np.asarray(record['image'])
  trimap = np.asarray(record['segmentation_mask'])
  trimap = trimap[..., 0] if trimap.ndim == 3 else trimap
  image, label = resize_pair(image, _TRIMAP_TABLE[trimap], size, size)
  return {'image': image, 'label': label}


def build_source(config, split: str):
  """The random-access source of `split` for config.data.source (see SOURCES).

  Raises:
    ValueError: unknown source or TFDS dataset, an empty split.
    FileNotFoundError / sources.DatasetNotFoundError: data not on disk (with instructions).
  """
  data = config.data
  if data.source == 'fashion_mnist_scenes':
    source = scenes.load_split(config, split)
  elif data.source == 'tfds':
    if data.name not in TFDS_DATASETS:
      raise ValueError(f'Unknown TFDS segmentation dataset {data.name!r}; valid: '
                       f'{sorted(TFDS_DATASETS)}')
    source = sources.TfdsSource(data.name, split, data.get('tfds_data_dir') or None,
                                convert=functools.partial(pet_example, size=data.image_size))
  elif data.source == 'stardist_nuclei':
    from data import nuclei  # pylint: disable=import-outside-toplevel
    source = nuclei.NucleiSource(data.get('dir') or nuclei.DEFAULT_DIR, split, data.image_size)
  else:
    raise ValueError(f'Unknown data.source {data.source!r} for segmentation; valid: '
                     f'{list(SOURCES)}')
  if not len(source):
    raise ValueError(f'Split {split!r} of {data.name} has no examples')
  return source


def class_names(config) -> tuple[str, ...]:
  """The names of classes 0..num_classes - 1 of config.data.

  Raises ValueError when config.data.num_classes is not the dataset's number of classes,
  or for an unknown source.
  """
  data = config.data
  if data.source == 'fashion_mnist_scenes':
    names = scenes.CLASS_NAMES
  elif data.source == 'tfds':
    if data.name not in TFDS_DATASETS:
      raise ValueError(f'Unknown TFDS segmentation dataset {data.name!r}; valid: '
                       f'{sorted(TFDS_DATASETS)}')
    names = TFDS_DATASETS[data.name]
  elif data.source == 'stardist_nuclei':
    from data import nuclei  # pylint: disable=import-outside-toplevel
    names = nuclei.CLASS_NAMES
  else:
    raise ValueError(f'Unknown data.source {data.source!r} for segmentation; valid: '
                     f'{list(SOURCES)}')
  if data.num_classes != len(names):
    raise ValueError(f'config.data.num_classes={data.num_classes}, but {data.source} '
                     f'{data.name} has {len(names)} classes: {list(names)}')
  return tuple(names)


# Pipelines.

def train_iterator(config, source, split: str, *, process_index: int = 0,
                   process_count: int = 1):
  """An endless, checkpointable iterator of augmented training batches of this process:
  shard -> shuffle (config.seed) -> repeat -> batch -> TrainAugment (seed + 1), as
  data.pipeline.train_iterator. get_state()/set_state() resume it exactly.

  Batches: {'image': [local_batch, h, w, c] float32, 'label': [local_batch, h, w] int32}.
  Raises ValueError (when iterated) for bad labels or image/label shapes.
  """
  data, aug = config.data, config.augment
  batch = pipeline.local_batch_size(config.batch_size, process_count)
  augment = TrainAugment(mean=tuple(data.mean), std=tuple(data.std),
                         num_classes=data.num_classes, ignore_label=data.ignore_label,
                         split=split, flip=aug.flip, scale_range=tuple(aug.scale_range))
  ds = grain.MapDataset.source(source)[process_index::process_count].map(CheckExample(split))
  ds = ds.shuffle(seed=config.seed).repeat()
  ds = ds.batch(batch, drop_remainder=True).random_map(
      augment, seed=pipeline.process_seed(config.seed + 1, process_index))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.num_threads,
                                            prefetch_buffer_size=data.prefetch_batches))
  if data.get('num_workers', 0) > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  return iter(ds)


def eval_batches(config, source, split: str, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Padded eval batches covering this process's shard of `source` once (padding by
  data.pipeline.padded_batches; every process yields the same number of batches).

  Batches: {'image': [local_batch, h, w, c] float32, 'label': [local_batch, h, w] int32,
  'mask': [local_batch] float32}. Raises ValueError for bad labels or shapes.
  """
  data = config.data
  ds = grain.MapDataset.source(source).map(CheckExample(split))
  preprocess = EvalPreprocess(mean=tuple(data.mean), std=tuple(data.std),
                              num_classes=data.num_classes, ignore_label=data.ignore_label,
                              split=split)
  for batch in pipeline.padded_batches(ds, config.eval_batch_size, data, process_index,
                                       process_count):
    yield preprocess.map(batch)


class SegmentationData:
  """Segmentation data for the trainer, with the interface of data.pipeline.ImageData.

  Attributes:
    eval_splits: {'validation': split (if set), 'test': split} (pipeline.eval_splits).
    num_train_examples: examples in this run's training split (all processes).
    spec: DataSpec, model_kwargs {'num_classes'}, init_args ([1, h, w, c] float32 zeros,).
    class_names: names of classes 0..num_classes - 1.
  Raises what build_source, class_names and pipeline.eval_splits raise.
  """

  def __init__(self, config):
    self.config = config
    self.class_names = list(class_names(config))
    self.eval_splits = pipeline.eval_splits(config)
    self.train_source = build_source(config, config.data.train_split)
    self.eval_sources = {role: build_source(config, split)
                         for role, split in self.eval_splits.items()}
    self.num_train_examples = len(self.train_source)
    self.spec = pipeline.image_spec(config.data.num_classes,
                                    tuple(self.train_source[0]['image'].shape))

  def train_iterator(self, process_index: int = 0, process_count: int = 1):
    """See `train_iterator`."""
    return train_iterator(self.config, self.train_source, self.config.data.train_split,
                          process_index=process_index, process_count=process_count)

  def eval_batches(self, role: str, process_index: int = 0, process_count: int = 1):
    """See `eval_batches`; `role` is a key of eval_splits ('validation' or 'test')."""
    return eval_batches(self.config, self.eval_sources[role], self.eval_splits[role],
                        process_index=process_index, process_count=process_count)
