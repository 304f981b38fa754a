"""Grain input pipelines for image classification, and what every dataset gives the
trainer (`DataSpec`, the exact padded eval batching).

Training: source -> this process's shard -> shuffle (reshuffled every epoch) ->
repeat -> batch -> vectorised augmentation -> prefetching iterator. Everything
random derives from `config.seed`, and the iterator's position is part of every
checkpoint (`iterator.get_state()`), so a resumed run sees exactly the batches the
uninterrupted run would have seen.

Evaluation: every example of the split exactly once; the last partial batch is
padded and carries `mask` = 0 on the padding, so metrics are exact.
"""

import dataclasses
import math
from typing import Iterator

import grain
import numpy as np

from data import sources, transforms


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the model needs to know about the data.

  model_kwargs: constructor arguments from the data ({'num_classes': 10}, or the
    vocabulary sizes). init_args: numpy inputs of batch 1 for `model.init`.
  """
  model_kwargs: dict
  init_args: tuple


def eval_splits(config) -> dict[str, str]:
  """{'validation': config.data.validation_split (when set), 'test': config.data.test_split}:
  the validation split is evaluated periodically and selects the checkpoint that is
  evaluated once on the test split at the end (train.trainer).

  Raises ValueError when an eval split shares examples with the training split (as far
  as `sources.splits_overlap` can tell from the split names)."""
  splits = {'validation': config.data.validation_split} if config.data.validation_split else {}
  splits = dict(splits, test=config.data.test_split)
  train = config.data.train_split
  for role, split in splits.items():
    if sources.splits_overlap(split, train):
      raise ValueError(f'config.data.{role}_split={split!r} overlaps config.data.train_split='
                       f"{train!r}; hold it out of training, e.g. train_split='train[:90%]' "
                       "with validation_split='train[90%:]'")
  return splits


class ImageData:
  """Image classification data for the trainer: the config's sources and pipelines.

  Raises what `sources.build` raises (unknown or missing datasets).
  """

  def __init__(self, config):
    self.config = config
    self.train_source = sources.build(config, config.data.train_split)
    self.eval_splits = eval_splits(config)
    self.eval_sources = {role: sources.build(config, split)
                         for role, split in self.eval_splits.items()}
    self.num_train_examples = len(self.train_source)
    num_classes = sources.DATASETS.get(config.data.name, {}).get('num_classes',
                                                               config.num_classes)
    self.spec = image_spec(num_classes, train_image_shape(config, self.train_source))

  def train_iterator(self, process_index: int = 0, process_count: int = 1):
    """See `train_iterator`."""
    return train_iterator(self.config, self.train_source, process_index=process_index,
                          process_count=process_count)

  def eval_batches(self, role: str, process_index: int = 0, process_count: int = 1):
    """See `eval_batches`; `role` is 'validation' or 'test' (a key of eval_splits)."""
    return eval_batches(self.config, self.eval_sources[role], process_index=process_index,
                        process_count=process_count)


def image_spec(num_classes: int, image_shape: tuple) -> DataSpec:
  """The DataSpec of images of `image_shape` (h, w, c) in `num_classes` classes."""
  return DataSpec(model_kwargs={'num_classes': num_classes},
                  init_args=(np.zeros((1,) + tuple(image_shape), np.float32),))


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """The per-process share of the global batch. Raises ValueError if it does not divide."""
  if global_batch_size % process_count:
    raise ValueError(f'batch_size ({global_batch_size}) must be divisible by the number of '
                     f'processes ({process_count})')
  return global_batch_size // process_count


def train_image_shape(config, source) -> tuple:
  """(height, width, channels) of the training batches' images."""
  shape = tuple(source[0]['image'].shape)
  size = config.augment.random_resized_crop_size
  return (size, size, shape[-1]) if size > 0 else shape


def _image_and_label(batch: dict) -> dict:
  """The batch as read, for on-device augmentation (a module function: picklable)."""
  return {'image': batch['image'], 'label': batch['label'].astype(np.int32)}


