"""Image classification: softmax cross entropy, top-1/top-5 accuracy (a task plug-in,
see tasks/__init__.py)."""

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import common


@dataclasses.dataclass(frozen=True)
class ClassificationTask(common.Task):
  """Image classification: softmax cross entropy, top-1 and top-5 accuracy.

  Batches: {'image': [b, h, w, c] float32, 'label': [b] int32, optional 'mask': [b]
  (eval padding), optional 'label2': [b] int32 and 'mix_ratio': [b] float32 (mixup/cutmix).}
  With device_augment (config.augment.on_device), training batches arrive as read,
  {'image': [b, h, w, c] uint8, 'label'}, and `augment` makes them the above.
  """
  num_classes: int
  label_smoothing: float = 0.0
  device_augment: Optional[Callable[[dict, jax.Array], dict]] = None  # DeviceAugment

  def augment(self, batch: dict, rng: jax.Array) -> dict:
    """The training batch after the on-device augmentation (identity without one)."""
    return batch if self.device_augment is None else self.device_augment(batch, rng)

  def apply(self, model, variables, batch, *, train: bool, rngs=None, mutable=False):
    """Runs the model; returns logits [b, num_classes] (and the updated collections
    when `mutable` is a non-empty list)."""
    return model.apply(variables, batch['image'], train=train, rngs=rngs, mutable=mutable)

  def weights(self, batch) -> jax.Array:
    """[b] float32: 1 for real examples, 0 for padding."""
    return batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))

  def loss(self, logits: jax.Array, batch) -> jax.Array:
    """Per-example cross entropy [b] float32 against smoothed (and mixed) targets."""
    targets = common.smoothed_targets(batch['label'], self.num_classes, self.label_smoothing)
    if 'label2' in batch:
      ratio = batch['mix_ratio'][:, None]
      targets = ratio * targets + (1 - ratio) * common.smoothed_targets(
          batch['label2'], self.num_classes, self.label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)

  def metrics(self, logits: jax.Array, batch) -> dict:
    """{'loss', 'top1', 'top5'} as (sum, count) over the weighted examples."""
    w = self.weights(batch)
    count = w.sum()
    labels = batch['label']
    top5 = jax.lax.top_k(logits, min(5, self.num_classes))[1]
    correct1 = top5[:, 0] == labels
    correct5 = (top5 == labels[:, None]).any(axis=-1)
    return {'loss': common.metric((self.loss(logits, batch) * w).sum(), count),
            'top1': common.metric((correct1 * w).sum(), count),
            'top5': common.metric((correct5 * w).sum(), count)}

  def predict(self, model, variables, batch) -> jax.Array:
    """Predicted class [b] int32."""
    return jnp.argmax(self.apply(model, variables, batch, train=False), axis=-1)


def check(config):
  """The model built with a placeholder class count (unknown names/fields raise)."""
  return common.build_model(config, num_classes=10)


def build_data(config):
  """data.pipeline.ImageData: TFDS or local Fashion-MNIST images and labels."""
  from data import pipeline  # pylint: disable=import-outside-toplevel
  return pipeline.ImageData(config)


def build_task(config, spec) -> ClassificationTask:
  return ClassificationTask(spec.model_kwargs['num_classes'], config.label_smoothing,
                            device_augment=device_augment(config))


def device_augment(config):
  """data.device_augment.DeviceAugment from config.augment when augment.on_device, else
  None (the host pipeline augments)."""
  from data import device_augment as lib, transforms  # pylint: disable=import-outside-toplevel
  if not config.augment.get('on_device', False):
    return None
  return lib.DeviceAugment(**transforms.augment_options(config))


def evaluators(config, data, predict_fn, engine) -> list:
  """None: top-1/top-5 are exact (sum, count) averages of the eval step."""
  del config, data, predict_fn, engine
  return []


def bench_inputs(config, image_size: int, batch_size: int, rng: np.random.Generator):
  """(DataSpec, host batch) of random images for train.bench: side `image_size`, else the
  config's model.image_size, random-resized-crop size or dataset size (224 if it varies)."""
  from data import pipeline, sources  # pylint: disable=import-outside-toplevel
  dataset = sources.DATASETS.get(config.data.name, {})
  size = (image_size or config.model.get('image_size', 0)
          or config.augment.random_resized_crop_size or (dataset.get('image_shape') or (224,))[0])
  shape = (size, size, config.model.get('num_channels', 3))
  num_classes = dataset.get('num_classes', config.num_classes)
  image = (rng.integers(0, 256, (batch_size,) + shape).astype(np.uint8)  # As read.
           if config.augment.get('on_device', False)
           else rng.normal(size=(batch_size,) + shape).astype(np.float32))
  batch = {'image': image, 'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}
  return pipeline.image_spec(num_classes, shape), batch


PREDICT_INPUTS = ('image',)


def predict_cli(config, data, predict_batch, inputs: dict) -> None:
  """Prints the predicted class of each --image, seen as evaluation sees its images: the
  shorter side resized to data.eval_resize_size and the central data.eval_crop_size
  crop when eval_crop_size > 0 (the ImageNet view), else resized to the model's input
  size (datasets stored at it); then normalised as the eval batches are."""
  from data import transforms  # pylint: disable=import-outside-toplevel
  from tasks import overlay  # pylint: disable=import-outside-toplevel
  h, w, c = data.spec.init_args[0].shape[1:]
  for path in inputs.get('image', []):
    if config.data.eval_crop_size > 0:
      image = transforms.resize_center_crop(overlay.read_image(path, None, c),
                                            config.data.eval_crop_size,
                                            config.data.eval_resize_size)
    else:
      image = overlay.read_image(path, (h, w), c)
    batch = np.zeros((config.eval_batch_size, h, w, c), np.float32)
    batch[0] = transforms.normalize(image[None], config.data.mean, config.data.std)[0]
    print(f'{path}\t{int(predict_batch({"image": batch})[0])}')
