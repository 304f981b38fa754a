"""Object-detection data: sources, box-aware augmentation and the Grain pipelines of the
trainer.

An example (what a source's `[i]` returns, data.detection_sources): {'image': [h, w, c]
uint8, 'boxes': [n, 4] float32 xyxy pixel-edge coordinates, 'classes': [n] int32,
optional 'difficult': [n] bool}; n may be 0.

Training (per example, deterministic per step; data.box_augment):
  check -> leave out 'difficult' boxes (VOC difficult, COCO crowd: not trained on, as in
  darknet and ultralytics; ignored by the evaluation) -> letterbox to image_size ->
  Mosaic with probability augment.mosaic_prob (the example and three others of this
  process's shard, drawn by the example's own random numbers) -> random scale /
  translate / crop (augment.scale_range, augment.translate) -> flip -> colour jitter ->
  cap at data.max_boxes -> pad to max_boxes; then batch and normalise. Boxes that lose
  most of their area to a crop are dropped; every dropped box (crop, max_boxes) is
  counted in the batch's 'dropped' field, which the task logs as the train metric
  'dropped_boxes' (per image).
Evaluation: letterbox to image_size, no augmentation; the ground truth for scoring stays
in the original image's pixels (`ground_truth`), and detections are mapped back to them.

Batches:
  train: {'image': [local_batch, S, S, c] float32 (normalised with data.mean/std),
          'boxes': [local_batch, max_boxes, 4] float32 input pixels, 'classes':
          [local_batch, max_boxes] int32, 'box_mask': [local_batch, max_boxes] float32,
          'dropped': [local_batch] float32}.
  eval:  the same plus 'mask' [local_batch] float32 and 'index' [local_batch] int32
         (the example's index in its split), padded by data.pipeline.padded_batches.

Bad boxes (x1 < x0, y1 < y0, non-finite, a class outside [0, num_classes)) raise a
ValueError naming the split and the example's index.

Config fields read: config.data.{source, name, dir, image_size, max_boxes, mean, std,
num_threads, prefetch_batches, num_workers, train_split, validation_split, test_split}
(and the sources' own, data.detection_sources); config.augment.{flip, scale_range,
translate, mosaic_prob, brightness, contrast, saturation}; config.seed, batch_size,
eval_batch_size.
"""

import dataclasses
from typing import Any, Callable, Iterator

import grain
import numpy as np

from data import box_augment, detection_sources, pipeline, transforms


def letterboxed(example: dict, size: int) -> tuple[dict, dict]:
  """The example letterboxed to size x size (fill 0) and the letterbox info."""
  return box_augment.letterbox(example, size, fill=0)


def checked_example(source, index: int, num_classes: int, split: str, size: int) -> dict:
  """source[index], its boxes checked (ValueError naming the split and index), letterboxed
  to size x size, without its difficult (VOC) or crowd (COCO) boxes: the training targets
  and the eval loss leave them out, and the AP evaluator, which reads them from the source
  (`DetectionData.ground_truth`), ignores them."""
  example = source[index]
  box_augment.check_boxes(example, num_classes, f'split {split!r} example {index}')
  return box_augment.drop_difficult(letterboxed(example, size)[0])


@dataclasses.dataclass(frozen=True)
class TrainAugment(grain.transforms.RandomMap):
  """Index -> the training example, checked and augmented (see the module docstring).
  Mosaic draws its three other examples from this process's shard of `source`
  (indices process_index + k * process_count)."""
  source: Any
  process_index: int
  process_count: int
  num_classes: int
  split: str
  image_size: int
  max_boxes: int
  flip: bool
  scale_range: tuple
  translate: float
  mosaic_prob: float
  jitter: tuple  # (brightness, contrast, saturation)

  def _example(self, index: int) -> dict:
    return checked_example(self.source, index, self.num_classes, self.split, self.image_size)

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    size, dropped = self.image_size, 0
    example = self._example(index)
    if self.mosaic_prob > 0 and rng.random() < self.mosaic_prob:
      shard_size = len(range(self.process_index, len(self.source), self.process_count))
      others = [self._example(self.process_index + self.process_count * int(k))
                for k in rng.integers(0, shard_size, 3)]
      example, n = box_augment.mosaic([example] + others, rng, (size, size))
      dropped += n
    if tuple(self.scale_range) != (1.0, 1.0) or self.translate > 0:
      example, n = box_augment.random_affine(example, rng, scale_range=tuple(self.scale_range),
                                             translate=self.translate, out_size=(size, size))
      dropped += n
    if self.flip:
      example = box_augment.random_flip(example, rng)
    if any(self.jitter):
      brightness, contrast, saturation = self.jitter
      example = {**example, 'image': box_augment.color_jitter(
          example['image'], rng, brightness=brightness, contrast=contrast,
          saturation=saturation)}
    return finish(example, self.max_boxes, dropped)


