"""Sequence-to-sequence data for the trainer: a text corpus, its tokenizers, and the
Grain pipelines that turn it into fixed-shape batches of token ids.

An example is {'inputs': [n] int32, 'targets': [m] int32}, each ending with </s>;
id 0 is padding, 1 </s>, 2 <s>, 3 <unk> in every vocabulary (data.g2p.SPECIALS; the
SentencePiece models of data.wmt use the same ids).

Training batches (fixed shapes, so one compilation):
  pack=False: every example padded to max_length: {'inputs', 'targets'}: [b, max_length].
  pack=True: examples packed first-fit into rows of max_length tokens (Grain's
    FirstFitPackIterDataset; the approach of flax examples/wmt and T5), with
    'inputs_segment_ids', 'inputs_positions', 'targets_segment_ids',
    'targets_positions' [b, max_length] int32 telling the model where each sequence
    starts; b counts rows, each holding several examples.
Examples longer than max_length (</s> included) are truncated (keeping </s> last) or
filtered, by config.data.length_policy; the count is logged.

Eval batches: every example of the eval split once, padded to max_length (longer
inputs truncated and counted), with 'mask' (0 on padding examples) and 'index' (the
example's position in the split), so the decoded outputs can be scored against the
references on the host.
"""

import dataclasses
import functools
from typing import Callable, Sequence

import grain
import grain.experimental
import numpy as np
from absl import logging

from data import g2p, pipeline

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
LENGTH_POLICIES = ('truncate', 'filter')


@dataclasses.dataclass
class EvalSet:
  """An eval split: its source texts and, for each, its reference target texts (>= 1)."""
  sources: Sequence[str]
  references: Sequence[Sequence[str]]


@dataclasses.dataclass
class TextCorpus:
  """A parallel text corpus with its tokenizers and metric.

  Attributes:
    train_pairs: random access (len, []) to (source text, target text) pairs.
    eval_sets: role ('validation', 'test') -> EvalSet of that split.
    encode_source, encode_target: text -> ids (ending with </s>; unknown -> <unk>).
    decode_target: ids -> text (stops at </s>).
    source_vocab_size, target_vocab_size: vocabulary sizes, specials included.
    score: (predicted texts, references) -> {metric name: value}.
  """
  train_pairs: Sequence
  eval_sets: dict
  encode_source: Callable[[str], list]
  encode_target: Callable[[str], list]
  decode_target: Callable[[Sequence[int]], str]
  source_vocab_size: int
  target_vocab_size: int
  score: Callable[[Sequence[str], Sequence[Sequence[str]]], dict]


def g2p_corpus(config) -> TextCorpus:
  """CMUdict grapheme-to-phoneme (data.g2p): spellings (lower-cased, as in CMUdict)
  -> ARPAbet phonemes separated by spaces; every pronunciation of a training word is a training pair, each eval word
  is scored against all its pronunciations (WER and PER in percent)."""
  lexicon = g2p.load_lexicon(keep_stress=config.data.keep_stress)
  train = g2p.split_lexicon(lexicon, config.data.train_split)
  graphemes, phonemes = g2p.vocabularies(train)

  def eval_set(split: str) -> EvalSet:
    words = g2p.split_lexicon(lexicon, split)
    return EvalSet(list(words), [[' '.join(p) for p in prons] for prons in words.values()])

  def score(predictions, references):
    result = g2p.wer_per([p.split() for p in predictions],
                         [[r.split() for r in refs] for refs in references])
    return {name: 100.0 * value for name, value in result.items()}

  return TextCorpus(
      train_pairs=[(word, ' '.join(pron)) for word, prons in train.items() for pron in prons],
      eval_sets={role: eval_set(split) for role, split in pipeline.eval_splits(config).items()},
      encode_source=lambda text: graphemes.encode(list(text.strip().lower())),
      encode_target=lambda text: phonemes.encode(text.split()),
      decode_target=lambda ids: ' '.join(phonemes.decode(ids)),
      source_vocab_size=len(graphemes), target_vocab_size=len(phonemes), score=score)


def build_corpus(config) -> TextCorpus:
  """The corpus of config.data.source: 'cmudict' (offline G2P) or 'tfds' (WMT14).

  Raises ValueError for an unknown source or dataset name.
  """
  if config.data.source == 'cmudict':
    return g2p_corpus(config)
  if config.data.source == 'tfds':
    from data import wmt  # pylint: disable=import-outside-toplevel  # sentencepiece, TFDS.
    return wmt.corpus(config)
  raise ValueError(f"Unknown seq2seq data.source {config.data.source!r}; valid: "
                   "['cmudict', 'tfds']")


class LengthPolicy:
  """Truncates or filters examples longer than `max_length` tokens and counts them
  (logged at the first one and at every power of two)."""

  def __init__(self, max_length: int, policy: str, what: str):
    if policy not in LENGTH_POLICIES:
      raise ValueError(f'Unknown data.length_policy {policy!r}; valid: {list(LENGTH_POLICIES)}')
    self.max_length, self.policy, self.what, self.count = max_length, policy, what, 0

  def _too_long(self, example: dict) -> bool:
    if max(len(v) for v in example.values()) <= self.max_length:
      return False
    self.count += 1
    if self.count & (self.count - 1) == 0:
      logging.warning('%d %s examples so far were longer than data.max_length=%d tokens '
                      '(</s> included) and were %s.', self.count, self.what, self.max_length,
                      'truncated' if self.policy == 'truncate' else 'filtered out')
    return True

  def keep(self, example: dict) -> bool:
    """Grain filter predicate (policy 'filter')."""
    return not self._too_long(example)

  def truncate(self, example: dict) -> dict:
    """Grain map (policy 'truncate'): longer sequences are cut to max_length, </s> last."""
    if not self._too_long(example):
      return example
    cut = lambda ids: ids if len(ids) <= self.max_length else np.append(
        ids[:self.max_length - 1], np.int32(EOS_ID))
    return {k: cut(v) for k, v in example.items()}


