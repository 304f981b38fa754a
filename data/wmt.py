"""WMT14 English-German through TFDS (`wmt14_translate/de-en`), the translation task of
Vaswani et al. 2017 (Sec. 5.1): newstest2014 ('test') is the usual test set.

Tokenization: one SentencePiece model (Kudo & Richardson 2018; unigram) shared by both
languages, as the paper shares one source-target vocabulary. It is trained once on
English and German sentences of the training split and cached as
`<vocab_dir>/<dataset>.spm<vocab_size>.model` (vocab_dir defaults to the TFDS data
dir); later runs load it. Ids 0-3 are <pad>, </s>, <s>, <unk> as everywhere else.

BLEU: sacrebleu's corpus BLEU (13a tokenization) on the detokenized outputs
(SentencePiece decoding restores the text) against the raw references.
"""

import os

import numpy as np
from absl import logging

from data import pipeline, seq2seq, sources


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _pairs_source(config, split: str):
  """Random access to (source text, target text) of `split` of config.data.name."""
  name = config.data.name
  source_lang, target_lang = config.data.source_lang, config.data.target_lang
  try:  # Registers the WMT builders, which tfds.data_source needs to read the dataset.
    from tensorflow_datasets.translate import wmt14  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pass
  convert = lambda record: (_text(record[source_lang]), _text(record[target_lang]))
  return sources.TfdsSource(name, split, config.data.get('tfds_data_dir') or None,
                            convert=convert)


def vocabulary_path(config) -> str:
  """Where the SentencePiece model of `config` is cached."""
  directory = (config.data.vocab_dir or config.data.tfds_data_dir
               or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))
  name = config.data.name.replace('/', '_')
  return os.path.join(os.path.expanduser(directory), f'{name}.spm{config.data.vocab_size}.model')


def load_or_train_vocabulary(config, train_pairs):
  """The cached SentencePiece processor, trained first if it is not on disk.

  Training reads `config.data.vocab_train_pairs` training pairs spread evenly over the
  split (both sides). In multi-process jobs process 0 trains and the others wait.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  path = vocabulary_path(config)
  if not os.path.exists(path) and jax.process_index() == 0:
    count = min(config.data.vocab_train_pairs, len(train_pairs))
    indices = np.linspace(0, len(train_pairs) - 1, count).astype(int)
    logging.info('Training a %d-token SentencePiece model on %d sentence pairs -> %s',
                 config.data.vocab_size, count, path)

    def sentences():
      for i in indices:
        yield from train_pairs[int(i)]

    os.makedirs(os.path.dirname(path), exist_ok=True)
    prefix = f'{path[:-len(".model")]}.tmp{os.getpid()}'
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_prefix=prefix, vocab_size=config.data.vocab_size,
        model_type='unigram', character_coverage=1.0, hard_vocab_limit=False,
        pad_id=seq2seq.PAD_ID, eos_id=seq2seq.EOS_ID, bos_id=seq2seq.BOS_ID,
        unk_id=seq2seq.UNK_ID, minloglevel=2)
    os.replace(prefix + '.model', path)  # Atomic: a crash never leaves half a model.
    os.remove(prefix + '.vocab')
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('sentencepiece vocabulary')
  return spm.SentencePieceProcessor(model_file=path)


def corpus(config) -> seq2seq.TextCorpus:
  """The WMT corpus of `config.data` (name, source_lang -> target_lang, the train,
  validation and test splits).

  Raises sources.DatasetNotFoundError (with the preparation command) when the dataset
  is not prepared.
  """
  import sacrebleu  # pylint: disable=import-outside-toplevel
  train_pairs = _pairs_source(config, config.data.train_split)
  processor = load_or_train_vocabulary(config, train_pairs)

  def eval_set(split: str) -> seq2seq.EvalSet:
    pairs = _pairs_source(config, split)
    examples = [pairs[i] for i in range(len(pairs))]
    return seq2seq.EvalSet([s for s, _ in examples], [[t] for _, t in examples])
  encode = lambda text: processor.encode(text) + [seq2seq.EOS_ID]

  def decode(ids) -> str:
    ids = [int(i) for i in ids]
    if seq2seq.EOS_ID in ids:
      ids = ids[:ids.index(seq2seq.EOS_ID)]
    return processor.decode([i for i in ids if i not in (seq2seq.PAD_ID, seq2seq.BOS_ID)])

  def score(predictions, references) -> dict:
    return {'bleu': sacrebleu.corpus_bleu(list(predictions),
                                          [[refs[0] for refs in references]]).score}

  return seq2seq.TextCorpus(
      train_pairs=train_pairs,
      eval_sets={role: eval_set(split) for role, split in pipeline.eval_splits(config).items()},
      encode_source=encode,
      encode_target=encode, decode_target=decode,
      source_vocab_size=processor.get_piece_size(), target_vocab_size=processor.get_piece_size(),
      score=score)
