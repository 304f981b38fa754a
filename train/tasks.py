"""Tasks: what the generic engine needs to know about a problem.

A Task says how to run the model on a batch, the per-example (or per-token) loss, the
weights of the examples (tokens), the metrics, and how to predict. Metrics are
(sum, count) pairs, summed over devices and steps and divided on the host, so padded
eval batches and masked tokens give exact averages (the convention of flax
examples/wmt and scenic).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from nets import decoding, transformer

TASKS = ('classification', 'seq2seq')


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

  def predict(self, model, variables, batch) -> jax.Array:
    """Predicted class [b] int32."""
    return jnp.argmax(self.apply(model, variables, batch, train=False), axis=-1)


def shift_right(targets: jax.Array, positions: jax.Array | None, bos_id: int) -> jax.Array:
  """Decoder inputs for teacher forcing: <s> then the targets up to the last but one.

  targets: [b, length] int32 (0 = padding); positions: [b, length] int32, the position
  of each token in its sequence (packed rows hold several) or None (one per row). A
  sequence's first position gets <s>, padding stays 0.
  """
  shifted = jnp.pad(targets, ((0, 0), (1, 0)), constant_values=bos_id)[:, :-1]
  if positions is not None:
    shifted = jnp.where(positions == 0, bos_id, shifted)
  return jnp.where(targets > 0, shifted, 0)


@dataclasses.dataclass(frozen=True)
class Seq2SeqTask:
  """Sequence to sequence with an encoder-decoder (nets.transformer.Transformer):
  teacher-forced, label-smoothed cross entropy over the non-padding target tokens;
  prediction by greedy (beam_size 1) or beam search with a key/value cache.

  Batches (data.seq2seq): {'inputs': [b, n] int32, 'targets': [b, m] int32 (ending
  with </s>, 0 = padding), optional 'inputs_segment_ids', 'inputs_positions',
  'targets_segment_ids', 'targets_positions' [b, .] int32 (packed rows), optional
  'mask': [b] float32 (eval padding)}.

  Metrics per target token: 'loss' (label-smoothed, what is minimised), 'nll'
  (unsmoothed; perplexity = exp(nll)) and 'accuracy' (teacher-forced next token).
  """
  label_smoothing: float = 0.0
  beam_size: int = 1
  alpha: float = 0.6
  max_decode_length: int = 64
  bos_id: int = 2
  eos_id: int = 1

  def apply(self, model, variables, batch, *, train: bool, rngs=None, mutable=False):
    """Teacher-forced logits [b, m, vocab] float32 (and updated collections when
    `mutable` is a non-empty list)."""
    positions = batch.get('targets_positions')
    target_in = shift_right(batch['targets'], positions, self.bos_id)
    return model.apply(variables, batch['inputs'], target_in,
                       source_segment_ids=batch.get('inputs_segment_ids'),
                       target_segment_ids=batch.get('targets_segment_ids'),
                       source_position_ids=batch.get('inputs_positions'),
                       target_position_ids=positions, train=train, rngs=rngs, mutable=mutable)

  def weights(self, batch) -> jax.Array:
    """[b, m] float32: 1 on real target tokens of real examples, 0 on padding."""
    weights = (batch['targets'] > 0).astype(jnp.float32)
    return weights * batch['mask'][:, None] if 'mask' in batch else weights

  def loss(self, logits: jax.Array, batch) -> jax.Array:
    """Per-token cross entropy [b, m] float32 against label-smoothed targets."""
    targets = smoothed_targets(batch['targets'], logits.shape[-1], self.label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)

  def metrics(self, logits: jax.Array, batch) -> dict:
    """{'loss', 'nll', 'accuracy'} as (sum, count) over the weighted target tokens."""
    w = self.weights(batch)
    count = w.sum()
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                          batch['targets'])
    correct = jnp.argmax(logits, axis=-1) == batch['targets']
    return {'loss': metric((self.loss(logits, batch) * w).sum(), count),
            'nll': metric((nll * w).sum(), count),
            'accuracy': metric((correct * w).sum(), count)}

  def predict(self, model, variables, batch) -> jax.Array:
    """Decoded token ids [b, max_decode_length] int32 for batch['inputs']: the end
    token included, padding (0) after it; the best beam when beam_size > 1."""
    source = batch['inputs']
    b, k = source.shape[0], self.beam_size
    encoded = model.apply(variables, source, method='encode')
    if k > 1:  # Every input repeated beam_size times: rows b * k.
      encoded, source = jnp.repeat(encoded, k, axis=0), jnp.repeat(source, k, axis=0)
    cache = transformer.init_cache(model, source, self.max_decode_length)

    def step_fn(tokens, cache):
      logits, cache = model.apply({**variables, **cache}, encoded, source, tokens,
                                  decode=True, mutable=['cache'], method='decode')
      return logits[:, 0], cache

    common = dict(max_length=self.max_decode_length, bos_id=self.bos_id, eos_id=self.eos_id)
    if k == 1:
      return decoding.greedy_search(step_fn, cache, batch_size=b, **common)
    sequences, _ = decoding.beam_search(step_fn, cache, batch_size=b, beam_size=k,
                                        alpha=self.alpha, **common)
    return sequences[:, 0]


def build(config, spec):
  """The task of `config.task` ('classification' or 'seq2seq') for data `spec`
  (data.pipeline.DataSpec). Raises ValueError for other names."""
  if config.task == 'classification':
    return ClassificationTask(spec.model_kwargs['num_classes'], config.label_smoothing)
  if config.task == 'seq2seq':
    d = config.decode
    return Seq2SeqTask(config.label_smoothing, beam_size=d.beam_size, alpha=d.alpha,
                       max_decode_length=d.max_length)
  raise ValueError(f'Unknown task {config.task!r}; valid: {list(TASKS)}')
