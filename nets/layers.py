"""Building blocks shared by the model families.

Attention follows Vaswani et al. 2017, "Attention Is All You Need", Sec. 3.2
(scaled dot-product attention, Eq. 1, and multi-head attention). Stochastic depth
follows Huang et al. 2016, "Deep Networks with Stochastic Depth".

Every module computes in `dtype` (e.g. bfloat16) and keeps its parameters in
`param_dtype` (float32), so mixed precision is one constructor argument.
"""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

Dtype = Any

# How the attention core is computed (MultiHeadAttention.attention_impl):
#   'matmul': this module's batched-matmul formulation (the fastest measured on CPU);
#   'xla':    jax.nn.dot_product_attention(implementation='xla');
#   'cudnn':  jax.nn.dot_product_attention(implementation='cudnn'), cuDNN's fused flash
#             attention (NVIDIA GPUs; float16/bfloat16, head_dim a multiple of 8, <= 128);
#   'auto':   'cudnn' where it applies (GPU backend, half-precision compute, a supported
#             head_dim, no attention dropout in this call, and cuDNN accepts the call's
#             shapes and mask), else 'matmul'.
ATTENTION_IMPLS = ('auto', 'matmul', 'xla', 'cudnn')


def resolve_attention_impl(impl: str, *, dtype: Dtype, head_dim: int,
                           dropout_active: bool) -> str:
  """The concrete attention core ('matmul', 'xla' or 'cudnn') for `impl` (ATTENTION_IMPLS).

  Raises:
    ValueError: an unknown impl, or attention dropout with 'xla'/'cudnn' (jax.nn's fused
      attention has no dropout on the weights).
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'Unknown attention_impl {impl!r}; valid: {ATTENTION_IMPLS}')
  if impl == 'auto':
    fused_ok = (jax.default_backend() == 'gpu' and not dropout_active
                and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
                and head_dim % 8 == 0 and head_dim <= 128)
    return 'cudnn' if fused_ok else 'matmul'
  if impl != 'matmul' and dropout_active:
    raise ValueError(f'attention_impl={impl!r} has no attention dropout; set '
                     f"attention_dropout_rate=0 or use 'matmul' / 'auto'")
  return impl


def pad_to_even_lengths(query: jax.Array, key: jax.Array, value: jax.Array,
                        mask: Optional[jax.Array]
                        ) -> tuple[jax.Array, jax.Array, jax.Array, Optional[jax.Array],
                                   Optional[jax.Array]]:
  """Pads query and key/value sequences to even lengths, the padded keys masked out.

  JAX's cuDNN attention refuses odd sequence lengths in training ("Unsupported sequence
  length Q 197, KV 197": ViT-B/16's 196 patches + class token; JAX 0.11.2 on an H100,
  and the same check in 0.10.2's source). Padding by one position gives the same
  attention for every real query that may attend to at least one key (outputs and
  gradients); a query with no allowed key gets another arbitrary value (its weights
  spread over the padded key too), as it does anywhere. On an H100 a ViT-B/16 batch of
  256 then takes 1.28 ms forward and backward with cuDNN against 2.47 ms with the
  matmul core (README, "GPU: the benchmark suite on an H100").

  Args:
    query: [batch, q_length, heads, head_dim]; key, value: [batch, kv_length, heads,
      head_dim].
    mask: None, or boolean [b, h, q_length, kv_length] (b, h may be 1; the lengths
      in full).

  Returns:
    (query, key, value, mask, key_value_seq_lengths), lengths rounded up to even.
    Without a mask the padded keys are excluded by key_value_seq_lengths ([batch]
    int32, cuDNN's padding mask); with one, by the mask padded with False for them
    (and True for the padded query rows, which are sliced off by the caller, so no
    row is fully masked). key_value_seq_lengths is None when the mask is returned.
  """
  q_length, kv_length = query.shape[1], key.shape[1]
  if mask is not None and mask.shape[-2:] != (q_length, kv_length):
    raise ValueError(f'mask {mask.shape} must end in the full lengths ({q_length}, {kv_length})')
  q_pad, kv_pad = q_length % 2, kv_length % 2
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))
  query, key, value = pad(query, q_pad), pad(key, kv_pad), pad(value, kv_pad)
  if mask is None:
    return query, key, value, None, jnp.full((query.shape[0],), kv_length, jnp.int32)
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, kv_pad)), constant_values=False)
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, q_pad), (0, 0)), constant_values=True)
  return query, key, value, mask, None


def dot_product_attention(query: jax.Array,
                          key: jax.Array,
                          value: jax.Array,
                          mask: Optional[jax.Array] = None,
                          *,
                          dropout_rate: float = 0.0,
                          dropout_rng: Optional[jax.Array] = None,
                          deterministic: bool = True,
                          implementation: str = 'matmul') -> jax.Array:
  """Scaled dot-product attention, softmax(Q K^T / sqrt(d)) V (Vaswani et al. 2017, Eq. 1).

  The one attention core of the codebase (ViT and the Transformer use it). With
  implementation='matmul', heads are moved next to the batch so both products are plain
  batched matmuls, which XLA's CPU backend runs 3-4x faster than the equivalent einsum
  over [b, l, h, d]; 'xla' and 'cudnn' hand the same computation to
  jax.nn.dot_product_attention (cuDNN flash attention, Dao 2023, on NVIDIA GPUs; odd
  lengths padded to even for it by pad_to_even_lengths).

  Args:
    query: [batch, q_length, heads, head_dim].
    key: [batch, kv_length, heads, head_dim].
    value: [batch, kv_length, heads, head_dim].
    mask: optional boolean, broadcastable to [batch, heads, q_length, kv_length];
      True where attention is allowed.
    dropout_rate: dropout probability on the attention weights.
    dropout_rng: PRNG key, required when dropout is active.
    deterministic: disables dropout when True.
    implementation: 'matmul', 'xla' or 'cudnn' (resolve_attention_impl gives one).

  Returns:
    [batch, q_length, heads, head_dim] in the dtype of `query`.
  """
  if implementation != 'matmul':
    q_length, kv_length = query.shape[1], key.shape[1]
    if mask is not None:
      mask = jnp.broadcast_to(mask, mask.shape[:-2] + (q_length, kv_length))
      mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape).astype(bool)
    kv_lengths = None
    # Padded whether or not a mask is given: JAX (0.10-0.11) stands a zero placeholder
    # in for a missing bias before its length check, so every odd length is refused in
    # training; forward-only calls (evaluation, decoding) are padded alike, which
    # cuDNN would accept unpadded, as the trace cannot tell them apart.
    if implementation == 'cudnn' and (q_length % 2 or kv_length % 2):
      query, key, value, mask, kv_lengths = pad_to_even_lengths(query, key, value, mask)
    out = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                       key_value_seq_lengths=kv_lengths,
                                       implementation=implementation)
    return out[:, :q_length]  # Without the padded query row, if any.
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # (B, L, H, D) -> (B, H, L, D)
  query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
  logits = jnp.matmul(heads_first(query), jnp.swapaxes(heads_first(key), -1, -2))  # (B, H, Q, K)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  # Softmax in float32: bf16 exponentials lose too much precision.
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0).astype(query.dtype)
  return heads_first(jnp.matmul(weights, heads_first(value)))


class MultiHeadAttention(nn.Module):
  """Multi-head attention (Vaswani et al. 2017, Sec. 3.2.2).

  Separate query/key/value projections to [heads, head_dim] and an output
  projection, the layout of `torch.nn.MultiheadAttention` split per head.

  Attributes:
    num_heads: number of heads; `features` of the input must divide by it.
    dropout_rate: dropout on the attention weights.
    attention_impl: the attention core, one of ATTENTION_IMPLS ('auto': cuDNN flash
      attention on a GPU in bfloat16/float16, the batched-matmul formulation elsewhere).
  """
  num_heads: int
  dropout_rate: float = 0.0
  attention_impl: str = 'auto'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: Optional[jax.Array] = None,
               mask: Optional[jax.Array] = None, *, deterministic: bool = True,
               decode: bool = False) -> jax.Array:
    """Attends from `inputs_q` [batch, q_length, features] to `inputs_kv`
    [batch, kv_length, features] (self-attention when None); returns
    [batch, q_length, features]. Raises ValueError if features % num_heads != 0.

    decode: incremental decoding with the 'cache' collection (mutable). The first call
    with decode=True creates this module's cache; each later call takes one position
    [batch, 1, features].
      Self-attention (inputs_kv None): the first call only sizes the cache, from
      inputs of the maximum length (under `init` or `jax.eval_shape`: only shapes are
      used); each later call writes its key and value at the cache index and attends
      to all positions written so far (`mask` is then ignored: earlier positions only).
      Cross-attention (inputs_kv given at the first call): the first call projects
      inputs_kv [source_batch, kv_length, features] to keys and values and stores them
      (so it must see the real inputs and parameters, under `apply`); later calls
      attend to the stored ones and ignore inputs_kv (None is fine). The query batch
      may be g * source_batch, rows i * g ... i * g + g - 1 reading source row i (beam
      search: each input repeated g times), so keys and values are kept once per
      source, not once per beam; `mask` must then broadcast to [source_batch, 1, 1,
      kv_length].
    """
    features = inputs_q.shape[-1]
    if features % self.num_heads:
      raise ValueError(f'features ({features}) must be divisible by num_heads ({self.num_heads})')
    head_dim = features // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype,
                                         param_dtype=self.param_dtype,
                                         kernel_init=self.kernel_init, name=name)
    query = dense('query')(inputs_q)
    # Cached keys and values are stored heads first, [batch, heads, length, head_dim],
    # the layout dot_product_attention computes in: its transposes of the swapped
    # views below then cancel (XLA folds transpose pairs) instead of copying the whole
    # cache twice per step, which on a CPU costs 5x the attention itself.
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)
    cross = decode and (inputs_kv is not None or self.has_variable('cache', 'cross_key'))
    if not cross:
      inputs_kv = inputs_q if inputs_kv is None else inputs_kv
      key, value = dense('key')(inputs_kv), dense('value')(inputs_kv)
    elif self.has_variable('cache', 'cross_key'):
      # The source does not change while decoding: projecting it again at every step,
      # in every layer, would redo the first call's work (kv_length positions against
      # the step's one) for nothing.
      key = heads_first(self.get_variable('cache', 'cross_key'))
      value = heads_first(self.get_variable('cache', 'cross_value'))
    else:
      key, value = dense('key')(inputs_kv), dense('value')(inputs_kv)
      self.put_variable('cache', 'cross_key', heads_first(key))
      self.put_variable('cache', 'cross_value', heads_first(value))
    if decode and not cross:
      initialised = self.has_variable('cache', 'cached_key')
      shape = heads_first(key).shape
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, value.dtype)
      index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
      if initialised:
        if query.shape[1] != 1:
          raise ValueError(f'decode=True takes one position at a time, got {query.shape[1]}')
        i = index.value
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, heads_first(key),
                                                        (0, 0, i, 0))
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, heads_first(value),
                                                          (0, 0, i, 0))
        index.value = i + 1
        key, value = heads_first(cached_key.value), heads_first(cached_value.value)
        mask = (jnp.arange(key.shape[1]) <= i)[None, None, None, :]  # (1, 1, 1, max_length)
    dropout_active = not deterministic and self.dropout_rate > 0
    impl = resolve_attention_impl(self.attention_impl, dtype=query.dtype, head_dim=head_dim,
                                  dropout_active=dropout_active)
    dropout_rng = self.make_rng('dropout') if dropout_active else None
    batch, q_length = query.shape[:2]
    if cross:
      # A source's g beams as g * q_length query positions of its row: its keys are
      # read once per step for all of them, in [g, head_dim] x [head_dim, kv_length]
      # products rather than g vector products over g copies.
      query = query.reshape((key.shape[0], -1) + query.shape[2:])
    attend = lambda impl: dot_product_attention(
        query, key, value, mask, dropout_rate=self.dropout_rate, dropout_rng=dropout_rng,
        deterministic=deterministic, implementation=impl)
    try:
      out = attend(impl)
    except (ValueError, NotImplementedError) as e:
      # jax.nn raises these at trace time for shapes/masks cuDNN does not support (odd
      # lengths, e.g. a decoding step's one query, are padded to even by
      # dot_product_attention); 'auto' then computes the same attention with the matmul
      # core, and says so once per trace.
      if self.attention_impl != 'auto' or impl == 'matmul':
        raise
      logging.warning('attention_impl=auto: cuDNN refused query %s, key %s (%s); '
                      'using the matmul core.', query.shape, key.shape, e)
      out = attend('matmul')
    out = out.reshape((batch, q_length) + out.shape[2:])
    return nn.DenseGeneral(features, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=self.kernel_init, name='out')(out)


class MlpBlock(nn.Module):
  """Position-wise feed-forward network: Dense -> activation -> dropout -> Dense.

  (Vaswani et al. 2017, Sec. 3.3; GELU in ViT, Dosovitskiy et al. 2021, Eq. 3.)
  """
  mlp_dim: int
  dropout_rate: float = 0.0
  activation: Callable = nn.gelu
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """x: [..., features] -> [..., features]."""
    dense = lambda f: nn.Dense(f, dtype=self.dtype, param_dtype=self.param_dtype,
                               kernel_init=nn.initializers.xavier_uniform(),
                               bias_init=nn.initializers.normal(stddev=1e-6))
    y = self.activation(dense(self.mlp_dim)(x))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return dense(x.shape[-1])(y)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example (Huang et al. 2016).

  Surviving branches are scaled by 1 / (1 - rate) so eval needs no rescaling.
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """x: [batch, ...] -> same shape."""
    if deterministic or self.rate == 0.0:
      return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.rate, shape)
    return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


# --- Convolutional blocks (ResNet, MobileNetV2) -------------------------------------------

# He et al. 2015 ("Delving Deep into Rectifiers", Sec. 2.2) normal init with fan_out, as in
# the reference ResNet/MobileNetV2 implementations.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

BN_MOMENTUM = 0.9   # Flax convention: running = m * running + (1 - m) * batch, so 0.9 here is
                    # PyTorch's BatchNorm2d(momentum=0.1), the reference ResNet setting.
BN_EPSILON = 1e-5   # PyTorch's default.


def batch_norm(*, train: bool, axis_name: Optional[str] = None, zero_init: bool = False,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: Optional[str] = None) -> nn.BatchNorm:
  """BatchNorm over [batch, height, width] (Ioffe & Szegedy 2015, Alg. 1).

  In training it normalises with the statistics of the current batch and updates the
  running averages in the 'batch_stats' collection; otherwise it uses the running
  averages and changes nothing. Under the jit engine the batch is one global array,
  so its statistics are already those of the global batch; under pmap, `axis_name`
  ('data') averages the per-device moments over all devices (synchronised BatchNorm).

  zero_init: start the scale gamma at 0, so a residual branch starts as the identity
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      axis_name=axis_name if train else None,
                      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
                      dtype=dtype, param_dtype=param_dtype, name=name)


