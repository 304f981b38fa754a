"""Pieces every task module shares: (sum, count) metrics, label smoothing, and building a
model with the sizes a task's data will give it."""

import jax
import jax.numpy as jnp

import nets


class Task:
  """What train/step.py asks of every task object besides apply, loss, weights, metrics
  and predict (documented on tasks.classification.ClassificationTask)."""

  def augment(self, batch: dict, rng: jax.Array) -> dict:
    """The training batch as the train step uses it, given the step's key; the identity
    unless the task augments on the device (classification: config.augment.on_device)."""
    del rng
    return batch


def mirrored(batch: dict) -> dict:
  """`batch` with its 'image' [b, h, w, c] flipped left to right (the other entries as
  they are): the second view of horizontal-flip test-time augmentation."""
  return dict(batch, image=jnp.flip(batch['image'], axis=2))


def check_no_device_augment(config) -> None:
  """Raises ValueError when config.augment.on_device is set for a task whose data
  pipeline augments on the host (only classification augments in the train step)."""
  if config.get('augment') and config.augment.get('on_device', False):
    raise ValueError(f'config.augment.on_device=True is supported for '
                     f"task='classification' only, not {config.task!r}; set it to False")


def metric(total: jax.Array, count: jax.Array) -> jax.Array:
  """A (sum, count) metric as one float32 [2] array; the host divides after summing
  over devices and batches, so padded eval batches and masked tokens give exact means."""
  return jnp.stack([jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32)])


def smoothed_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  """One-hot targets with label smoothing (Szegedy et al. 2016, "Rethinking the
  Inception Architecture", Sec. 7): (1 - eps) * one_hot + eps / num_classes.

  labels: [...] int -> [..., num_classes] float32. With 10 classes and eps = 0.1:
  0.91 for the true class, 0.01 elsewhere.
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def build_model(config, dtype=jnp.float32, **data_kwargs):
  """The (uninitialised) model `config.model.name` with the data-derived `data_kwargs`
  (e.g. num_classes) and the config's model fields on top.

  Raises ValueError for an unknown model name or field (nets.build)."""
  return nets.build(config.model.name, dtype=dtype, **data_kwargs,
                    **{k: v for k, v in config.model.items() if k != 'name'})
