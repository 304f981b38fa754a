r"""Decoding speed of the G2P Transformer: greedy and beam search, words/s.

  python -m benchmarks.decode_speed [--size=g2p_small] [--batch=500] [--beam=1,4] \
      [--repeats=3] [--max_decode_length=32]

Times `tasks.seq2seq.Seq2SeqTask.predict` -- the trainer's and `train.predict --eval`'s
decoding path: encode, cache, greedy or beam search under one `jax.jit` -- on the model
configs/transformer_g2p.py builds (`transformer_<size>`, post-LN, max_length 32) with
random weights: decoding always runs `max_decode_length` steps under `lax.scan`, so
its speed does not depend on what the weights say. The inputs look like CMUdict's
test split: 33 grapheme and 43 phoneme ids (specials included, stress stripped),
words of 2-19 letters (mean 7.5) plus </s>, padded to data.max_length = 32.

Each beam size is compiled and run once (excluded), then timed over --repeats calls
(jax.block_until_ready after each); prints one JSON line per beam size with the
median seconds per batch, words/s = batch / median, every timing and a digest of the
decoded tokens (the same weights and inputs give the same digest, so two versions of
the decoder can be checked for identical outputs as well as timed).
"""

import hashlib
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import transformer_g2p
from tasks import common, seq2seq

_SIZE = flags.DEFINE_string('size', 'g2p_small', 'nets.transformer.SIZES name.')
_BATCH = flags.DEFINE_integer('batch', 500, 'Words per batch (the config\'s eval_batch_size).')
_BEAMS = flags.DEFINE_list('beam', ['1', '4'], 'Beam sizes to time (1: greedy search).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per beam size.')
_DECODE_LENGTH = flags.DEFINE_integer('max_decode_length', 32, 'Decoding steps (decode.max_length).')
_SOURCE_VOCAB = flags.DEFINE_integer('source_vocab', 33, 'Grapheme ids (CMUdict: 33).')
_TARGET_VOCAB = flags.DEFINE_integer('target_vocab', 43, 'Phoneme ids (CMUdict, no stress: 43).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the weights and the inputs.')


def cmudict_like_inputs(rng: np.random.Generator, batch: int, length: int,
                        vocab: int) -> np.ndarray:
  """[batch, length] int32: letters (ids 4..vocab-1), </s> (1), then padding (0)."""
  words = np.clip(np.rint(rng.normal(7.5, 2.6, batch)), 2, min(19, length - 1)).astype(int)
  rows = np.zeros((batch, length), np.int32)
  for row, n in zip(rows, words):
    row[:n] = rng.integers(4, vocab, n)
    row[n] = 1
  return rows


def main(argv):
  del argv
  config = transformer_g2p.get_config()
  config.model.name = f'transformer_{_SIZE.value}'
  model = common.build_model(config, source_vocab_size=_SOURCE_VOCAB.value,
                             target_vocab_size=_TARGET_VOCAB.value)
  rng = np.random.default_rng(_SEED.value)
  source = jnp.asarray(cmudict_like_inputs(rng, _BATCH.value, config.data.max_length,
                                           _SOURCE_VOCAB.value))
  variables = model.init(jax.random.key(_SEED.value), source[:1], source[:1])
  for beam in map(int, _BEAMS.value):
    task = seq2seq.Seq2SeqTask(beam_size=beam, alpha=config.decode.alpha,
                               max_decode_length=_DECODE_LENGTH.value)
    predict = jax.jit(lambda v, batch, task=task: task.predict(model, v, batch))
    start = time.perf_counter()
    tokens = jax.block_until_ready(predict(variables, {'inputs': source}))
    first = time.perf_counter() - start
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(predict(variables, {'inputs': source}))
      times.append(time.perf_counter() - start)
    median = float(np.median(times))
    print(json.dumps({
        'size': _SIZE.value, 'beam': beam, 'batch': _BATCH.value,
        'max_decode_length': _DECODE_LENGTH.value, 'words_per_s': round(_BATCH.value / median, 1),
        'median_s': round(median, 4), 'times_s': [round(t, 4) for t in times],
        'first_call_s': round(first, 2),  # compilation + one run
        'tokens_sha1': hashlib.sha1(np.asarray(tokens).tobytes()).hexdigest()[:16],
        'device': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
        'machine': platform.machine(), 'jax': jax.__version__}), flush=True)


if __name__ == '__main__':
  app.run(main)