def finish(example: dict, max_boxes: int, dropped: int = 0) -> dict:
  """Caps the boxes at max_boxes (counting the rest) and pads them: {'image', 'boxes'
  [max_boxes, 4], 'classes' [max_boxes], 'box_mask' [max_boxes], 'dropped' float32}."""
  example, n = box_augment.cap_boxes(example, max_boxes)
  boxes, classes, box_mask = box_augment.pad_boxes(example['boxes'], example['classes'],
                                                   max_boxes)
  return {'image': example['image'], 'boxes': boxes, 'classes': classes, 'box_mask': box_mask,
          'dropped': np.float32(dropped + n)}


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
  mean: tuple
  std: tuple

  def map(self, batch: dict) -> dict:
    return {**batch, 'image': transforms.normalize(batch['image'], self.mean, self.std)}


@dataclasses.dataclass(frozen=True)
class EvalExample(grain.transforms.Map):
  """Index -> the letterboxed, padded example with its 'index' (no augmentation)."""
  source: Any
  num_classes: int
  split: str
  image_size: int
  max_boxes: int

  def map(self, index: int) -> dict:
    example = checked_example(self.source, index, self.num_classes, self.split,
                              self.image_size)
    return {**finish(example, self.max_boxes), 'index': np.int32(index)}


def _augment_options(config) -> dict:
  aug = config.augment
  return dict(flip=aug.flip, scale_range=tuple(aug.scale_range), translate=aug.translate,
              mosaic_prob=aug.mosaic_prob, jitter=(aug.brightness, aug.contrast,
                                                   aug.saturation))


def train_iterator(config, source, split: str, num_classes: int, *, process_index: int = 0,
                   process_count: int = 1):
  """An endless, checkpointable iterator of augmented training batches of this process:
  shard of indices -> shuffle (config.seed) -> repeat -> TrainAugment (seed + 1) -> batch ->
  normalise, as data.pipeline.train_iterator. get_state()/set_state() resume it exactly.
  """
  data = config.data
  augment = TrainAugment(source, process_index, process_count, num_classes, split,
                         data.image_size, data.max_boxes, **_augment_options(config))
  ds = grain.MapDataset.range(len(source))[process_index::process_count]
  ds = ds.shuffle(seed=config.seed).repeat().random_map(
      augment, seed=pipeline.process_seed(config.seed + 1, process_index))
  ds = ds.batch(pipeline.local_batch_size(config.batch_size, process_count),
                drop_remainder=True).map(Normalize(tuple(data.mean), tuple(data.std)))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.num_threads,
                                            prefetch_buffer_size=data.prefetch_batches))
  if data.get('num_workers', 0) > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  return iter(ds)


