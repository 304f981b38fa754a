"""The seq2seq task, data pipeline and configs on the shared trainer: teacher forcing,
length policies, packing, memorising a G2P subset, the predict path, and the WMT14
config under tfds.testing.mock_data."""

import collections
import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from configs import transformer_g2p, transformer_wmt14
from data import seq2seq
from tasks import seq2seq as seq2seq_task
from train import parallel, trainer
from train.state import TrainState


def test_shift_right_starts_every_packed_sequence_with_bos():
  targets = jnp.array([[5, 6, 1, 7, 1, 0]])
  positions = jnp.array([[0, 1, 2, 0, 1, 0]])
  np.testing.assert_array_equal(seq2seq_task.shift_right(targets, positions, 2), [[2, 5, 6, 2, 7, 0]])
  np.testing.assert_array_equal(seq2seq_task.shift_right(targets, None, 2), [[2, 5, 6, 1, 7, 0]])


def test_loss_and_weights_count_real_target_tokens_only():
  task = seq2seq_task.Seq2SeqTask(label_smoothing=0.1)
  batch = {'targets': jnp.array([[4, 1, 0], [5, 6, 1]]), 'mask': jnp.array([1.0, 0.0])}
  logits = jax.random.normal(jax.random.key(0), (2, 3, 7))
  metrics = task.metrics(logits, batch)
  assert float(metrics['loss'][1]) == 2.0  # Two real tokens in the one real example.
  logp = jax.nn.log_softmax(logits[0, :2])
  smoothed = 0.9 * jax.nn.one_hot(jnp.array([4, 1]), 7) + 0.1 / 7
  np.testing.assert_allclose(metrics['loss'][0], -(smoothed * logp).sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics['nll'][0], -(logp[0, 4] + logp[1, 1]), rtol=1e-5)


def test_length_policies_truncate_keeping_eos_or_filter_and_count():
  long = {'inputs': np.array([5, 6, 7, 8, 1], np.int32), 'targets': np.array([4, 1], np.int32)}
  truncate = seq2seq.LengthPolicy(3, 'truncate', 'training')
  out = truncate.truncate(long)
  np.testing.assert_array_equal(out['inputs'], [5, 6, 1])
  np.testing.assert_array_equal(out['targets'], [4, 1])
  keep = seq2seq.LengthPolicy(3, 'filter', 'training')
  assert not keep.keep(long) and keep.keep(out) and keep.count == 1 and truncate.count == 1
  with pytest.raises(ValueError, match=r"'drop'.*\['truncate', 'filter'\]"):
    seq2seq.LengthPolicy(3, 'drop', 'training')


def _g2p_config(**overrides):
  c = transformer_g2p.get_config()
  c.model.name = 'transformer_g2p_tiny'
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.fixture(scope='module')
def g2p_data():
  return seq2seq.Seq2SeqData(_g2p_config())


def test_g2p_batches_are_packed_fixed_shapes_and_resume_exactly(g2p_data):
  it = g2p_data.train_iterator()
  first = next(it)
  assert set(first) == {'inputs', 'targets', 'inputs_segment_ids', 'inputs_positions',
                        'targets_segment_ids', 'targets_positions'}
  assert all(v.shape == (64, 32) and v.dtype == np.int32 for v in first.values())
  assert first['inputs_segment_ids'].max() > 2  # Several words per row.
  state = it.get_state()
  expected = next(it)
  again = g2p_data.train_iterator()
  again.set_state(state)
  for key, value in next(again).items():
    np.testing.assert_array_equal(value, expected[key])
  batch = next(iter(g2p_data.eval_batches('test')))
  assert batch['inputs'].shape == (500, 32) and batch['mask'].sum() == 500
  np.testing.assert_array_equal(batch['index'], np.arange(500))


def test_bad_seq2seq_fields_fail_before_the_data_is_read():
  for field, value, match in [('length_policy', 'drop', 'length_policy'),
                              ('max_length', 64, r'data.max_length=64 must be in \[2, model')]:
    config = _g2p_config()
    config.data[field] = value
    with pytest.raises(ValueError, match=match):
      trainer.validate(config, 1)
  config = _g2p_config()
  config.decode.beam_size = 0
  with pytest.raises(ValueError, match='beam_size'):
    trainer.validate(config, 1)


