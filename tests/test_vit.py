"""ViT: shapes, published parameter counts, position-embedding interpolation, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets import layers


def _num_params(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(x.size for x in jax.tree.leaves(variables['params']))


# Counts of the reference implementations (the paper's Table 1 rounds them:
# Ti 5.7 M, S 22 M, B 86 M, L 307 M with patch 16 at 224x224, 1000 classes).
@pytest.mark.parametrize('name,expected', [
    ('vit_ti16', 5_717_416), ('vit_s16', 22_050_664), ('vit_b16', 86_567_656),
    ('vit_l16', 304_326_632), ('vit_b32', 88_224_232)])
def test_parameter_counts(name, expected):
  assert _num_params(nets.build(name, num_classes=1000), (1, 224, 224, 3)) == expected


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_output_shape_and_finite(classifier):
  model = nets.build('vit_custom', num_classes=7, image_size=32, patch_size=8, hidden_size=32,
                     num_layers=2, mlp_dim=64, num_heads=4, classifier=classifier,
                     drop_path_rate=0.1, dropout_rate=0.1)
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  chex.assert_shape(logits, (3, 7))
  chex.assert_tree_all_finite(logits)
  assert logits.dtype == jnp.float32


def test_position_embeddings_interpolate_to_new_resolution():
  model = nets.build('vit_custom', num_classes=5, image_size=32, patch_size=8, hidden_size=16,
                     num_layers=1, mlp_dim=32, num_heads=2)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  logits = model.apply(variables, jnp.ones((2, 48, 48, 3)))  # 6x6 grid from a 4x4 one.
  chex.assert_shape(logits, (2, 5))
  chex.assert_tree_all_finite(logits)


def test_bfloat16_compute_keeps_float32_params():
  model = nets.build('vit_custom', num_classes=5, image_size=16, patch_size=4, hidden_size=16,
                     num_layers=1, mlp_dim=32, num_heads=2, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  assert model.apply(variables, jnp.ones((2, 16, 16, 3))).dtype == jnp.float32


def test_bad_inputs_raise_clear_errors():
  model = nets.build('vit_custom', num_classes=5, image_size=32, patch_size=8, hidden_size=16,
                     num_layers=1, mlp_dim=32, num_heads=2)
  with pytest.raises(ValueError, match='channels'):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ValueError, match='multiple of the patch size'):
    model.init(jax.random.key(0), jnp.zeros((1, 30, 30, 3)))
  with pytest.raises(ValueError, match=r"Did you mean \['vit_b16'"):
    nets.build('vit_b61')
  with pytest.raises(ValueError, match='Bad options'):
    nets.build('vit_b16', num_clases=10)


def test_conv_stem_shapes_parameters_and_batch_statistics():
  # Xiao et al. 2021 stem on 28x28: 3x3 stride-2 convolutions 28 -> 14 -> 7 -> 4, then a
  # 1x1 patch embedding: the same 4x4 grid of tokens as patch 7 without a stem.
  kwargs = dict(num_classes=10, image_size=28, num_channels=1, hidden_size=16, num_layers=1,
                mlp_dim=32, num_heads=2)
  plain = nets.build('vit_custom', patch_size=7, **kwargs)
  # The offline default's stem widths: narrower ones compile slower on XLA's CPU backend
  # (LLVM unrolls their small loops; (4, 8, 12) took 11 s against 3 s).
  stem = nets.build('vit_custom', patch_size=1, conv_stem=(16, 32, 64), **kwargs)
  x = jax.random.normal(jax.random.key(1), (6, 28, 28, 1))
  variables = jax.jit(stem.init)(jax.random.key(0), x)
  chex.assert_shape(variables['params']['pos_embedding'], (1, 16, 16))
  # By hand: bias-free 3x3 convolutions 1->16->32->64 with BatchNorm scale and offset, and
  # a 1x1 embedding 64->16 (+ bias) in place of the 7x7 one 1->16 (+ bias).
  stem_params = (9 * 1 * 16 + 2 * 16) + (9 * 16 * 32 + 2 * 32) + (9 * 32 * 64 + 2 * 64) + 64 * 16
  assert _num_params(stem, x.shape) - _num_params(plain, x.shape) == stem_params - 49 * 16
  # Jitted: one compile per call shape instead of one per operation, several times faster.
  apply = jax.jit(stem.apply, static_argnames=('train', 'mutable'))
  logits, updated = apply(variables, x, train=True, mutable=('batch_stats',))
  chex.assert_shape(logits, (6, 10))
  chex.assert_tree_all_finite(logits)
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                       updated['batch_stats'])
  assert all(jax.tree.leaves(moved))  # Training updates every running statistic;
  # evaluation uses them, so an example's logits do not depend on the rest of its batch.
  np.testing.assert_allclose(apply(variables, x[:2]), apply(variables, x)[:2],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='after the 3-stage conv stem is not a multiple'):
    nets.build('vit_custom', patch_size=3, conv_stem=(16, 32, 64), **kwargs).init(
        jax.random.key(0), x)


def test_attention_matches_reference_formula():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 5, 3, 4)).astype(np.float32) for _ in range(3))
  mask = rng.random((2, 1, 5, 5)) > 0.3
  mask[..., 0] = True  # Every query sees at least one key.
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / 2.0
  logits = np.where(mask, logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum('bhqk,bkhd->bqhd', weights, v)
  out = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # Agrees with JAX's own implementation.
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v, mask=mask), atol=1e-5)


def test_attention_impl_auto_picks_cudnn_only_where_it_applies(monkeypatch):
  resolve = lambda **kw: layers.resolve_attention_impl(
      'auto', **{**dict(dtype=jnp.bfloat16, head_dim=64, dropout_active=False), **kw})
  assert jax.default_backend() == 'cpu' and resolve() == 'matmul'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert resolve() == 'cudnn'
  assert resolve(dtype=jnp.float16) == 'cudnn'
  for unsupported in (dict(dtype=jnp.float32), dict(head_dim=12), dict(head_dim=256),
                      dict(dropout_active=True)):
    assert resolve(**unsupported) == 'matmul', unsupported
  assert layers.resolve_attention_impl('xla', dtype=jnp.float32, head_dim=12,
                                       dropout_active=False) == 'xla'
  with pytest.raises(ValueError, match='no attention dropout'):
    layers.resolve_attention_impl('cudnn', dtype=jnp.bfloat16, head_dim=64, dropout_active=True)

  # Where cuDNN refuses a call (jax.nn raises at trace time), 'auto' computes the same
  # attention with the matmul core; a forced 'cudnn' raises.
  real_attention = jax.nn.dot_product_attention

  def refusing_cudnn(*args, implementation=None, **kwargs):
    if implementation == 'cudnn':
      raise NotImplementedError('unsupported by cuDNN')
    return real_attention(*args, implementation=implementation, **kwargs)
  monkeypatch.setattr(jax.nn, 'dot_product_attention', refusing_cudnn)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  mha = lambda impl: layers.MultiHeadAttention(2, attention_impl=impl, dtype=jnp.bfloat16)
  variables = mha('matmul').init(jax.random.key(1), x)
  np.testing.assert_array_equal(mha('auto').apply(variables, x), mha('matmul').apply(variables, x))
  with pytest.raises(NotImplementedError, match='unsupported by cuDNN'):
    mha('cudnn').apply(variables, x)


def test_cudnn_attention_pads_odd_lengths_to_even_with_the_same_result(monkeypatch):
  # cuDNN refuses odd sequence lengths in training (ViT-B/16's 197 tokens); the 'cudnn'
  # path pads them to even and masks the padded keys. Stand-in: jax.nn's XLA path, which
  # reads the same arguments, records the lengths it is given.
  real_attention, seen = jax.nn.dot_product_attention, []

  def cudnn_on_xla(query, key, *args, implementation=None, **kwargs):
    seen.append((query.shape[1], key.shape[1]))
    return real_attention(query, key, *args, implementation='xla', **kwargs)
  monkeypatch.setattr(jax.nn, 'dot_product_attention', cudnn_on_xla)
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 7, 2, 8))
  k, v = k[:, :5], v[:, :5]  # 7 queries, 5 keys
  # Every query may attend to key 0: a query with no allowed key has no defined
  # attention, and the padded key changes what it gets (pad_to_even_lengths).
  mask = jax.random.bernoulli(jax.random.key(1), 0.7, (2, 1, 7, 5)).at[..., 0].set(True)

  def attend(impl, mask):
    loss = lambda q, k, v: jnp.sum(jnp.sin(layers.dot_product_attention(
        q, k, v, mask, implementation=impl)))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
  for m in (None, mask):
    (value, grads), (expected, expected_grads) = attend('cudnn', m), attend('matmul', m)
    assert seen.pop() == (8, 6)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for g, e in zip(grads, expected_grads):
      np.testing.assert_allclose(g, e, atol=1e-5)


def test_drop_path_drops_whole_examples():
  x = jnp.ones((1000, 4))
  y = layers.DropPath(0.25).apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)})
  kept = np.asarray(y[:, 0] > 0)
  assert np.all((np.asarray(y) == 0) | np.isclose(np.asarray(y), 1 / 0.75))
  assert np.all(np.asarray(y).min(1) == np.asarray(y).max(1))  # Whole rows.
  assert 0.7 < kept.mean() < 0.8