def _depthwise_taps(x: jax.Array, k: int, strides: int, out_hw: tuple[int, int]) -> list:
  """The k^2 views x_pad[:, i::s, j::s] (padding k // 2), each [batch, h', w', channels],
  in kernel order (i, j)."""
  pad, s, (out_h, out_w) = k // 2, strides, out_hw
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return [padded[:, i:i + s * (out_h - 1) + 1:s, j:j + s * (out_w - 1) + 1:s]
          for i in range(k) for j in range(k)]


def _depthwise_sum(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
  k, pad = kernel.shape[0], kernel.shape[0] // 2
  out_hw = tuple((n + 2 * pad - k) // strides + 1 for n in x.shape[1:3])
  taps = _depthwise_taps(x, k, strides, out_hw)
  out = taps[0] * kernel[0, 0]
  for t, tap in enumerate(taps[1:], 1):
    out = out + tap * kernel[t // k, t % k]
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_shifted(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
  """Depthwise k x k convolution, padding k // 2, as the sum over the k^2 taps (i, j) of
  the shifted, strided view x_pad[:, i::s, j::s] times kernel[i, j].

  x: [batch, h, w, channels]; kernel: [k, k, channels] -> [batch, h', w', channels].

  Its VJP (reverse mode, first order; `jax.jvp` through it raises) keeps x as the
  residual, not the k^2 views, writes dy once (`_written_once`), and computes the
  kernel gradient sum_{b,h,w} view_ij * dy for all taps in one pass over x and dy (a
  variadic reduction over the batch, then over space). Autodiff of the sum would
  materialise every view in the forward pass and reduce the k^2 products one at a
  time, which XLA's CPU backend does 3x slower (README: "Where the MobileNetV2 step
  spends its time"). Its dx is the VJP of the shifted sum (the unused primal is
  removed by XLA).
  """
  return _depthwise_sum(x, kernel, strides)


def _written_once(x: jax.Array, predicate_from: jax.Array) -> jax.Array:
  """x, computed into its own buffer before its consumers run. XLA fuses elementwise
  producers into each consumer; read at k^2 shifted offsets by the depthwise VJP, the
  next layer's BatchNorm and ReLU6 backward would be recomputed k^2 times per element
  (the MobileNetV2 step: 940 -> 847 ms with this). `optimization_barrier` does not stop
  fusion on XLA's CPU backend; a conditional's operand is always materialised. Both
  branches return x's values, whatever the predicate; it is read from the small,
  replicated `predicate_from` (the kernel) so that a batch-sharded x needs no
  collective to decide it."""
  first = predicate_from.ravel()[0]
  return jax.lax.cond(first == first, lambda v: v, lambda v: v * 1, x)


def _depthwise_fwd(x, kernel, strides):
  return _depthwise_sum(x, kernel, strides), (x, kernel)


def _depthwise_bwd(strides, residuals, dy):
  x, kernel = residuals
  k = kernel.shape[0]
  dy = _written_once(dy, kernel)
  _, vjp_x = jax.vjp(lambda x: _depthwise_sum(x, kernel, strides), x)
  dx, = vjp_x(dy)
  dy32 = dy.astype(jnp.float32)  # Accumulate in float32 whatever the compute dtype.
  products = [tap.astype(jnp.float32) * dy32
              for tap in _depthwise_taps(x, k, strides, dy.shape[1:3])]
  per_position = jax.lax.reduce(products, [jnp.float32(0)] * len(products),
                                lambda a, b: [u + v for u, v in zip(a, b)], (0,))
  dkernel = jnp.stack([p.sum((0, 1)) for p in per_position]).reshape(kernel.shape)
  return dx, dkernel.astype(kernel.dtype)


depthwise_shifted.defvjp(_depthwise_fwd, _depthwise_bwd)


DEPTHWISE_IMPLS = ('auto', 'xla', 'shifted')


class Conv(nn.Module):
  """A bias-free k x k convolution with symmetric padding k // 2, as `torch.nn.Conv2d(...,
  padding=k // 2, bias=False)`: output side floor((n + 2 (k // 2) - k) / s) + 1. (Flax's
  'SAME' pads asymmetrically for stride 2 and would shift the sampling grid.)

  One parameter, 'kernel' [k, k, in_channels / groups, features] (the layout of
  `nn.Conv`), whatever the lowering. Two cases get a faster lowering than XLA's
  generic convolution, which on the CPU backend is slow for them (README: Results):
    1x1, groups = 1: a matmul over channels (of the strided subsample when s > 1);
    depthwise (groups = in_channels = features), with `depthwise_impl`:
      'xla': `lax.conv_general_dilated` with feature_group_count (cuDNN's depthwise
        kernels on GPU);
      'shifted': the sum over the k^2 taps of a shifted, strided view of the input
        times that tap's per-channel weight, elementwise work XLA fuses; 5-30x faster
        than 'xla' on CPU, forward and backward;
      'auto': 'shifted' on CPU, 'xla' elsewhere.

  Attributes:
    features: output channels.
    kernel_size, strides: k and s (square).
    groups: feature groups of the convolution.
    depthwise_impl: 'auto', 'xla' or 'shifted'.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  depthwise_impl: str = 'auto'
  kernel_init: Callable = conv_kernel_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, h, w, in_channels] -> [batch, h', w', features].

    Raises ValueError if in_channels or features do not divide by groups, or for an
    unknown depthwise_impl.
    """
    k, s, groups, channels = self.kernel_size, self.strides, self.groups, x.shape[-1]
    if channels % groups or self.features % groups:
      raise ValueError(f'input channels ({channels}) and features ({self.features}) must be '
                       f'divisible by groups ({groups})')
    if self.depthwise_impl not in DEPTHWISE_IMPLS:
      raise ValueError(f'Unknown depthwise_impl {self.depthwise_impl!r}; valid: '
                       f'{list(DEPTHWISE_IMPLS)}')
    kernel = self.param('kernel', self.kernel_init, (k, k, channels // groups, self.features),
                        self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    pad = k // 2
    if k == 1 and groups == 1:
      return x[:, ::s, ::s] @ kernel[0, 0]
    impl = self.depthwise_impl
    if impl == 'auto':
      impl = 'shifted' if jax.default_backend() == 'cpu' else 'xla'
    if groups == channels == self.features and impl == 'shifted':
      return depthwise_shifted(x, kernel[:, :, 0], s)
    return jax.lax.conv_general_dilated(x, kernel, (s, s), ((pad, pad), (pad, pad)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=groups)


class ConvBN(nn.Module):
  """Convolution -> BatchNorm -> activation (none when `activation` is None).

  Attributes:
    features: output channels.
    kernel_size, strides, groups, depthwise_impl: of the convolution (see `Conv`).
    activation: e.g. nn.relu, jax.nn.relu6, or None for a linear output.
    zero_init_scale: start the BatchNorm scale at 0 (last BN of a residual branch).
    axis_name: the pmap axis for synchronised BatchNorm, None under jit.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  depthwise_impl: str = 'auto'
  activation: Optional[Callable] = nn.relu
  zero_init_scale: bool = False
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x: [batch, height, width, in_channels] -> [batch, height', width', features]."""
    x = Conv(self.features, self.kernel_size, self.strides, self.groups, self.depthwise_impl,
             dtype=self.dtype, param_dtype=self.param_dtype, name='conv')(x)
    x = batch_norm(train=train, axis_name=self.axis_name, zero_init=self.zero_init_scale,
                   dtype=self.dtype, param_dtype=self.param_dtype, name='bn')(x)
    return x if self.activation is None else self.activation(x)


def check_image(x: jax.Array, num_channels: int, min_size: int, model: str,
                hint: str = '') -> None:
  """Raises ValueError unless x is [batch, height, width, num_channels] with height and
  width >= min_size (the model's total downsampling factor); `hint` ends the message."""
  if x.ndim != 4 or x.shape[-1] != num_channels:
    raise ValueError(f'{model} expects images [batch, height, width, {num_channels}], got shape '
                     f'{tuple(x.shape)}; set the model\'s num_channels to match the data')
  if min(x.shape[1:3]) < min_size:
    raise ValueError(f'{model}: images of {x.shape[1]}x{x.shape[2]} are too small for its '
                     f'downsampling (total stride {min_size}); use images of at least '
                     f'{min_size}x{min_size}{hint}')
