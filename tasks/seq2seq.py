"""Sequence to sequence with an encoder-decoder: teacher-forced cross entropy, decoding
scored with WER/PER (G2P) or BLEU (translation) (a task plug-in, see tasks/__init__.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nets import decoding
from tasks import common, evaluators as evaluators_lib


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
class Seq2SeqTask(common.Task):
  """Sequence to sequence with an encoder-decoder model that has `encode`, `decode` and
  `init_cache` methods (nets.transformer.Transformer): teacher-forced, label-smoothed
  cross entropy over the non-padding target tokens; prediction by greedy (beam_size 1)
  or beam search with a key/value cache.

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
    targets = common.smoothed_targets(batch['targets'], logits.shape[-1], self.label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)

  def metrics(self, logits: jax.Array, batch) -> dict:
    """{'loss', 'nll', 'accuracy'} as (sum, count) over the weighted target tokens."""
    w = self.weights(batch)
    count = w.sum()
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                          batch['targets'])
    correct = jnp.argmax(logits, axis=-1) == batch['targets']
    return {'loss': common.metric((self.loss(logits, batch) * w).sum(), count),
            'nll': common.metric((nll * w).sum(), count),
            'accuracy': common.metric((correct * w).sum(), count)}

  def predict(self, model, variables, batch) -> jax.Array:
    """Decoded token ids [b, max_decode_length] int32 for batch['inputs']: the end
    token included, padding (0) after it; the best beam when beam_size > 1."""
    from data import seq2seq  # pylint: disable=import-outside-toplevel
    source = batch['inputs']
    b, k = source.shape[0], self.beam_size
    encoded = model.apply(variables, source, method='encode')
    # Decoding rows b * k (each input's k beams adjacent); the cache projects the
    # cross-attention keys and values of `encoded` once, for the b inputs.
    cache = model.init_cache(variables, encoded, source, self.max_decode_length, beam_size=k)

    def step_fn(tokens, cache):
      logits, cache = model.apply({**variables, **cache}, None, source, tokens,
                                  decode=True, mutable=['cache'], method='decode')
      # Never emit padding (id 0) or the start token: teacher forcing masks a padding
      # input out, decoding would attend to it, and neither is ever a training target.
      never = jnp.array([seq2seq.PAD_ID, self.bos_id])
      return logits[:, 0].at[:, never].set(decoding.NEG_INF), cache

    common_args = dict(max_length=self.max_decode_length, bos_id=self.bos_id, eos_id=self.eos_id)
    if k == 1:
      return decoding.greedy_search(step_fn, cache, batch_size=b, **common_args)
    sequences, _ = decoding.beam_search(step_fn, cache, batch_size=b, beam_size=k,
                                        alpha=self.alpha, **common_args)
    return sequences[:, 0]


def check(config):
  """The model built with placeholder vocabularies; checks the length policy, the beam
  size and that data/decode lengths fit the model's positions."""
  common.check_no_device_augment(config)
  from data import seq2seq  # pylint: disable=import-outside-toplevel
  model = common.build_model(config, source_vocab_size=8, target_vocab_size=8)
  if config.data.length_policy not in seq2seq.LENGTH_POLICIES:
    raise ValueError(f'config.data.length_policy={config.data.length_policy!r} is not valid; '
                     f'choose one of {list(seq2seq.LENGTH_POLICIES)}')
  if config.decode.beam_size < 1:
    raise ValueError(f'config.decode.beam_size must be >= 1, got {config.decode.beam_size}')
  for group, field in (('data', 'max_length'), ('decode', 'max_length')):
    value = config[group][field]
    if not 2 <= value <= model.max_length:
      raise ValueError(f'config.{group}.{field}={value} must be in [2, model.max_length='
                       f'{model.max_length}] (raise config.model.max_length for longer ones)')
  return model


def build_data(config):
  """data.seq2seq.Seq2SeqData: CMUdict G2P or WMT14 through TFDS."""
  from data import seq2seq  # pylint: disable=import-outside-toplevel
  return seq2seq.Seq2SeqData(config)


def build_task(config, spec) -> Seq2SeqTask:
  del spec
  d = config.decode
  return Seq2SeqTask(config.label_smoothing, beam_size=d.beam_size, alpha=d.alpha,
                     max_decode_length=d.max_length)


def evaluators(config, data, predict_fn, engine) -> list:
  """Decodes every eval example (config.decode) and scores the outputs over the whole
  split: WER/PER (G2P) or BLEU (translation), data.score."""
  del config
  return [evaluators_lib.GatherEvaluator(predict_fn, engine, data.score)]


BENCH_VOCAB_SIZE = 64  # Vocabulary of configs without data.vocab_size (G2P: ~30-70 symbols).


def bench_inputs(config, image_size, batch_size, rng):
  """(DataSpec, host batch) of random token rows for train.bench: every row one sequence
  of config.data.max_length tokens (no padding, so tokens/s = examples/s x max_length),
  ids in [3, vocab) with vocab = config.data.vocab_size (shared, e.g. WMT's 32,000), else
  BENCH_VOCAB_SIZE. image_size is ignored."""
  from data import pipeline  # pylint: disable=import-outside-toplevel
  del image_size
  vocab = config.data.get('vocab_size', BENCH_VOCAB_SIZE)
  shape = (batch_size, config.data.max_length)
  batch = {'inputs': rng.integers(3, vocab, shape).astype(np.int32),
           'targets': rng.integers(3, vocab, shape).astype(np.int32)}
  sample = np.zeros((1, config.data.max_length), np.int32)
  return pipeline.DataSpec({'source_vocab_size': vocab, 'target_vocab_size': vocab},
                           (sample, sample)), batch


PREDICT_INPUTS = ('text',)


def predict_cli(config, data, predict_batch, inputs: dict) -> None:
  """Prints each --text and its output, tab-separated."""
  texts = inputs.get('text', [])
  outputs = data.translate(texts, lambda ids: predict_batch({'inputs': ids}),
                           config.eval_batch_size)
  for text, output in zip(texts, outputs):
    print(f'{text}\t{output}')
