"""Semantic segmentation: per-pixel classes, deep supervision, losses selected by config,
mIoU from a confusion matrix summed over the whole eval split (a task plug-in, see
tasks/__init__.py).

Models (nets/unet.py) return a tuple of head logits, each [b, h, w, num_classes]:
one head for U-Net, or UNet++ with deep supervision one per node X^{0,1..L} (Zhou et
al. 2018, Sec. 2 "Deep supervision"). Training minimises the mean of the heads'
losses; inference uses the last head or the mean of the heads' probabilities
(the paper's "accurate mode" averages all heads, its "fast mode" picks one), and a
UNet++ can be pruned to a level L1..L4 at inference (config.inference.level).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tasks import common, confusion, dense_losses
from tasks import evaluators as evaluators_lib

INFERENCE_HEADS = ('last', 'mean')
# Config fields (config.loss.*) that become each loss's keyword options.
LOSS_OPTIONS = {
    'cross_entropy': {},
    'binary_cross_entropy': {},
    'dice': {'eps': 'dice_eps'},
    'bce_dice': {'eps': 'dice_eps'},
    'focal': {'gamma': 'focal_gamma'},
    'tversky': {'alpha': 'tversky_alpha', 'beta': 'tversky_beta', 'eps': 'dice_eps'},
    'focal_tversky': {'alpha': 'tversky_alpha', 'beta': 'tversky_beta',
                      'gamma': 'focal_tversky_gamma', 'eps': 'dice_eps'},
}


@dataclasses.dataclass(frozen=True)
class SegmentationTask(common.Task):
  """Per-pixel classification with one or several (deeply supervised) heads.

  Batches: {'image': [b, h, w, c] float32, 'label': [b, h, w] int32 class ids or
  `ignore_label`, optional 'mask': [b] float32 (eval padding)}.

  loss_fn(logits [b, h, w, C], labels, valid [b, h, w]) -> [b] float32 (a
  tasks.dense_losses loss); the per-image loss is the mean over the heads.
  inference_head: 'last' (the deepest head) or 'mean' (mean of the heads' softmax
  probabilities). level: 0 for the whole network, k in 1..depth for the pruned
  UNet++ L^k (only its sub-network is computed). flip: horizontal-flip test-time
  augmentation in `predict` (see there).
  """
  num_classes: int
  loss_fn: object
  ignore_label: int = 255
  inference_head: str = 'last'
  level: int = 0
  flip: bool = False

  def apply(self, model, variables, batch, *, train: bool, rngs=None, mutable=False, level=None):
    """Head logits stacked: [heads, b, h, w, num_classes] float32 (and the updated
    collections when `mutable` is a non-empty list). Training runs the whole network;
    evaluation runs the task's `level` unless `level` says otherwise, so the eval loss and
    accuracy describe the network that `predict` (and the mIoU) uses."""
    if level is None and not train:
      level = self.level
    kwargs = {'level': level} if level else {}
    out = model.apply(variables, batch['image'], train=train, rngs=rngs, mutable=mutable,
                      **kwargs)
    heads, state = out if mutable else (out, None)
    logits = jnp.stack([h.astype(jnp.float32) for h in heads])
    return (logits, state) if mutable else logits

  def weights(self, batch) -> jax.Array:
    """[b] float32: 1 for real images, 0 for padding (pixels: `valid`)."""
    return batch.get('mask', jnp.ones(batch['label'].shape[:1], jnp.float32))

  def valid(self, batch) -> jax.Array:
    """[b, h, w] float32: 1 on pixels that count (not the ignore label, not padding)."""
    return (batch['label'] != self.ignore_label).astype(jnp.float32) * self.weights(batch)[
        :, None, None]

  def loss(self, logits: jax.Array, batch) -> jax.Array:
    """Per-image loss [b] float32: the mean over the heads of the config's loss."""
    valid = self.valid(batch)
    return jnp.mean(jnp.stack([self.loss_fn(head, batch['label'], valid) for head in logits]),
                    axis=0)

  def combine(self, logits: jax.Array) -> jax.Array:
    """[heads, b, h, w, C] -> class probabilities [b, h, w, C] of the inference head(s)."""
    if self.inference_head == 'mean':
      return jax.nn.softmax(logits, axis=-1).mean(axis=0)
    return jax.nn.softmax(logits[-1], axis=-1)

  def metrics(self, logits: jax.Array, batch) -> dict:
    """{'loss'} per image and 'accuracy' per valid pixel (of the inference head), as
    (sum, count). The split's mIoU comes from the evaluator."""
    w = self.weights(batch)
    valid = self.valid(batch)
    correct = (jnp.argmax(self.combine(logits), axis=-1) == batch['label']) * valid
    return {'loss': common.metric((self.loss(logits, batch) * w).sum(), w.sum()),
            'accuracy': common.metric(correct.sum(), valid.sum())}

  def predict(self, model, variables, batch) -> jax.Array:
    """Predicted class per pixel [b, h, w] int32 (pruned to `level` when > 0).

    With `flip`, the class probabilities are the mean of the image's and those of its
    mirror image, mirrored back (test-time augmentation as in Simonyan & Zisserman
    2015, Sec. 3.2: soft-max posteriors of the original and flipped images averaged),
    which makes the prediction exactly equivariant to horizontal flips, for twice the
    forward passes. The eval loss and accuracy stay those of the image alone.
    """
    probs = self.combine(self.apply(model, variables, batch, train=False))
    if self.flip:
      mirror = self.combine(self.apply(model, variables, common.mirrored(batch), train=False))
      probs = (probs + jnp.flip(mirror, axis=2)) / 2
    return jnp.argmax(probs, axis=-1).astype(jnp.int32)