def eval_batches(config, source, split: str, num_classes: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Padded eval batches covering this process's shard of `source` once."""
  data = config.data
  ds = grain.MapDataset.range(len(source)).map(
      EvalExample(source, num_classes, split, data.image_size, data.max_boxes))
  normalize = Normalize(tuple(data.mean), tuple(data.std))
  for batch in pipeline.padded_batches(ds, config.eval_batch_size, data, process_index,
                                       process_count):
    yield normalize.map(batch)


class DetectionData:
  """Detection data for the trainer, with the interface of data.pipeline.ImageData.

  Attributes:
    eval_splits: {'validation': split (if set), 'test': split}.
    num_train_examples: examples in the training split (all processes).
    spec: DataSpec: model_kwargs {'num_classes', 'num_channels', 'num_anchors'}, init_args
      ([1, S, S, c] float32 zeros,).
    class_names: names of classes 0..num_classes - 1.
    difficult_overlap: how the evaluation measures overlap with the ground truth's
      'difficult' boxes (tasks.coco_map.evaluate): 'iod' for COCO's crowd boxes, 'iou'
      (VOC's rule) otherwise.
  Raises ValueError for an image_size that is not a positive multiple of 32, what
  detection_sources.build_source / class_names and pipeline.eval_splits raise.
  """

  def __init__(self, config):
    data = config.data
    if data.image_size <= 0 or data.image_size % 32:
      raise ValueError(f'config.data.image_size={data.image_size} must be a positive multiple '
                       f'of 32 (the YOLOv3 total stride)')
    self.config = config
    self.class_names = list(detection_sources.class_names(config))
    self.difficult_overlap = detection_sources.difficult_overlap(config)
    self.eval_splits = pipeline.eval_splits(config)
    self.train_source = detection_sources.build_source(config, data.train_split)
    self.eval_sources = {role: detection_sources.build_source(config, split)
                         for role, split in self.eval_splits.items()}
    self.num_train_examples = len(self.train_source)
    channels = self.train_source[0]['image'].shape[-1]
    # The model's anchors per scale follow the config's anchors (3 scales).
    self.spec = pipeline.DataSpec(
        {'num_classes': len(self.class_names), 'num_channels': channels,
         'num_anchors': len(config.anchors) // 3},
        (np.zeros((1, data.image_size, data.image_size, channels), np.float32),))

  def train_iterator(self, process_index: int = 0, process_count: int = 1):
    return train_iterator(self.config, self.train_source, self.config.data.train_split,
                          len(self.class_names), process_index=process_index,
                          process_count=process_count)

  def eval_batches(self, role: str, process_index: int = 0, process_count: int = 1):
    return eval_batches(self.config, self.eval_sources[role], self.eval_splits[role],
                        len(self.class_names), process_index=process_index,
                        process_count=process_count)

  def ground_truth(self, role: str, index: int) -> tuple[dict, Callable]:
    """Example `index` of split `role`: ({'boxes' [n, 4] original pixels, 'classes' [n],
    'difficult' [n] bool}, a function mapping [m, 4] boxes in input pixels back to the
    original image's pixels)."""
    example = self.eval_sources[role][index]
    h, w = example['image'].shape[:2]
    info = box_augment.letterbox_info(h, w, self.config.data.image_size)  # No resize.
    n = len(example['classes'])
    truth = {'boxes': example['boxes'], 'classes': example['classes'],
             'difficult': example.get('difficult', np.zeros(n, bool))}
    return truth, lambda boxes: box_augment.unletterbox_boxes(boxes, info)


def training_box_sizes(config, max_examples: int = 0) -> np.ndarray:
  """Widths and heights [n, 2] float32, in input pixels (after the letterbox), of the
  boxes of the first `max_examples` (0: all) training examples, without the difficult
  (VOC) and crowd (COCO) boxes that training leaves out: the input of the k-means
  anchors (data.anchors)."""
  source = detection_sources.build_source(config, config.data.train_split)
  count = len(source) if max_examples <= 0 else min(max_examples, len(source))
  sizes = [np.zeros((0, 2), np.float32)]
  for i in range(count):
    boxes = box_augment.drop_difficult(letterboxed(source[i], config.data.image_size)[0])['boxes']
    sizes.append(boxes[:, 2:] - boxes[:, :2])
  return np.concatenate(sizes).astype(np.float32)


def image_batch(config, data: DetectionData, path: str) -> tuple[np.ndarray, dict, Callable]:
  """An image file -> (the image [h, w, c] uint8, an eval batch holding it letterboxed
  in row 0, a function mapping boxes in input pixels back to the image's pixels)."""
  from tasks import overlay  # pylint: disable=import-outside-toplevel
  channels = data.spec.init_args[0].shape[-1]
  image = overlay.read_image(path, None, channels)
  example = {'image': image, 'boxes': np.zeros((0, 4), np.float32),
             'classes': np.zeros(0, np.int32)}
  boxed, info = letterboxed(example, config.data.image_size)
  row = finish(boxed, config.data.max_boxes)
  batch = {k: np.repeat(np.asarray(v)[None], config.eval_batch_size, axis=0)
           for k, v in row.items()}
  batch = Normalize(tuple(config.data.mean), tuple(config.data.std)).map(batch)
  return image, batch, lambda boxes: box_augment.unletterbox_boxes(boxes, info)
