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


def _random_variables(model, images_shape, seed=0):
  """Variables with the structure of `model.init`, filled from numpy (kernels ~ N(0, 1 /
  fan_in), BatchNorm scales and variances in [0.5, 1.5)): on this CPU the jitted threefry
  init of the depth-4 UNet++ takes ~1 min to compile, its forward pass ~2 s."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct(images_shape, jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if jax.tree_util.keystr(path).endswith(("'var']", "'scale']")):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    fan_in = np.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 1
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def net():
  """A depth-4 UNet++, random variables (BatchNorm statistics included), and a batch of 2
  16x16 RGB images."""
  model = _model()
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  return model, _random_variables(model, images.shape), images


def _heads_shapes(model, images_shape, **kwargs):
  images = jax.ShapeDtypeStruct(images_shape, jnp.float32)
  init = lambda x: model.init(jax.random.key(0), x, train=False, **kwargs)
  variables = jax.eval_shape(init, images)
  return variables, jax.eval_shape(lambda v, x: model.apply(v, x, train=False, **kwargs),
                                   variables, images)


@pytest.mark.parametrize('depth', [1, 2, 3, 4])
def test_head_shapes_at_every_depth_and_level(depth):
  model = _model(depth=depth)
  variables, _ = _heads_shapes(model, (2, 16, 16, 3))
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  for level in [*range(1, depth + 1), None]:  # The full model's variables serve every level.
    heads = jax.eval_shape(functools.partial(model.apply, train=False, level=level),
                           variables, images)
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


def _assert_pruned_heads_equal_full_heads(model, variables, images, levels, jit):
  apply = lambda **kw: functools.partial(model.apply, train=False, **kw)
  maybe_jit = jax.jit if jit else (lambda f: f)
  full = maybe_jit(apply())(variables, images)
  assert len(full) == model.depth and np.isfinite(np.asarray(full)).all()
  for k in levels:
    pruned = maybe_jit(apply(level=k))(variables, images)
    assert len(pruned) == k
    for j in range(k):
      np.testing.assert_array_equal(pruned[j], full[j])


def test_pruned_heads_equal_full_network_heads_exactly(net):
  _assert_pruned_heads_equal_full_heads(*net, levels=[1, 2, 3, 4], jit=False)


def test_pruned_heads_equal_full_network_heads_exactly_under_jit():
  """L^1 is its own XLA program, yet computes head 1 with the same float ops. (Depth 2
  to keep compiling short; every level at depth 4 is checked op by op above.)"""
  model = _model(depth=2)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  _assert_pruned_heads_equal_full_heads(model, _random_variables(model, images.shape), images,
                                        levels=[1], jit=True)


def test_level_costs_increase_with_level():
  model = _model(depth=3)
  costs = unet.level_costs(model, (8, 8, 3))
  assert [c['level'] for c in costs] == [1, 2, 3]
  params, gflops = [c['params'] for c in costs], [c['gflops'] for c in costs]
  assert all(a < b for a, b in zip(params, params[1:])), params
  assert all(a < b for a, b in zip(gflops, gflops[1:])), gflops
  variables, _ = _heads_shapes(model, (1, 8, 8, 3))
  assert params[-1] == sum(p.size for p in jax.tree.leaves(variables['params']))
  with pytest.raises(ValueError, match='level must be in'):
    unet.level_costs(model, (8, 8, 3), levels=[4])


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


def test_unet_shapes_and_node_names():
  variables, heads = _heads_shapes(unet.UNet(CLASSES, FILTERS, depth=3), (2, 32, 32, 1))
  assert len(heads) == 1
  chex.assert_shape(heads[0], (2, 32, 32, CLASSES))
  assert heads[0].dtype == jnp.float32
  # deep_supervision (shared config field) changes nothing: still one head.
  _, heads = _heads_shapes(unet.UNet(CLASSES, FILTERS, depth=3, deep_supervision=True),
                           (2, 32, 32, 1))
  assert len(heads) == 1
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
  a, _ = _heads_shapes(nets.build('unetpp', num_classes=CLASSES, width=0.125, depth=2),
                       (1, 16, 16, 3))
  b, _ = _heads_shapes(_model(depth=2), (1, 16, 16, 3))
  assert jax.tree.map(lambda x: x.shape, a) == jax.tree.map(lambda x: x.shape, b)


def test_batch_norm_statistics_update_in_training():
  model = _model(depth=1)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  variables = _random_variables(model, images.shape)
  assert set(variables) == {'params', 'batch_stats'}
  assert set(variables['batch_stats']['X_0_0']['conv1']['bn']) == {'mean', 'var'}
  heads, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  assert len(heads) == 1 and set(updates) == {'batch_stats'}
  before = variables['batch_stats']['X_1_0']['conv2']['bn']['mean']
  after = updates['batch_stats']['X_1_0']['conv2']['bn']['mean']
  assert not np.allclose(before, after)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  variables, heads = _heads_shapes(_model(depth=2, dtype=jnp.bfloat16), (1, 16, 16, 3))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert {h.dtype for h in heads} == {jnp.dtype(jnp.float32)}


def test_batch_norm_is_synchronised_over_axis_name_under_pmap():
  """Every BatchNorm of a train step averages its moments over the pmap axis (one pmean of
  [mean, mean of squares] per BatchNorm layer); an eval step has no collectives."""
  model = _model(depth=1, axis_name='data')
  images = jax.ShapeDtypeStruct((8, 2, 8, 8, 3), jnp.float32)
  variables, _ = _heads_shapes(model, (2, 8, 8, 3))
  variables = jax.tree.map(lambda v: jax.ShapeDtypeStruct((8, *v.shape), v.dtype), variables)
  num_bn = len([p for p, _ in jax.tree_util.tree_leaves_with_path(variables['batch_stats'])
                if jax.tree_util.keystr(p).endswith("'mean']")])
  assert num_bn == 6  # X_0_0, X_1_0, X_0_1: two BatchNorms each.
  for train, expected in ((True, num_bn), (False, 0)):
    step = functools.partial(model.apply, train=train, mutable=['batch_stats'])
    jaxpr = str(jax.make_jaxpr(jax.pmap(step, axis_name='data'))(variables, images))
    assert jaxpr.count('psum') == expected


def test_up_conv_is_the_stride_2_transposed_convolution():
  """out[:, 2h + p, 2w + q] = x[:, h, w] @ kernel[p, q] + bias, as torch.nn.ConvTranspose2d."""
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(2, 2, 5, 6)).astype(np.float32)
  bias = rng.normal(size=6).astype(np.float32)
  layer = unet.UpConv(6)
  variables = {'params': {'kernel': kernel, 'bias': bias}}
  chex.assert_trees_all_equal_shapes(
      jax.eval_shape(layer.init, jax.random.key(0), x), variables)
  expected = np.zeros((2, 6, 8, 6), np.float32)
  for p in range(2):
    for q in range(2):
      expected[:, p::2, q::2] = np.einsum('bhwc,cf->bhwf', x, kernel[p, q]) + bias
  np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_resnet_encoder_levels_pruning_and_errors():
  """encoder='resnet18': X^{i,0} are the ResNet's C1..C5 (strides 2..32), the heads are
  resized to the input, L^k runs only the first k stages and equals head k exactly."""
  model = _model(encoder='resnet18', width=0.25)
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  variables = _random_variables(model, images.shape)
  encoder = variables['params']['encoder']
  assert 'stem' in encoder and 'stage4_block2' in encoder and 'X_0_0' not in variables['params']
  chex.assert_shape(encoder['stem']['conv']['kernel'], (7, 7, 3, 16))   # 64 x width
  _assert_pruned_heads_equal_full_heads(model, variables, images, levels=[1, 3], jit=False)
  for k in (1, 2):
    pruned, _ = _heads_shapes(model, (1, 32, 32, 3), level=k)
    assert {s for s in pruned['params']['encoder'] if s.startswith('stage')} == {
        f'stage{i}_block{b}' for i in range(1, k + 1) for b in (1, 2)}
  _, heads = _heads_shapes(unet.UNet(CLASSES, FILTERS, encoder='resnet34', depth=3),
                           (2, 32, 48, 1))
  chex.assert_shape(heads[0], (2, 32, 48, CLASSES))
  with pytest.raises(ValueError, match=r'\(1, 16, 16, 3\).*32'):   # 2**(depth + 1)
    _heads_shapes(model, (1, 16, 16, 3))
  with pytest.raises(ValueError, match=r"unknown encoder 'vgg'.*resnet18"):
    _heads_shapes(_model(encoder='vgg'), (1, 32, 32, 3))


def test_resnet_features_only_returns_the_last_levels():
  images = jnp.zeros((1, 64, 64, 3))
  model = nets.build('resnet18', num_classes=0, width=8, features_only=True, num_features=5)
  features = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], images)
  assert [f.shape for f in features] == [(1, 32, 32, 8), (1, 16, 16, 8), (1, 8, 8, 16),
                                         (1, 4, 4, 32), (1, 2, 2, 64)]
  default = nets.build('resnet18', num_classes=0, width=8, features_only=True)
  features = jax.eval_shape(lambda x: default.init_with_output(jax.random.key(0), x)[0], images)
  assert [f.shape[1] for f in features] == [8, 4, 2]
  with pytest.raises(ValueError, match=r'num_features must be in 1..5'):
    nets.build('resnet18', num_classes=0, features_only=True, num_features=6).init(
        jax.random.key(0), images)
