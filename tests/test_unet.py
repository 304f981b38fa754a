"""U-Net and UNet++: head shapes at every depth and level, pruned sub-networks equal to the
full network's heads, per-level costs, input errors, parameter counts against the Keras
reference, BatchNorm (also synchronised under pmap) and the transposed convolution."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets import unet

FILTERS = (4, 8, 16, 32, 64)
CLASSES = 3


def _model(**overrides):
  return unet.UNetPlusPlus(num_classes=CLASSES, filters=FILTERS, **overrides)


@pytest.fixture(scope='module')
def trained():
  """A depth-4 UNet++, its variables after one train-mode step (so the BatchNorm running
  averages are not the initial 0 / 1), and a batch of 2 16x16 RGB images."""
  model = _model()
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), images)
  _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, images)
  return model, {**variables, **updates}, images


def _heads_shapes(model, images_shape, **kwargs):
  images = jax.ShapeDtypeStruct(images_shape, jnp.float32)
  init = lambda x: model.init(jax.random.key(0), x, train=False, **kwargs)
  variables = jax.eval_shape(init, images)
  return variables, jax.eval_shape(lambda v, x: model.apply(v, x, train=False, **kwargs),
                                   variables, images)


@pytest.mark.parametrize('depth', [1, 2, 3, 4])
def test_head_shapes_at_every_depth_and_level(depth):
  for level in [*range(1, depth + 1), None]:
    _, heads = _heads_shapes(_model(depth=depth), (2, 16, 16, 3), level=level)
    assert isinstance(heads, tuple) and len(heads) == (level or depth)
    for head in heads:
      chex.assert_shape(head, (2, 16, 16, CLASSES))
      assert head.dtype == jnp.float32
  _, heads = _heads_shapes(_model(depth=depth, deep_supervision=False), (2, 16, 16, 3))
  assert len(heads) == 1
  chex.assert_shape(heads[0], (2, 16, 16, CLASSES))


def test_pruned_network_computes_only_its_nodes():
  for k in range(1, 5):
    variables, _ = _heads_shapes(_model(), (1, 16, 16, 3), level=k)
    expected = ({f'X_{i}_{j}' for i in range(k + 1) for j in range(k + 1 - i)}
                | {f'up_{i}_{j}' for i in range(k) for j in range(1, k + 1 - i)}
                | {f'head_{j}' for j in range(1, k + 1)})
    assert set(variables['params']) == expected


@pytest.mark.parametrize('jit', [False, True])
def test_pruned_heads_equal_full_network_heads_exactly(trained, jit):
  model, variables, images = trained
  apply = lambda **kw: functools.partial(model.apply, train=False, **kw)
  maybe_jit = jax.jit if jit else (lambda f: f)
  full = maybe_jit(apply())(variables, images)
  assert len(full) == 4 and np.isfinite(np.asarray(full)).all()
  for k in range(1, 5):
    pruned = maybe_jit(apply(level=k))(variables, images)
    assert len(pruned) == k
    for j in range(k):
      np.testing.assert_array_equal(pruned[j], full[j])


def test_level_costs_increase_with_level(trained):
  model, variables, _ = trained
  costs = unet.level_costs(model, (16, 16, 3))
  assert [c['level'] for c in costs] == [1, 2, 3, 4]
  params, gflops = [c['params'] for c in costs], [c['gflops'] for c in costs]
  assert all(a < b for a, b in zip(params, params[1:])), params
  assert all(a < b for a, b in zip(gflops, gflops[1:])), gflops
  assert params[-1] == sum(p.size for p in jax.tree.leaves(variables['params']))
  assert unet.level_costs(model, (16, 16, 3), levels=[2])[0]['params'] == params[1]


def test_bad_inputs_and_options_raise():
  model = _model()
  with pytest.raises(ValueError, match=r'\(1, 18, 16, 3\).*16'):
    _heads_shapes(model, (1, 18, 16, 3))
  _heads_shapes(model, (1, 18, 18, 3), level=1)  # L^1 pools once: a multiple of 2 is enough.
  with pytest.raises(ValueError, match=r'\(1, 18, 18, 3\).*4'):
    _heads_shapes(model, (1, 18, 18, 3), level=2)
  with pytest.raises(ValueError, match=r'\(1, 24, 24, 3\).*16'):
    _heads_shapes(unet.UNet(CLASSES, FILTERS), (1, 24, 24, 3))
  for level in (0, 5):
    with pytest.raises(ValueError, match='level must be in 1..depth'):
      _heads_shapes(model, (1, 16, 16, 3), level=level)
  with pytest.raises(ValueError, match='deep_supervision=True'):
    _heads_shapes(_model(deep_supervision=False), (1, 16, 16, 3), level=2)
  _heads_shapes(_model(deep_supervision=False), (1, 16, 16, 3), level=4)
  with pytest.raises(ValueError, match='depth must be in 1..4'):
    _heads_shapes(_model(depth=5), (1, 32, 32, 3))
  with pytest.raises(ValueError, match='cannot be pruned'):
    _heads_shapes(unet.UNet(CLASSES, FILTERS), (1, 16, 16, 3), level=2)
  with pytest.raises(ValueError, match='deep supervision'):
    _heads_shapes(unet.UNet(CLASSES, FILTERS, deep_supervision=True), (1, 16, 16, 3))


def test_unet_shapes_and_node_names():
  variables, heads = _heads_shapes(unet.UNet(CLASSES, FILTERS, depth=3), (2, 32, 32, 1))
  assert len(heads) == 1
  chex.assert_shape(heads[0], (2, 32, 32, CLASSES))
  assert set(variables['params']) == {'X_0_0', 'X_1_0', 'X_2_0', 'X_3_0', 'X_2_1', 'X_1_2',
                                      'X_0_3', 'up_2_1', 'up_1_2', 'up_0_3', 'head_3'}


def test_parameter_counts_match_keras_reference():
  """MrGiovanni/UNetPlusPlus model_logic.py (1 channel, 1 class): U_Net 7,759,521 and
  Nest_Net 9,041,601; their 3x3 convolutions have a bias where ours have BatchNorm
  (bias -> beta, plus a scale)."""
  for model, keras in ((unet.UNet(1), 7_759_521),
                       (unet.UNetPlusPlus(1, deep_supervision=False), 9_041_601)):
    variables, _ = _heads_shapes(model, (1, 32, 32, 1))
    leaves = jax.tree_util.tree_leaves_with_path(variables['params'])
    total = sum(x.size for _, x in leaves)
    scales = sum(x.size for path, x in leaves if jax.tree_util.keystr(path).endswith("'scale']"))
    assert total - scales == keras


def test_width_scales_filters_and_registry_builds_both():
  assert unet.scaled_filters(unet.FILTERS, 0.25) == (8, 16, 32, 64, 128)
  assert unet.scaled_filters(unet.FILTERS, 0.125) == FILTERS
  assert unet.scaled_filters(unet.FILTERS, 0.01) == (1, 1, 1, 3, 5)
  assert isinstance(nets.build('unetpp', num_classes=2, width=0.125), unet.UNetPlusPlus)
  assert isinstance(nets.build('unet', num_classes=2), unet.UNet)
  a, _ = _heads_shapes(nets.build('unetpp', num_classes=CLASSES, width=0.125), (1, 16, 16, 3))
  b, _ = _heads_shapes(_model(), (1, 16, 16, 3))
  assert jax.tree.map(lambda x: x.shape, a) == jax.tree.map(lambda x: x.shape, b)


def test_batch_norm_statistics_update_in_training(trained):
  model, variables, images = trained
  assert set(variables) == {'params', 'batch_stats'}
  assert set(variables['batch_stats']['X_0_0']['conv1']['bn']) == {'mean', 'var'}
  heads, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  assert len(heads) == 4 and set(updates) == {'batch_stats'}
  before = variables['batch_stats']['X_4_0']['conv2']['bn']['mean']
  after = updates['batch_stats']['X_4_0']['conv2']['bn']['mean']
  assert not np.allclose(before, after)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  variables, heads = _heads_shapes(_model(depth=2, dtype=jnp.bfloat16), (1, 16, 16, 3))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert {h.dtype for h in heads} == {jnp.dtype(jnp.float32)}


def test_synchronised_batch_norm_under_pmap_matches_global_batch():
  model = _model(depth=1, axis_name='data')
  images = jax.random.normal(jax.random.key(2), (8, 8, 8, 3))
  variables = model.init(jax.random.key(0), images[:1], train=False)
  step = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1]
  replicated = jax.tree.map(lambda v: jnp.broadcast_to(v, (8, *v.shape)), variables)
  per_device = jax.pmap(step, axis_name='data')(replicated, images[:, None])
  global_batch = jax.jit(lambda v, x: _model(depth=1).apply(
      v, x, train=True, mutable=['batch_stats'])[1])(variables, images)
  chex.assert_trees_all_close(jax.tree.map(lambda v: v[0], per_device), global_batch,
                              atol=1e-5, rtol=1e-5)


def test_up_conv_is_the_stride_2_transposed_convolution():
  """out[:, 2h + p, 2w + q] = x[:, h, w] @ kernel[p, q] + bias, as torch.nn.ConvTranspose2d."""
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
  layer = unet.UpConv(6)
  variables = layer.init(jax.random.key(0), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # A nonzero bias.
  kernel, bias = variables['params']['kernel'], variables['params']['bias']
  expected = np.zeros((2, 6, 8, 6), np.float32)
  for p in range(2):
    for q in range(2):
      expected[:, p::2, q::2] = np.einsum('bhwc,cf->bhwf', x, kernel[p, q]) + bias
  np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