def process_seed(seed: int, process_index: int) -> int:
  """The seed of one process's random augmentation stream: `seed` itself on process 0
  (so a single-host run draws what it always drew), another one derived from (seed,
  process_index) on every other process. Grain draws an element's random numbers from
  (seed, its index in this process's shard); with one seed for all, every host would
  crop, flip, erase and mix its k-th example exactly as the others do."""
  if process_index == 0:
    return seed
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def train_iterator(config, source, *, process_index: int = 0, process_count: int = 1):
  """An endless iterator of augmented training batches for this process.

  Batches: {'image': [local_batch, h, w, c] float32, 'label': [local_batch] int32,
  and with mixup/cutmix 'label2' int32, 'mix_ratio' float32}; with
  config.augment.on_device, {'image': uint8 as read, 'label'}, augmented in the train
  step (data.device_augment). The iterator supports get_state()/set_state() (Grain),
  which checkpoints store.
  """
  batch = local_batch_size(config.batch_size, process_count)
  aug = config.augment
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.shuffle(seed=config.seed).repeat()
  if aug.random_resized_crop_size > 0:
    ds = ds.random_map(transforms.RandomResizedCrop(aug.random_resized_crop_size,
                                                    tuple(aug.random_resized_crop_scale)),
                       seed=process_seed(config.seed + 2, process_index))
  ds = ds.batch(batch, drop_remainder=True)
  if aug.get('on_device', False):  # The train step augments and normalises (uint8 here).
    ds = ds.map(_image_and_label)
  else:
    ds = ds.random_map(transforms.TrainAugment(**transforms.augment_options(config)),
                       seed=process_seed(config.seed + 1, process_index))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.num_threads,
                                            prefetch_buffer_size=config.data.prefetch_batches))
  if config.data.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return iter(ds)


def num_eval_batches(num_examples: int, global_batch_size: int, process_count: int) -> int:
  """Batches each process runs so that all processes run the same number."""
  per_process = math.ceil(num_examples / process_count)
  return math.ceil(per_process / local_batch_size(global_batch_size, process_count))


def eval_batches(config, source, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Yields padded eval batches covering this process's shard of `source` once.

  Batches: {'image': [local_batch, h, w, c] float32, 'label': [local_batch] int32,
  'mask': [local_batch] float32 (1 for real examples, 0 for padding)}.
  """
  ds = grain.MapDataset.source(source)
  if config.data.eval_crop_size > 0:
    ds = ds.map(transforms.ResizeCenterCrop(config.data.eval_crop_size,
                                            config.data.eval_resize_size))
  batches = padded_batches(ds, config.eval_batch_size, config.data, process_index,
                           process_count)
  normalise = transforms.EvalPreprocess(tuple(config.data.mean), tuple(config.data.std))
  for batch in batches:
    yield normalise.map(batch)


def padded_batches(ds: grain.MapDataset, global_batch_size: int, data_config,
                   process_index: int, process_count: int) -> Iterator[dict]:
  """Batches of this process's shard ds[process_index::process_count] of the whole eval
  split `ds` (its examples as the batches hold them), each padded to the local batch
  size with zeros and a float32 'mask' (0 on padding); processes with shorter shards
  add all-padding batches so every process runs the same number (an empty shard, with
  more processes than examples, only those)."""
  batch = local_batch_size(global_batch_size, process_count)
  total = num_eval_batches(len(ds), global_batch_size, process_count)
  shard = ds[process_index::process_count].batch(batch).to_iter_dataset(grain.ReadOptions(
      num_threads=data_config.num_threads, prefetch_buffer_size=data_config.prefetch_batches))
  template = None
  count = 0
  for element in shard:
    template = element
    yield _pad(element, batch, len(next(iter(element.values()))))
    count += 1
  if count < total and template is None:  # Shapes and dtypes of the padding rows.
    template = ds[:1].batch(1)[0]
  for _ in range(total - count):  # Shards shorter than the others: all-padding batches.
    yield _pad({k: v[:0] for k, v in template.items()}, batch, 0)


def _pad(element: dict, batch: int, n: int) -> dict:
  out = {k: np.concatenate([v, np.zeros((batch - n,) + v.shape[1:], v.dtype)])
         for k, v in element.items()}
  out['mask'] = (np.arange(batch) < n).astype(np.float32)
  return out