def test_tiny_transformer_memorises_a_g2p_subset_and_translates_strings(g2p_data):
  """32 words learnt by heart: greedy and beam decoding give all pronunciations back;
  empty input gives empty output, unknown characters do not crash."""
  config = _g2p_config(batch_size=32, learning_rate=3e-3, warmup_steps=20, label_smoothing=0.0)
  config.model.dropout_rate = 0.0
  config.decode.max_length = 16
  corpus = g2p_data.corpus
  counts = collections.Counter(w for w, _ in corpus.train_pairs)
  words = [(w, p) for w, p in corpus.train_pairs if len(w) <= 8 and counts[w] == 1][:32]
  pairs = [g2p_data._tokenize(p) for p in words]  # pylint: disable=protected-access
  batch = {k: np.stack([seq2seq.pad_to(p[k], 16) for p in pairs]) for k in ('inputs', 'targets')}
  engine = parallel.build('jit', jax.devices()[:1])
  model, task, _, schedule, init_fn = trainer.build_components(config, 400, g2p_data.spec)
  state = engine.init_state(init_fn)
  step = engine.train_step(model=model, task=task, schedule=schedule, accum_steps=1)
  for _ in range(300):
    state, metrics = step(state, engine.put_batch(batch))
  metrics = engine.to_host(metrics)
  assert metrics['accuracy'][0] / metrics['accuracy'][1] == 1.0
  for beam_size in (1, 3):
    decode_task = seq2seq_task.Seq2SeqTask(beam_size=beam_size, max_decode_length=16)
    decode = jax.jit(lambda inputs: decode_task.predict(model, state.variables, {'inputs': inputs}))
    outputs = g2p_data.translate([w for w, _ in words] + ['', 'Q#!'], decode, batch_size=34)
    assert outputs[:32] == [p for _, p in words]
    assert outputs[32] == '' and isinstance(outputs[33], str)


@pytest.mark.parametrize('engine', ['jit', 'pmap'])
def test_wmt14_config_runs_under_mock_data(engine, tmp_path):
  config = transformer_wmt14.get_config()
  config.parallel = engine
  config.model.update(name='transformer_g2p_tiny', max_length=32)
  config.data.update(max_length=32, vocab_size=80, vocab_dir=str(tmp_path / 'vocab'),
                     num_threads=1)
  config.decode.update(max_length=8, beam_size=2)
  config.compute_dtype = 'float32'
  config.update(batch_size=8, eval_batch_size=8, num_train_steps=2, warmup_steps=1,
                log_every_steps=1, eval_every_steps=0, checkpoint_every_steps=0)
  config.checkpoint.async_save = False
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    metrics = trainer.run(config, str(tmp_path / 'run'))
  assert metrics['step'] == 2 and metrics['splits'] == {'validation': 'validation',
                                                        'test': 'test'}
  assert metrics['validation']['num_examples'] == metrics['test']['num_examples'] == 12
  assert {'bleu', 'loss'} <= set(metrics['test'])
  assert (tmp_path / 'vocab' / 'wmt14_translate_de-en.spm80.model').exists()


class _KnownPredictions:
  """A stand-in task: predicts each word's first reference when its index is even and
  nothing (</s> at once) when it is odd."""

  def apply(self, model, variables, batch, train):
    del model, variables, train
    return batch['targets']

  def metrics(self, logits, batch):
    del logits
    return {'examples': (batch['mask'].sum(), batch['mask'].sum())}

  def predict(self, model, variables, batch):
    del model, variables
    even = (batch['index'] % 2 == 0)[:, None]
    return jnp.where(even, batch['targets'], seq2seq.EOS_ID)


@pytest.mark.parametrize('engine_name', ['jit', 'pmap'])
def test_evaluate_scores_hand_made_predictions_exactly(g2p_data, engine_name):
  """The eval path (padded batches over 8 devices, gathered outputs, WER/PER over the
  split) on known predictions: every odd word is wrong, every even word right."""
  data = copy.copy(g2p_data)
  data.config = copy.deepcopy(g2p_data.config)
  data.config.eval_batch_size = 1000  # 6,370 test words: 7 batches, the last padded.
  engine = parallel.build(engine_name)
  tx = optax.identity()
  state = engine.init_state(lambda: TrainState(
      step=jnp.zeros((), jnp.int32), params={}, model_state={}, opt_state=tx.init({}),
      rng=jnp.zeros((2,), jnp.uint32), tx=tx))
  task = _KnownPredictions()
  metrics = trainer.evaluate(state, engine, data, 'test',
                             engine.eval_step(model=None, task=task),
                             seq2seq_task.evaluators(data.config, data,
                                                     functools.partial(task.predict, None), engine))
  references = [[r.split() for r in refs] for refs in data.corpus.eval_sets['test'].references]
  n = len(references)
  odd = sum(min(len(r) for r in refs) for refs in references[1::2])  # All deleted.
  even = sum(len(refs[0]) for refs in references[::2])  # The first reference: no error.
  assert metrics['num_examples'] == n == 6370 and metrics['examples'] == 1.0
  assert metrics['wer'] == 100.0 * (n // 2) / n
  np.testing.assert_allclose(metrics['per'], 100.0 * odd / (odd + even), rtol=1e-12)
