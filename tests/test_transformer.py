"""The Transformer encoder-decoder: information flow, padding, the decoding cache, and
its layers against torch.nn with the same weights."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets import decoding, layers, transformer

torch = pytest.importorskip('torch')


def _tiny(**overrides):
  kwargs = dict(source_vocab_size=13, target_vocab_size=11, d_model=16, num_heads=2, d_ff=32,
                num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0, max_length=12)
  return transformer.Transformer(**{**kwargs, **overrides})


def _init(model, seed, *args):
  """model.init compiled as one program: run eagerly, every operation compiles on its
  own, which made an init of this tiny model take ~9 s on a 2-core CPU."""
  return jax.jit(model.init)(jax.random.key(seed), *args)


def _data():
  rng = np.random.default_rng(0)
  source = rng.integers(1, 13, (3, 7)).astype(np.int32)
  source[0, 5:] = 0  # padding
  target = rng.integers(1, 11, (3, 6)).astype(np.int32)
  return jnp.asarray(source), jnp.asarray(target)


@pytest.mark.parametrize('pre_ln,share,positions', [
    (False, 'none', 'sinusoidal'), (True, 'decoder', 'learned'), (False, 'all', 'sinusoidal')])
def test_no_information_from_the_future_and_padding_is_ignored(pre_ln, share, positions):
  vocab = 13 if share == 'all' else 11
  model = _tiny(pre_ln=pre_ln, share_embeddings=share, position_encoding=positions,
                target_vocab_size=vocab)
  source, target = _data()
  variables = _init(model, 0, source, target)
  apply = jax.jit(model.apply)  # One compile per shape instead of one per operation.
  logits = apply(variables, source, target)
  assert logits.shape == (3, 6, vocab) and logits.dtype == jnp.float32
  for t in range(6):  # Changing target token t leaves the logits before t unchanged.
    changed = target.at[:, t].set((target[:, t] % 9) + 1)
    other = apply(variables, source, changed)
    np.testing.assert_allclose(other[:, :t], logits[:, :t], atol=1e-5)
    if t < 5:
      assert np.abs(other[:, t:] - logits[:, t:]).max() > 1e-4
  # Padded source positions do not change anything; padded targets not the real ones.
  garbage = source.at[0, 5:].set(0)
  np.testing.assert_allclose(apply(variables, garbage, target), logits, atol=1e-5)
  longer = jnp.concatenate([source, jnp.zeros((3, 3), jnp.int32)], axis=1)
  np.testing.assert_allclose(apply(variables, longer, target), logits, atol=1e-5)
  padded_target = jnp.concatenate([target, jnp.zeros((3, 2), jnp.int32)], axis=1)
  np.testing.assert_allclose(apply(variables, source, padded_target)[:, :6], logits,
                             atol=1e-5)


@pytest.mark.parametrize('positions', ['sinusoidal', 'learned'])
def test_packed_rows_equal_separate_sequences(positions):
  """Two sequences packed into one row (segment and position ids, as Grain's packing
  emits them) give the logits each gives alone."""
  model = _tiny(position_encoding=positions)
  source, target = _data()
  variables = _init(model, 0, source, target)
  src = [np.array([3, 4, 5], np.int32), np.array([6, 7, 8, 9], np.int32)]
  tgt = [np.array([2, 5, 6, 7], np.int32), np.array([2, 8, 9], np.int32)]
  pack = lambda parts, n: np.concatenate(parts + [np.zeros(n - sum(map(len, parts)), np.int32)])
  segments = lambda parts, n: pack([np.full(len(p), i + 1, np.int32) for i, p in enumerate(parts)], n)
  positions_of = lambda parts, n: pack([np.arange(len(p), dtype=np.int32) for p in parts], n)
  apply = jax.jit(model.apply)
  packed = apply(
      variables, pack(src, 9)[None], pack(tgt, 8)[None],
      source_segment_ids=segments(src, 9)[None], target_segment_ids=segments(tgt, 8)[None],
      source_position_ids=positions_of(src, 9)[None],
      target_position_ids=positions_of(tgt, 8)[None])[0]
  start = 0
  for s, t in zip(src, tgt):
    alone = apply(variables, s[None], t[None])[0]
    np.testing.assert_allclose(packed[start:start + len(t)], alone, atol=1e-5)
    start += len(t)


def test_cached_incremental_decoding_equals_full_decoding():
  """Step by step with the cache = teacher forcing, with 3 different target rows per
  source (beam search's layout) reading one copy of the source's cross-attention keys
  and values, which the cache computes once and no step changes."""
  beams = 3
  model = _tiny()
  source, target = _data()
  variables = _init(model, 0, source, target)
  rows = jnp.repeat(source, beams, axis=0)
  targets = jnp.asarray(np.random.default_rng(1).integers(1, 11, (3 * beams, 6)), jnp.int32)
  full = jax.jit(model.apply)(variables, rows, targets)
  step_fn, cache = _decoder(model, variables, source, beams)
  cross = cache['cache']['decoder_layer1']['cross_attention']
  assert cross['cross_key'].shape == (3, 2, 7, 8)  # [sources, heads, source_length, head_dim]
  step_fn = jax.jit(step_fn)
  steps = []
  for t in range(6):
    logits, cache = step_fn(targets[:, t:t + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)
  kept = cache['cache']['decoder_layer1']['cross_attention']
  np.testing.assert_array_equal(kept['cross_key'], cross['cross_key'])
  np.testing.assert_array_equal(kept['cross_value'], cross['cross_value'])


def test_named_sizes_and_errors():
  model = nets.build('transformer_base', source_vocab_size=100, target_vocab_size=100)
  assert (model.d_model, model.num_heads, model.d_ff, model.num_encoder_layers) == (512, 8, 2048, 6)
  big = nets.build('transformer_big', source_vocab_size=100, target_vocab_size=100)
  assert (big.d_model, big.num_heads, big.d_ff) == (1024, 16, 4096)
  source, target = _data()
  with pytest.raises(ValueError, match=r"share_embeddings='all' needs one vocabulary"):
    _tiny(share_embeddings='all').init(jax.random.key(0), source, target)
  with pytest.raises(ValueError, match=r"valid: \['sinusoidal', 'learned'\]"):
    _tiny(position_encoding='rope').init(jax.random.key(0), source, target)
  with pytest.raises(ValueError, match='length 13 exceeds max_length 12'):
    _tiny().init(jax.random.key(0), jnp.ones((1, 13), jnp.int32), target)


def test_sinusoidal_encoding_matches_the_formula():
  pe = transformer.sinusoidal_position_encoding(50, 8)
  pos, i = 7, 2
  assert pe[pos, 2 * i] == pytest.approx(np.sin(pos / 10000 ** (2 * i / 8)), abs=1e-6)
  assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(pos / 10000 ** (2 * i / 8)), abs=1e-6)


# --- Against torch.nn -------------------------------------------------------------------------

def _t(x):
  return torch.from_numpy(np.asarray(x, np.float32).copy())


def _load_attention(torch_mha, params, d, heads):
  q, k, v, o = (params[n] for n in ('query', 'key', 'value', 'out'))
  w = lambda p: np.asarray(p['kernel']).reshape(d, d).T
  torch_mha.in_proj_weight.data = _t(np.concatenate([w(q), w(k), w(v)]))
  torch_mha.in_proj_bias.data = _t(np.concatenate([np.asarray(p['bias']).reshape(d)
                                                   for p in (q, k, v)]))
  torch_mha.out_proj.weight.data = _t(np.asarray(o['kernel']).reshape(d, d).T)
  torch_mha.out_proj.bias.data = _t(o['bias'])
  del heads


def _load_linear(linear, p):
  linear.weight.data = _t(np.asarray(p['kernel']).T)
  linear.bias.data = _t(p['bias'])


def _load_norm(norm, p):
  norm.weight.data, norm.bias.data = _t(p['scale']), _t(p['bias'])


def test_attention_matches_torch_multihead_attention():
  d, heads = 16, 4
  q = jax.random.normal(jax.random.key(0), (2, 5, d))
  kv = jax.random.normal(jax.random.key(1), (2, 7, d))
  keep = np.ones((2, 7), bool)
  keep[1, 4:] = False
  module = layers.MultiHeadAttention(heads)
  params = module.init(jax.random.key(2), q, kv)['params']
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(3), x.shape), params)
  got = module.apply({'params': params}, q, kv, mask=jnp.asarray(keep)[:, None, None, :])
  ref = torch.nn.MultiheadAttention(d, heads, batch_first=True)
  _load_attention(ref, params, d, heads)
  with torch.no_grad():
    expected, _ = ref(_t(q), _t(kv), _t(kv), key_padding_mask=torch.from_numpy(~keep))
  np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_encoder_and_decoder_layers_match_torch_post_ln():
  d, heads, ff = 16, 4, 32
  x = jax.random.normal(jax.random.key(0), (2, 6, d))
  memory = jax.random.normal(jax.random.key(1), (2, 5, d))
  src_keep = np.ones((2, 5), bool)
  src_keep[0, 3:] = False
  enc = transformer.EncoderLayer(heads, ff, dropout_rate=0.0, epsilon=1e-5)
  mask6 = jnp.ones((2, 1, 1, 6), bool)
  p = enc.init(jax.random.key(2), x, mask6, deterministic=True)['params']
  ref = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
  _load_attention(ref.self_attn, p['self_attention'], d, heads)
  _load_linear(ref.linear1, p['feed_forward']['Dense_0'])
  _load_linear(ref.linear2, p['feed_forward']['Dense_1'])
  _load_norm(ref.norm1, p['attention_block']['norm'])
  _load_norm(ref.norm2, p['feed_forward_block']['norm'])
  ref.eval()
  with torch.no_grad():
    expected = ref(_t(x)).numpy()
  np.testing.assert_allclose(enc.apply({'params': p}, x, mask6, deterministic=True), expected,
                             rtol=1e-4, atol=1e-5)

  dec = transformer.DecoderLayer(heads, ff, dropout_rate=0.0, epsilon=1e-5)
  causal = jnp.tril(jnp.ones((6, 6), bool))[None, None]
  cross = jnp.asarray(src_keep)[:, None, None, :]
  p = dec.init(jax.random.key(3), x, memory, causal, cross, deterministic=True)['params']
  ref = torch.nn.TransformerDecoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
  _load_attention(ref.self_attn, p['self_attention'], d, heads)
  _load_attention(ref.multihead_attn, p['cross_attention'], d, heads)
  _load_linear(ref.linear1, p['feed_forward']['Dense_0'])
  _load_linear(ref.linear2, p['feed_forward']['Dense_1'])
  for i, block in enumerate(('self_attention_block', 'cross_attention_block',
                             'feed_forward_block'), 1):
    _load_norm(getattr(ref, f'norm{i}'), p[block]['norm'])
  ref.eval()
  with torch.no_grad():
    expected = ref(_t(x), _t(memory), tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(6),
                   memory_key_padding_mask=torch.from_numpy(~src_keep)).numpy()
  got = dec.apply({'params': p}, x, memory, causal, cross, deterministic=True)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# --- Decoding ---------------------------------------------------------------------------------

def _decoder(model, variables, source, beam=1):
  """step_fn for `decoding` over `beam` rows per input of `source`, and its cache (as
  tasks.seq2seq decodes)."""
  def start(variables, source):
    encoded = model.apply(variables, source, method=transformer.Transformer.encode)
    return model.init_cache(variables, encoded, source, model.max_length, beam_size=beam)
  cache = jax.jit(start)(variables, source)

  def step_fn(tokens, cache):
    logits, updates = model.apply({**variables, **cache}, None, source, tokens, decode=True,
                                  mutable=['cache'], method=transformer.Transformer.decode)
    return logits[:, 0], updates
  return step_fn, cache


def _uncached_decoder(model, variables, source, beam=1):
  """The reference: step_fn and state for `decoding` that recompute everything at every
  step -- teacher-forced `decode` of the whole prefix so far, the source repeated per
  beam -- with no key/value cache. Its state (the prefix [rows, length] and the step)
  is reordered by beam search like a cache."""
  source = jnp.repeat(source, beam, axis=0)
  encoded = jax.jit(functools.partial(model.apply, method=transformer.Transformer.encode))(
      variables, source)
  state = {'prefix': jnp.zeros((source.shape[0], model.max_length), jnp.int32),
           'step': jnp.zeros((), jnp.int32)}

  def step_fn(tokens, state):
    t = state['step']
    prefix = jax.lax.dynamic_update_slice(state['prefix'], tokens, (0, t))
    logits = model.apply(variables, encoded, source, prefix, method=transformer.Transformer.decode)
    return (jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False),
            {'prefix': prefix, 'step': t + 1})
  return step_fn, state


def _sequence_logprobs(model, variables, sources, seqs, bos=2, eos=1):
  """(log P(seq | source) by teacher forcing, length) of each seq up to and including
  its end token: sources [n, source_length] and seqs [n, length] int32 -> n pairs. One
  batched forward pass: the decoder is causal, so the tokens after a sequence's end
  change nothing before it."""
  seqs = np.asarray(seqs)
  target_in = np.concatenate([np.full((len(seqs), 1), bos, np.int32), seqs[:, :-1]], axis=1)
  logp = np.asarray(jax.nn.log_softmax(jax.jit(model.apply)(variables, sources, target_in)))
  out = []
  for row, seq in zip(logp, seqs):
    length = list(seq).index(eos) + 1 if eos in list(seq) else len(seq)
    out.append((float(sum(row[i, seq[i]] for i in range(length))), length))
  return out


@pytest.mark.parametrize('beam_size', [1, 3])
def test_decoding_never_emits_padding_or_the_start_token(beam_size):
  from tasks import seq2seq as seq2seq_task  # pylint: disable=import-outside-toplevel
  model = _tiny(max_length=8)
  source, target = _data()
  variables = _init(model, 4, source, target)
  # Padding and <s> the likeliest tokens: what the search would otherwise pick.
  bias = variables['params']['output_projection']['bias']
  variables['params']['output_projection']['bias'] = bias.at[0].set(9.0).at[2].set(8.0)
  task = seq2seq_task.Seq2SeqTask(beam_size=beam_size, max_decode_length=8)
  out = np.asarray(task.predict(model, variables, {'inputs': source}))
  assert out.shape == (3, 8)
  for row in out:  # Padding only after the end token, if any.
    body = row[:list(row).index(1)] if 1 in row else row
    assert not np.isin(body, [0, 2]).any(), row


def test_beams_are_sorted_by_penalised_score_and_beat_greedy_search():
  model = _tiny(max_length=8)
  source, target = _data()
  variables = _init(model, 4, source, target)
  # A bias towards the end token, so hypotheses of several lengths finish.
  bias = variables['params']['output_projection']['bias']
  variables['params']['output_projection']['bias'] = bias.at[1].set(2.6)
  step_fn, cache = _decoder(model, variables, source)
  greedy = jax.jit(lambda c: decoding.greedy_search(
      step_fn, c, batch_size=3, max_length=8, bos_id=2, eos_id=1))(cache)
  assert (np.asarray(greedy) == 1).any(axis=1).all()  # Every greedy output ends.
  searches = {}
  for beam, alpha in ((1, 0.0), (4, 0.6)):
    step_fn, cache = _decoder(model, variables, source, beam=beam)
    searches[beam] = jax.jit(lambda c: decoding.beam_search(
        step_fn, c, batch_size=3, beam_size=beam, max_length=8, bos_id=2, eos_id=1,
        alpha=alpha))(cache)
  seqs, scores = searches[4]
  assert seqs.shape == (3, 4, 8) and scores.shape == (3, 4)
  assert (np.diff(np.asarray(scores), axis=1) <= 1e-6).all()
  # Every beam and the greedy output of each source, scored by teacher forcing.
  scored = _sequence_logprobs(
      model, variables, np.concatenate([np.repeat(source, 4, axis=0), source]),
      np.concatenate([np.asarray(seqs).reshape(12, 8), np.asarray(greedy)]))
  penalised = lambda logp, length: logp / float(decoding.length_penalty(jnp.asarray(length), 0.6))
  checked = 0
  for i in range(3):
    for j in range(4):  # Each score is the sequence's log-probability / lp(length).
      if 1 in np.asarray(seqs[i, j]):
        assert float(scores[i, j]) == pytest.approx(penalised(*scored[4 * i + j]), abs=1e-4)
        checked += 1
    assert checked > 0
    # The best beam is at least as likely (penalised) as the greedy output; without a
    # length penalty, so is a beam of one, which also keeps the hypotheses that end
    # before greedy search's.
    assert float(scores[i, 0]) >= penalised(*scored[12 + i]) - 1e-4
    assert float(searches[1][1][i, 0]) >= scored[12 + i][0] - 1e-4


def _bigram_search(log_probs, beam_size, max_length, alpha):
  """decoding.beam_search on a bigram model: the next token's log-probabilities
  [vocab, vocab] depend on the last token only, so the search needs no cache."""
  table = jnp.asarray(log_probs, jnp.float32)
  step_fn = lambda tokens, cache: (table[tokens[:, 0]], cache)
  return decoding.beam_search(step_fn, {}, batch_size=1, beam_size=beam_size,
                              max_length=max_length, bos_id=2, eos_id=1, alpha=alpha)


def _reference_beam_search(log_probs, k, max_length, alpha):
  """A plain loop of the standard beam search (tensor2tensor's): the best 2k
  extensions of the beam; those that end join the finished pool, the best k of the
  others form the next beam; unfinished beams complete a short pool at the end."""
  lp = lambda n: ((5.0 + n) / 6.0) ** alpha
  live, finished = [(0.0, [2])], []
  for t in range(max_length):
    candidates = sorted(((logp + log_probs[seq[-1]][v], seq + [v])
                         for logp, seq in live for v in range(len(log_probs))),
                        key=lambda c: -c[0])[:2 * k]
    finished += [(logp / lp(t + 1), seq[1:]) for logp, seq in candidates if seq[-1] == 1]
    live = [c for c in candidates if c[1][-1] != 1][:k]
  finished = sorted(finished, key=lambda c: -c[0])[:k]
  unfinished = sorted(((logp / lp(max_length), seq[1:]) for logp, seq in live),
                      key=lambda c: -c[0])
  return (finished + unfinished)[:k]


def test_beam_search_keeps_k_beams_when_hypotheses_finish():
  """Tokens: 0 pad, 1 end, 2 start, 3 'a', 4 'b'. After the start token the end token
  is the most likely (0.5), then 'a' (0.3), then 'b' (0.2); after 'b' the end (0.95).
  The two best hypotheses are 'end' (0.5) and 'b end' (0.19). A beam of two that lets
  the finished 'end' take one of its two slots keeps only 'a' and never finds 'b end'."""
  p = np.full((5, 5), 1e-9)
  p[2, [1, 3, 4]] = 0.5, 0.3, 0.2
  p[3, [1, 3, 4]] = 0.1, 0.4, 0.5
  p[4, [1, 3, 4]] = 0.95, 0.025, 0.025
  p[[0, 1]] = 0.2
  seqs, scores = _bigram_search(np.log(p), beam_size=2, max_length=4, alpha=0.0)
  np.testing.assert_array_equal(seqs[0], [[1, 0, 0, 0], [4, 1, 0, 0]])
  np.testing.assert_allclose(np.exp(scores[0]), [0.5, 0.19], rtol=1e-5)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_beam_search_equals_a_reference_loop(seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(6, 6)) * 2.0
  logits[:, 2] = -1e9  # The start token is never generated.
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  seqs, scores = _bigram_search(log_probs, beam_size=3, max_length=5, alpha=0.6)
  expected = _reference_beam_search(log_probs, 3, 5, 0.6)
  for (score, seq), got_seq, got_score in zip(expected, np.asarray(seqs[0]), scores[0]):
    np.testing.assert_array_equal(got_seq[:len(seq)], seq)
    assert (got_seq[len(seq):] == 0).all()
    assert float(got_score) == pytest.approx(score, abs=1e-4)


def _steered(step_fn):
  """step_fn with the end token a little less likely, so that this random model's
  hypotheses end at several lengths up to max_length (long ones are where the
  self-attention caches must follow their beams), and padding (id 0) never chosen:
  fed back, the reference would mask it as teacher forcing does, while the cache
  attends to whatever it was fed."""
  def steered(tokens, state):
    logits, state = step_fn(tokens, state)
    return logits.at[:, 1].add(-0.75).at[:, 0].set(decoding.NEG_INF), state
  return steered


@pytest.mark.parametrize('attention_impl', ['auto', 'xla'])
def test_cached_decoding_gives_the_uncached_reference_outputs(attention_impl):
  """Greedy and beam-4 search with the cache (cross-attention keys and values projected
  once and kept once per input, only the self-attention caches reordered) give the
  tokens and scores of the reference that recomputes every step from the prefix; with
  the matmul core ('auto' on a CPU) and with jax.nn's fused-attention entry point."""
  model = _tiny(max_length=8, attention_impl=attention_impl)
  source, target = _data()
  variables = _init(model, 5, source, target)
  args = dict(batch_size=3, max_length=8, bos_id=2, eos_id=1)

  def search(decoder, beam):
    step_fn, state = decoder(model, variables, source, beam)
    if beam == 1:
      return decoding.greedy_search(_steered(step_fn), state, **args)
    return decoding.beam_search(_steered(step_fn), state, beam_size=beam, alpha=0.6, **args)

  got = jax.jit(lambda: search(_decoder, 1))()
  np.testing.assert_array_equal(got, search(_uncached_decoder, 1))
  seqs, scores = jax.jit(lambda: search(_decoder, 4))()
  ref_seqs, ref_scores = search(_uncached_decoder, 4)
  # Every output is a real hypothesis (no dead slot), of lengths 1 to max_length.
  assert (np.asarray(ref_scores) > decoding.NEG_INF / 2).all()
  lengths = {int((s > 0).sum()) for s in np.asarray(ref_seqs).reshape(12, 8)}
  assert min(lengths) == 1 and max(lengths) == 8 and len(lengths) > 3
  np.testing.assert_array_equal(np.asarray(seqs), np.asarray(ref_seqs))
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_attention_impls_give_the_same_logits_and_gradients():
  """jax.nn.dot_product_attention ('xla') computes what the matmul core does, with the
  padding and causal masks of training; attention dropout in training is refused."""
  source, target = _data()
  variables = _init(_tiny(), 6, source, target)

  def loss(params, impl):
    logits = _tiny(attention_impl=impl).apply({'params': params}, source, target)
    return jnp.sum(logits ** 2), logits

  grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
  ref_grad, ref = grad_fn(variables['params'], 'matmul')
  grad, got = grad_fn(variables['params'], 'xla')
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad, ref_grad)
  with pytest.raises(ValueError, match='no attention dropout'):
    _tiny(attention_impl='xla', attention_dropout_rate=0.1).apply(
        variables, source, target, train=True, rngs={'dropout': jax.random.key(0)})
  with pytest.raises(ValueError, match="valid: \\('auto', 'matmul'"):
    _tiny(attention_impl='flash').apply(variables, source, target)
