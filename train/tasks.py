"""Tasks: what the generic engine needs to know about a problem.

A Task says how to run the model on a batch, the per-example loss, the example
weights, and the metrics. Metrics are (sum, count) pairs, summed over devices and
steps and divided on the host, so padded eval batches and masked tokens give
exact averages (the convention of flax examples/wmt and scenic).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax


def smoothed_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  """One-hot targets with label smoothing (Szegedy et al. 2016, "Rethinking the
  Inception Architecture", Sec. 7): (1 - eps) * one_hot + eps / num_classes.

  labels: [...] int -> [..., num_classes] float32. With 10 classes and eps = 0.1:
  0.91 for the true class, 0.01 elsewhere.
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def metric(total: jax.Array, count: jax.Array) -> jax.Array:
  """A (sum, count) metric as one float32 [2] array."""
  return jnp.stack([jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32)])


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """Image classification: softmax cross entropy, top-1 and top-5 accuracy.

  Batches: {'image': [b, h, w, c] float32, 'label': [b] int32, optional 'mask': [b]
  (eval padding), optional 'label2': [b] int32 and 'mix_ratio': [b] float32 (mixup/cutmix).}
  """
  num_classes: int
  label_smoothing: float = 0.0

  def apply(self, model, variables, batch, *, train: bool, rngs=None, mutable=False):
    """Runs the model; returns logits [b, num_classes] (and the updated collections
    when `mutable` is a non-empty list)."""
    return model.apply(variables, batch['image'], train=train, rngs=rngs, mutable=mutable)

  def weights(self, batch) -> jax.Array:
    """[b] float32: 1 for real examples, 0 for padding."""
    return batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))

  def loss(self, logits: jax.Array, batch) -> jax.Array:
    """Per-example cross entropy [b] float32 against smoothed (and mixed) targets."""
    targets = smoothed_targets(batch['label'], self.num_classes, self.label_smoothing)
    if 'label2' in batch:
      ratio = batch['mix_ratio'][:, None]
      targets = ratio * targets + (1 - ratio) * smoothed_targets(
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
    return {'loss': metric((self.loss(logits, batch) * w).sum(), count),
            'top1': metric((correct1 * w).sum(), count),
            'top5': metric((correct5 * w).sum(), count)}

  def predict(self, logits: jax.Array) -> jax.Array:
    """Predicted class [b] int32."""
    return jnp.argmax(logits, axis=-1)