def pad_to(ids: np.ndarray, length: int) -> np.ndarray:
  """[n] -> [length] int32, zero (padding) filled; n must be <= length."""
  return np.concatenate([ids, np.zeros(length - len(ids), np.int32)]).astype(np.int32)


class Seq2SeqData:
  """What the trainer needs from a seq2seq dataset (the interface of pipeline.ImageData).

  Raises ValueError for bad config fields; the corpus' errors (missing data) propagate.
  """

  def __init__(self, config):
    data = config.data
    if data.max_length < 2:
      raise ValueError(f'data.max_length must be >= 2, got {data.max_length}')
    self.config = config
    self.max_length = data.max_length
    self.train_policy = LengthPolicy(data.max_length, data.length_policy, 'training')
    self.eval_policy = LengthPolicy(data.max_length, 'truncate', 'eval')
    self.corpus = build_corpus(config)
    self.eval_splits = pipeline.eval_splits(config)
    self.num_train_examples = len(self.corpus.train_pairs)
    sample = np.zeros((1, data.max_length), np.int32)
    self.spec = pipeline.DataSpec(
        model_kwargs={'source_vocab_size': self.corpus.source_vocab_size,
                      'target_vocab_size': self.corpus.target_vocab_size},
        init_args=(sample, sample))

  def _tokenize(self, pair) -> dict:
    source, target = pair
    return {'inputs': np.asarray(self.corpus.encode_source(source), np.int32),
            'targets': np.asarray(self.corpus.encode_target(target), np.int32)}

  def train_iterator(self, process_index: int = 0, process_count: int = 1):
    """An endless iterator of training batches for this process (module docstring),
    shuffled every epoch from config.seed; supports get_state()/set_state()."""
    c = self.config
    batch = pipeline.local_batch_size(c.batch_size, process_count)
    ds = grain.MapDataset.source(self.corpus.train_pairs)[process_index::process_count]
    ds = ds.shuffle(seed=c.seed).repeat().map(self._tokenize)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.data.num_threads,
                                              prefetch_buffer_size=c.data.prefetch_batches))
    if self.train_policy.policy == 'filter':
      ds = ds.filter(self.train_policy.keep)
    else:
      ds = ds.map(self.train_policy.truncate)
    if c.data.pack:
      length = {'inputs': self.max_length, 'targets': self.max_length}
      ds = grain.experimental.FirstFitPackIterDataset(
          ds, length_struct=length, num_packing_bins=batch, seed=c.seed, shuffle_bins=True)
    else:
      ds = ds.map(lambda ex: {k: pad_to(v, self.max_length) for k, v in ex.items()})
    ds = ds.batch(batch, drop_remainder=True)
    if c.data.num_workers > 0:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.data.num_workers))
    return iter(ds)

  def eval_example(self, role: str, index: int) -> dict:
    """Example `index` of eval set `role`: padded 'inputs'/'targets' (the first
    reference) and 'index'."""
    eval_set = self.corpus.eval_sets[role]
    example = self.eval_policy.truncate(self._tokenize(
        (eval_set.sources[index], eval_set.references[index][0])))
    example = {k: pad_to(v, self.max_length) for k, v in example.items()}
    return dict(example, index=np.int32(index))

  def eval_batches(self, role: str, process_index: int = 0, process_count: int = 1):
    """Padded batches covering this process's shard of eval set `role` ('validation'
    or 'test') once: 'inputs', 'targets' [b, max_length] int32, 'index' [b] int32,
    'mask' [b] float32."""
    c = self.config
    size = len(self.corpus.eval_sets[role].sources)
    ds = grain.MapDataset.range(size).map(functools.partial(self.eval_example, role))
    return pipeline.padded_batches(ds, c.eval_batch_size, c.data, process_index, process_count)

  def score(self, role: str, indices: np.ndarray, outputs: np.ndarray) -> dict:
    """Task metrics of decoded `outputs` [n, length] int32 for the examples `indices`
    [n] of eval set `role` (every example of the split exactly once, any order)."""
    eval_set = self.corpus.eval_sets[role]
    if sorted(indices.tolist()) != list(range(len(eval_set.sources))):
      raise ValueError('score() needs every eval example exactly once')
    predictions = [self.corpus.decode_target(ids) for ids in outputs]
    return self.corpus.score(predictions, [eval_set.references[i] for i in indices])

  def translate(self, texts: Sequence[str], decode_fn: Callable, batch_size: int) -> list[str]:
    """Source texts -> output texts with `decode_fn(inputs [batch_size, max_length]
    int32) -> [batch_size, length] int32`. Empty (or blank) inputs give '' without
    decoding; longer inputs are truncated to max_length tokens (logged)."""
    outputs = [''] * len(texts)
    todo = [i for i, t in enumerate(texts) if t.strip()]
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      rows = [pad_to(self.eval_policy.truncate(
          {'inputs': np.asarray(self.corpus.encode_source(texts[i]), np.int32)})['inputs'],
          self.max_length) for i in chunk]
      rows += [np.zeros(self.max_length, np.int32)] * (batch_size - len(rows))
      decoded = np.asarray(decode_fn(np.stack(rows)))
      for i, ids in zip(chunk, decoded):
        outputs[i] = self.corpus.decode_target(ids)
    return outputs