def _loss(config):
  name = config.loss.name
  if name not in LOSS_OPTIONS:
    raise ValueError(f'config.loss.name={name!r} is not valid; choose one of '
                     f'{list(LOSS_OPTIONS)}')
  options = {option: config.loss[field] for option, field in LOSS_OPTIONS[name].items()}
  return dense_losses.get(name, **options)


def check(config):
  """Checks the model, loss and inference fields (valid choices listed on error);
  returns the model built with a placeholder class count."""
  common.check_no_device_augment(config)
  model = common.build_model(config, num_classes=2)
  _loss(config)
  if config.inference.head not in INFERENCE_HEADS:
    raise ValueError(f'config.inference.head={config.inference.head!r} is not valid; choose '
                     f'one of {list(INFERENCE_HEADS)}')
  level = config.inference.level
  if level:
    _check_level(model, config.model.name, level)
  return model


def _check_level(model, name: str, level: int) -> None:
  """Pruned inference at UNet++ level `level` (config.inference.level) is possible."""
  depth = getattr(model, 'depth', None)
  if not getattr(model, 'prunable', False):
    raise ValueError(f'config.inference.level={level}: model {name!r} cannot be '
                     'pruned (a UNet++, unetpp, can); use 0')
  if not 1 <= level <= depth:
    raise ValueError(f'config.inference.level={level} must be 0 (full network) or in '
                     f'[1, {depth}] (model.depth)')
  if level < depth and not model.deep_supervision:
    raise ValueError(f'config.inference.level={level}: pruned inference below model.depth '
                     'needs model.deep_supervision=True (no head is trained on X^{0,'
                     f'{level}}} without it); use 0')


def build_data(config):
  """data.segmentation.SegmentationData: Fashion-MNIST scenes, nuclei tiles or TFDS pets."""
  from data import segmentation  # pylint: disable=import-outside-toplevel
  return segmentation.SegmentationData(config)


def build_task(config, spec) -> SegmentationTask:
  return SegmentationTask(spec.model_kwargs['num_classes'], _loss(config),
                          ignore_label=config.data.ignore_label,
                          inference_head=config.inference.head, level=config.inference.level,
                          flip=config.inference.flip)


def evaluators(config, data, predict_fn, engine) -> list:
  """The confusion matrix of the predictions summed over every valid pixel of the split
  (on the devices) -> mIoU, per-class IoU and Dice, pixel accuracy (tasks.confusion)."""
  num_classes, ignore = data.spec.model_kwargs['num_classes'], config.data.ignore_label

  def batch_sums(predictions, batch):
    weights = (batch['label'] != ignore) * batch['mask'][:, None, None]
    return confusion.confusion_matrix(batch['label'], predictions, weights, num_classes)

  names = [name.replace(' ', '_') for name in data.class_names]  # Valid TensorBoard tags.
  return [evaluators_lib.SumEvaluator(
      predict_fn, engine, batch_sums, lambda matrix: confusion.segmentation_metrics(matrix, names))]


def bench_inputs(config, image_size, batch_size, rng):
  """(DataSpec, host batch) of random images and labels for train.bench, of the data's
  training size (or side `image_size`)."""
  from data import pipeline  # pylint: disable=import-outside-toplevel
  spec = build_data(config).spec
  h, w, c = spec.init_args[0].shape[1:]
  if image_size:
    h = w = image_size
  num_classes = spec.model_kwargs['num_classes']
  batch = {'image': rng.normal(size=(batch_size, h, w, c)).astype(np.float32),
           'label': rng.integers(0, num_classes, (batch_size, h, w)).astype(np.int32)}
  return pipeline.DataSpec(spec.model_kwargs, (np.zeros((1, h, w, c), np.float32),)), batch


PREDICT_INPUTS = ('image', 'out')


def predict_cli(config, data, predict_batch, inputs: dict) -> None:
  """Writes, for each --image (resized to the training images' size), a PNG of the image
  with the predicted classes overlaid and a legend (--out: a file for one image, else a folder; default <image>_pred.png)."""
  from tasks import overlay  # pylint: disable=import-outside-toplevel
  h, w, c = data.spec.init_args[0].shape[1:]
  for path in inputs.get('image', []):
    image = overlay.read_image(path, (h, w), c)
    normalised = (image.astype(np.float32) / 255.0 - np.asarray(config.data.mean)) / np.asarray(
        config.data.std)
    batch = {'image': np.zeros((config.eval_batch_size, h, w, c), np.float32),
             'label': np.zeros((config.eval_batch_size, h, w), np.int32)}
    batch['image'][0] = normalised
    classes = predict_batch(batch)[0]
    out = overlay.output_path(path, inputs.get('out'), len(inputs['image']))
    overlay.save_overlay(image, classes, data.class_names, out)
    print(f'{path}\t{out}')
