"""Autoregressive decoding with a key/value cache: greedy search and beam search.

Both work on any decoder exposed as a step function

  step_fn(tokens: [n, 1] int32, cache) -> (logits: [n, vocab] float32, cache)

that consumes one position per call (e.g. `Transformer.decode(..., decode=True)`), so
each new token costs one decoder position. Both run a fixed number of steps under
`lax.scan`: jit-compiled, batched, one compilation per shape.

Beam search keeps the k most likely unfinished prefixes at every step; a prefix that
ends leaves the beam for the pool of finished hypotheses, scored with the length
penalty of Wu et al. 2016 ("Google's Neural Machine Translation System", Sec. 7):
  score(Y) = log P(Y | X) / lp(Y),   lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha,
where |Y| counts the generated tokens including the end token. Each step ranks the
best 2k extensions, as tensor2tensor's and Flax's beam searches do: at most k of them
end (one per beam), so k unfinished ones always remain and the beam never narrows
when hypotheses finish. So k = 1 is not greedy search: it also keeps the hypotheses
that end before greedy search's does.
"""

import jax
import jax.numpy as jnp

NEG_INF = -1.0e9


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """lp(Y) of Wu et al. 2016, Eq. 14: ((5 + |Y|) / 6) ** alpha."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def greedy_search(step_fn, cache, *, batch_size: int, max_length: int, bos_id: int,
                  eos_id: int, pad_id: int = 0) -> jax.Array:
  """The most likely next token at every step.

  Returns [batch, max_length] int32: the generated tokens (the end token included), then
  `pad_id` after it.
  """
  def body(carry, _):
    token, cache, finished = carry
    logits, cache = step_fn(token[:, None], cache)
    next_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    next_token = jnp.where(finished, pad_id, next_token)
    return (next_token, cache, finished | (next_token == eos_id)), next_token

  start = jnp.full((batch_size,), bos_id, jnp.int32)
  _, tokens = jax.lax.scan(body, (start, cache, jnp.zeros((batch_size,), bool)), None,
                           length=max_length)
  return tokens.T


def _gather_beams(tree, indices: jax.Array, batch_size: int, beam_size: int):
  """Reorders every [batch * beam, ...] leaf of `tree` by `indices` [batch, beam]
  (beam positions). Other leaves are left alone: scalars (cache counters) and
  per-input [batch, ...] leaves, which all beams of an input share (e.g. the
  Transformer's cross-attention keys and values)."""
  if beam_size == 1:  # The only beam is its own parent: nothing moves.
    return tree

  def gather(x):
    if x.ndim == 0 or x.shape[0] != batch_size * beam_size:
      return x
    x = x.reshape((batch_size, beam_size) + x.shape[1:])
    idx = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1).reshape((batch_size * beam_size,) + x.shape[2:])
  return jax.tree.map(gather, tree)


def beam_search(step_fn, cache, *, batch_size: int, beam_size: int, max_length: int,
                bos_id: int, eos_id: int, alpha: float = 0.6,
                pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
  """Beam search with the Wu et al. 2016 length penalty.

  `cache` holds [batch_size * beam_size, ...] leaves, each input's beams adjacent (as
  `jnp.repeat(x, beam_size, axis=0)` lays them out): what each beam has decoded so far
  (e.g. self-attention keys and values), reordered after every step to follow the
  surviving beams' parents. Leaves of another leading size are never reordered: those
  of [batch_size, ...] hold what depends on the input only (e.g. `Transformer`'s
  cross-attention keys and values), the same for all its beams. Keeping them once per
  input instead of repeating them beam_size times is what spares the reordering --
  a gather of every source-sized array at every step -- and their memory; the model
  broadcasts them over the beams (`nets.layers.MultiHeadAttention`).

  Returns (sequences [batch, beam, max_length] int32, scores [batch, beam] float32):
  each input's finished hypotheses sorted by length-penalised score, best first; a
  sequence is its tokens up to and including the end token, then pad_id. Inputs with
  fewer than beam_size finished hypotheses after max_length steps are completed with
  the best unfinished beams (after the finished ones), scored with the same penalty.
  """
  b, k = batch_size, beam_size

  def body(state, t):
    live_seqs, live_logp, finished_seqs, finished_scores, cache = state
    last = jax.lax.dynamic_index_in_dim(live_seqs, jnp.maximum(t - 1, 0), axis=2,
                                        keepdims=False)
    last = jnp.where(t == 0, bos_id, last)
    logits, cache = step_fn(last.reshape(b * k, 1), cache)
    vocab = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
    candidates = (live_logp[:, :, None] + logp).reshape(b, k * vocab)
    top_logp, top_index = jax.lax.top_k(candidates, 2 * k)           # (b, 2k)
    beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(live_seqs, beam[:, :, None], axis=1)  # (b, 2k, L)
    seqs = seqs.at[:, :, t].set(token)
    alive = top_logp > NEG_INF / 2
    is_eos = token == eos_id

    # Candidates ending here join the finished pool (the best k are kept) ...
    new_scores = jnp.where(is_eos & alive, top_logp / length_penalty(t + 1, alpha), NEG_INF)
    all_seqs = jnp.concatenate([finished_seqs, seqs], axis=1)
    all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    finished_scores, keep = jax.lax.top_k(all_scores, k)
    finished_seqs = jnp.take_along_axis(all_seqs, keep[:, :, None], axis=1)
    # ... and the best k that go on form the next beam.
    live_logp, keep = jax.lax.top_k(jnp.where(is_eos | ~alive, NEG_INF, top_logp), k)
    live_seqs = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(beam, keep, axis=1), b, k)
    return (live_seqs, live_logp, finished_seqs, finished_scores, cache), None

  # Only the first beam is live at the start, so the k beams are not k copies.
  live_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  seqs = jnp.full((b, k, max_length), pad_id, jnp.int32)
  state = (seqs, live_logp, seqs, jnp.full((b, k), NEG_INF, jnp.float32), cache)
  (live_seqs, live_logp, finished_seqs, finished_scores, _), _ = jax.lax.scan(
      body, state, jnp.arange(max_length))

  # Finished hypotheses first, best score first; then unfinished ones, scored alike.
  seqs = jnp.concatenate([finished_seqs, live_seqs], axis=1)
  scores = jnp.concatenate(
      [finished_scores, live_logp / length_penalty(jnp.asarray(max_length), alpha)], axis=1)
  unfinished = jnp.concatenate([finished_scores <= NEG_INF / 2,
                                jnp.ones_like(live_logp, bool)], axis=1)
  order = jnp.lexsort((-scores, unfinished), axis=-1)[:, :k]
  return (jnp.take_along_axis(seqs, order[:, :, None], axis=1),
          jnp.take_along_axis(scores, order, axis=1))
