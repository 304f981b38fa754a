"""The Transformer encoder-decoder (Vaswani et al. 2017, "Attention Is All You Need").

  encoder: token embedding x sqrt(d_model) (Sec. 3.4) + positional encoding (sinusoidal,
    Sec. 3.5, or learned) -> dropout -> N layers of [self-attention, feed-forward]
  decoder: the same embedding of the shifted targets -> N layers of [causal
    self-attention, encoder-decoder cross-attention, feed-forward] -> output projection
  every sub-layer: post-LN LayerNorm(x + Dropout(sublayer(x))) as in the paper (Sec. 5.4),
    or pre-LN x + Dropout(sublayer(LayerNorm(x))) with a final LayerNorm (`pre_ln=True`)
  feed-forward: Dense(d_ff) -> ReLU -> dropout -> Dense(d_model) (Sec. 3.3)

The attention core is `nets.layers.MultiHeadAttention` (shared with ViT), with a
key/value cache for incremental decoding (`init_cache`, then `decode(..., decode=True)`):
the cross-attention keys and values are projected from the encoded source once, when
the cache is built, and kept once per source when beam search decodes several rows per
source (so beam search has nothing source-sized to reorder); the self-attention ones,
one set per row, grow by one position per step. Token id 0 is padding: padded source
positions are never attended to, and the decoder's self-attention is causal.

Named sizes (Table 3): base = 6+6 layers, d_model 512, 8 heads, d_ff 2048; big = 1024,
16 heads, d_ff 4096 (dropout 0.3 in the paper for EN-DE big).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nets import layers

SIZES = {
    'base': dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6),
    'big': dict(d_model=1024, num_heads=16, d_ff=4096, num_encoder_layers=6,
                num_decoder_layers=6),
    # Small sizes for grapheme-to-phoneme.
    'g2p_small': dict(d_model=128, num_heads=4, d_ff=512, num_encoder_layers=3,
                      num_decoder_layers=3),
    'g2p_tiny': dict(d_model=64, num_heads=4, d_ff=256, num_encoder_layers=2,
                     num_decoder_layers=2),
}
SHARE_EMBEDDINGS = ('none', 'decoder', 'all')
POSITION_ENCODINGS = ('sinusoidal', 'learned')


def sinusoidal_position_encoding(length: int, d_model: int) -> np.ndarray:
  """PE(pos, 2i) = sin(pos / 10000^(2i / d_model)), PE(pos, 2i + 1) = cos(...)
  (Vaswani et al. 2017, Sec. 3.5). Returns [length, d_model] float32."""
  position = np.arange(length, dtype=np.float64)[:, None]
  div = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-np.log(10000.0) / d_model))
  pe = np.zeros((length, d_model), np.float64)
  pe[:, 0::2] = np.sin(position * div)
  pe[:, 1::2] = np.cos(position * div)[:, :d_model // 2]
  return pe.astype(np.float32)


class SubLayer(nn.Module):
  """Wraps a sub-layer with dropout, the residual connection and LayerNorm (post or pre)."""
  pre_ln: bool
  dropout_rate: float
  epsilon: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, sublayer, *, deterministic: bool):
    """x: [batch, length, d_model]; sublayer: a function of the (normalised) x."""
    norm = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype, name='norm')
    y = sublayer(norm(x) if self.pre_ln else x)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return x + y if self.pre_ln else norm(x + y)


class LayerFields(nn.Module):
  """The fields shared by encoder and decoder layers: heads, FFN width d_ff, dropout on
  sub-layer outputs / attention weights / inside the FFN, pre- or post-LN, LayerNorm
  epsilon and the compute dtype."""
  num_heads: int
  d_ff: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  relu_dropout_rate: float = 0.0
  pre_ln: bool = False
  epsilon: float = 1e-6
  attention_impl: str = 'auto'
  dtype: Any = jnp.float32


class EncoderLayer(LayerFields):
  """Self-attention and feed-forward sub-layers (Sec. 3.1, encoder)."""

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    """x: [batch, source_length, d_model]; mask: bool [batch, 1, source_length,
    source_length] (a query row per position: packed rows attend within their sequence)."""
    sub = lambda name: SubLayer(self.pre_ln, self.dropout_rate, self.epsilon, self.dtype, name=name)
    attention = layers.MultiHeadAttention(self.num_heads, self.attention_dropout_rate,
                                          self.attention_impl, dtype=self.dtype,
                                          name='self_attention')
    x = sub('attention_block')(
        x, lambda y: attention(y, mask=mask, deterministic=deterministic), deterministic=deterministic)
    mlp = layers.MlpBlock(self.d_ff, self.relu_dropout_rate, activation=nn.relu, dtype=self.dtype,
                          name='feed_forward')
    return sub('feed_forward_block')(x, lambda y: mlp(y, deterministic=deterministic),
                                     deterministic=deterministic)


class DecoderLayer(LayerFields):
  """Causal self-attention, cross-attention and feed-forward sub-layers (Sec. 3.1, decoder)."""

  @nn.compact
  def __call__(self, x: jax.Array, encoded: Optional[jax.Array], self_mask: Optional[jax.Array],
               cross_mask: jax.Array, *, deterministic: bool, decode: bool = False) -> jax.Array:
    """x: [batch, target_length, d_model]; encoded: [batch, source_length, d_model];
    self_mask: bool [batch, 1, target_length, target_length];
    cross_mask: bool [batch, 1, target_length, source_length].

    decode=True: self_mask is None; the cross-attention reads the keys and values its
    first call projected and cached (MultiHeadAttention), so later calls may pass
    encoded=None, and x may have a multiple of the source rows (beams; cross_mask
    is then [sources, 1, 1, source_length])."""
    sub = lambda name: SubLayer(self.pre_ln, self.dropout_rate, self.epsilon, self.dtype, name=name)
    attn = lambda name: layers.MultiHeadAttention(self.num_heads, self.attention_dropout_rate,
                                                  self.attention_impl, dtype=self.dtype,
                                                  name=name)
    self_attention, cross_attention = attn('self_attention'), attn('cross_attention')
    x = sub('self_attention_block')(
        x, lambda y: self_attention(y, mask=self_mask, deterministic=deterministic, decode=decode),
        deterministic=deterministic)
    x = sub('cross_attention_block')(
        x, lambda y: cross_attention(y, encoded, mask=cross_mask, deterministic=deterministic,
                                     decode=decode),
        deterministic=deterministic)
    mlp = layers.MlpBlock(self.d_ff, self.relu_dropout_rate, activation=nn.relu, dtype=self.dtype,
                          name='feed_forward')
    return sub('feed_forward_block')(x, lambda y: mlp(y, deterministic=deterministic),
                                     deterministic=deterministic)


class DecodePosition(nn.Module):
  """The position of the token being decoded: a counter in the 'cache' collection,
  created (at 0) by the first call and advanced by each later one."""

  @nn.compact
  def __call__(self) -> jax.Array:
    # Counted from the variable's existence, not `is_initializing()`: the cache is
    # built under `apply` (`Transformer.init_cache`), which must not advance it.
    initialised = self.has_variable('cache', 'index')
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    position = index.value
    if initialised:
      index.value = position + 1
    return position


class Transformer(nn.Module):
  """Encoder-decoder Transformer over token ids (0 = padding).

  Attributes:
    source_vocab_size, target_vocab_size: vocabulary sizes (ids include the specials).
    d_model, num_heads, d_ff, num_encoder_layers, num_decoder_layers: sizes (SIZES).
    dropout_rate: on embeddings + positions and on every sub-layer output (P_drop).
    attention_dropout_rate, relu_dropout_rate: on attention weights / inside the FFN.
    share_embeddings: 'none'; 'decoder' (target embedding = output projection, Sec. 3.4);
      'all' (also the source embedding; needs one shared vocabulary).
    position_encoding: 'sinusoidal' (Sec. 3.5) or 'learned'.
    pre_ln: pre-LN sub-layers plus a final LayerNorm in each stack; post-LN otherwise.
    max_length: longest sequence (learned positions; the decoding cache).
    attention_impl: the attention core, one of nets.layers.ATTENTION_IMPLS ('auto': cuDNN
      flash attention on a GPU in bfloat16/float16, batched matmuls elsewhere).
    dtype: compute dtype; parameters stay float32.
  """
  source_vocab_size: int
  target_vocab_size: int
  d_model: int = 512
  num_heads: int = 8
  d_ff: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  relu_dropout_rate: float = 0.0
  share_embeddings: str = 'none'
  position_encoding: str = 'sinusoidal'
  pre_ln: bool = False
  layer_norm_epsilon: float = 1e-6
  max_length: int = 256
  attention_impl: str = 'auto'
  dtype: Any = jnp.float32

  def setup(self):
    if self.share_embeddings not in SHARE_EMBEDDINGS:
      raise ValueError(f'Unknown share_embeddings {self.share_embeddings!r}; valid: '
                       f'{list(SHARE_EMBEDDINGS)}')
    if self.position_encoding not in POSITION_ENCODINGS:
      raise ValueError(f'Unknown position_encoding {self.position_encoding!r}; valid: '
                       f'{list(POSITION_ENCODINGS)}')
    if self.share_embeddings == 'all' and self.source_vocab_size != self.target_vocab_size:
      raise ValueError("share_embeddings='all' needs one vocabulary: source_vocab_size "
                       f'{self.source_vocab_size} != target_vocab_size {self.target_vocab_size}')
    embed = lambda n, name: nn.Embed(n, self.d_model, dtype=self.dtype, name=name,
                                     embedding_init=nn.initializers.normal(self.d_model ** -0.5))
    self.target_embed = embed(self.target_vocab_size, 'target_embed')
    self.source_embed = (self.target_embed if self.share_embeddings == 'all'
                         else embed(self.source_vocab_size, 'source_embed'))
    if self.position_encoding == 'learned':
      init = nn.initializers.normal(0.02)
      self.source_positions = self.param('source_positions', init, (self.max_length, self.d_model))
      self.target_positions = self.param('target_positions', init, (self.max_length, self.d_model))
    else:
      table = jnp.asarray(sinusoidal_position_encoding(self.max_length, self.d_model))
      self.source_positions = self.target_positions = table
    kwargs = dict(num_heads=self.num_heads, d_ff=self.d_ff, dropout_rate=self.dropout_rate,
                  attention_dropout_rate=self.attention_dropout_rate,
                  relu_dropout_rate=self.relu_dropout_rate, pre_ln=self.pre_ln,
                  epsilon=self.layer_norm_epsilon, attention_impl=self.attention_impl,
                  dtype=self.dtype)
    self.encoder_layers = [EncoderLayer(**kwargs, name=f'encoder_layer{i}')
                           for i in range(self.num_encoder_layers)]
    self.decoder_layers = [DecoderLayer(**kwargs, name=f'decoder_layer{i}')
                           for i in range(self.num_decoder_layers)]
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, name=name)
    if self.pre_ln:
      self.encoder_norm, self.decoder_norm = norm('encoder_norm'), norm('decoder_norm')
    if self.share_embeddings == 'none':
      self.output_projection = nn.Dense(self.target_vocab_size, dtype=self.dtype,
                                        name='output_projection')
    self.dropout = nn.Dropout(self.dropout_rate)
    self.decode_position = DecodePosition(name='decode_position')

  def _embed(self, embed, positions, ids, position_ids, offset, deterministic):
    length = ids.shape[1]
    if offset is None and length > self.max_length:
      raise ValueError(f'sequence length {length} exceeds max_length {self.max_length}')
    x = embed(ids) * jnp.sqrt(self.d_model).astype(self.dtype)
    if position_ids is not None:  # Packed rows: positions restart at every sequence.
      pos = jnp.take(positions, position_ids, axis=0)
    elif offset is not None:
      pos = jax.lax.dynamic_slice_in_dim(positions, offset, length)
    else:
      pos = positions[:length]
    return self.dropout(x + pos.astype(self.dtype), deterministic=deterministic)

  def encode(self, source: jax.Array, *, source_segment_ids: Optional[jax.Array] = None,
             source_position_ids: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
    """source: [batch, source_length] int32 -> encoded [batch, source_length, d_model].

    Packed rows (several sequences per row, e.g. Grain's packing) give
    source_segment_ids (1, 2, ... per sequence, 0 on padding) and source_position_ids
    [batch, source_length] int32: tokens attend within their own sequence only and
    positions restart at 0 for each.
    """
    mask = _attention_mask(source.shape[1], source > 0, source_segment_ids, source_segment_ids)
    x = self._embed(self.source_embed, self.source_positions, source, source_position_ids,
                    None, not train)
    for layer in self.encoder_layers:
      x = layer(x, mask, deterministic=not train)
    return self.encoder_norm(x) if self.pre_ln else x

  def decode(self, encoded: Optional[jax.Array], source: jax.Array, target_in: jax.Array, *,
             source_segment_ids: Optional[jax.Array] = None,
             target_segment_ids: Optional[jax.Array] = None,
             target_position_ids: Optional[jax.Array] = None,
             train: bool = False, decode: bool = False) -> jax.Array:
    """Logits [batch, target_length, target_vocab_size] float32 of the next token.

    target_in: [batch, target_length] int32, the targets shifted right (starting with
    the start token). Segment and position ids: as in `encode`, for packed rows.
    decode=True: one position per call, target_in [rows, 1], with the 'cache'
    collection from `init_cache` mutable; source [sources, source_length] is the one
    the cache was built for, not repeated per beam (rows = sources * beam_size, each
    source's beams adjacent), and encoded is not read (None is fine): the cache holds
    its cross-attention keys and values.
    """
    if decode:
      offset = self.decode_position()
      self_mask = None
      cross_mask = (source > 0)[:, None, None, :]
    else:
      offset = None
      length = target_in.shape[1]
      causal = jnp.tril(jnp.ones((length, length), bool))
      self_mask = causal[None, None] & _attention_mask(
          length, target_in > 0, target_segment_ids, target_segment_ids)
      cross_mask = _attention_mask(length, source > 0, target_segment_ids, source_segment_ids)
    x = self._embed(self.target_embed, self.target_positions, target_in, target_position_ids,
                    offset, not train)
    for layer in self.decoder_layers:
      x = layer(x, encoded, self_mask, cross_mask, deterministic=not train, decode=decode)
    if self.pre_ln:
      x = self.decoder_norm(x)
    if self.share_embeddings == 'none':
      logits = self.output_projection(x)
    else:
      logits = self.target_embed.attend(x)
    return logits.astype(jnp.float32)

  @nn.nowrap
  def init_cache(self, variables, encoded: jax.Array, source: jax.Array, max_length: int,
                 beam_size: int = 1):
    """The decoding cache, {'cache': ...} to pass (mutable) to `decode(..., decode=True)`.

    variables: the model's {'params': ...}; encoded: [batch, source_length, d_model]
    from `encode`; source: [batch, source_length] int32. Holds, per decoder layer, the
    cross-attention keys and values of `encoded` ([batch, heads, source_length,
    head_dim], projected here once instead of at every step, and once per source,
    not per beam) and an empty self-attention cache ([batch * beam_size, heads,
    max_length, head_dim]) for batch * beam_size rows of up to `max_length` tokens,
    each source's beam_size rows adjacent (as `jnp.repeat(x, beam_size, axis=0)`
    lays them out).
    """
    variables = {k: v for k, v in variables.items() if k != 'cache'}
    target = jnp.zeros((source.shape[0] * beam_size, max_length), jnp.int32)
    # One decode=True call creates every cache variable: the self-attention ones as
    # zeros sized by `target`, the cross-attention ones from `encoded`. Its logits are
    # discarded, so under jit (decoding always runs under one) XLA removes that pass
    # and only the key/value projections are computed.
    _, cache = self.apply(variables, encoded, source, target, decode=True, mutable=['cache'],
                          method=Transformer.decode)
    return {'cache': cache['cache']}

  def __call__(self, source: jax.Array, target_in: jax.Array, *,
               source_segment_ids: Optional[jax.Array] = None,
               target_segment_ids: Optional[jax.Array] = None,
               source_position_ids: Optional[jax.Array] = None,
               target_position_ids: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """Teacher-forced logits [batch, target_length, target_vocab_size] float32.

    source: [batch, source_length] int32; target_in: [batch, target_length] int32
    (targets shifted right); optional segment/position ids for packed rows (`encode`).
    Raises ValueError for sequences longer than max_length.
    """
    encoded = self.encode(source, source_segment_ids=source_segment_ids,
                          source_position_ids=source_position_ids, train=train)
    return self.decode(encoded, source, target_in, source_segment_ids=source_segment_ids,
                       target_segment_ids=target_segment_ids,
                       target_position_ids=target_position_ids, train=train)


def _attention_mask(query_length: int, key_valid: jax.Array,
                    query_segments: Optional[jax.Array],
                    key_segments: Optional[jax.Array]) -> jax.Array:
  """bool [batch, 1, query_length, kv_length]: the key is a real token (not padding)
  and, for packed rows, in the query's sequence. key_valid: [batch, kv_length] bool;
  segments: [batch, length] int32, or None for one sequence per row."""
  mask = jnp.broadcast_to(key_valid[:, None, :],
                          (key_valid.shape[0], query_length, key_valid.shape[1]))
  if query_segments is not None:
    mask = mask & (query_segments[:, :, None] == key_segments[:, None, :])
  return mask[:, None]


def transformer(size: str, **overrides) -> Transformer:
  """A named size ('base', 'big', 'g2p_small', 'g2p_tiny') with `overrides` on top."""
  return Transformer(**{**SIZES[size], **overrides})
