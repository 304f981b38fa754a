"""ResNet and MobileNetV2: parameter counts, shapes, input errors, BatchNorm behaviour on
one and eight devices in both engines, and every CNN config end to end."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import nets
from configs import (mobilenetv2_cifar10, mobilenetv2_fashion_mnist, resnet18_cifar10,
                     resnet18_fashion_mnist, resnet50_imagenet)
from data import pipeline
from nets import layers, mobilenet_v2, resnet
from train import parallel, trainer


def _num_params(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return sum(x.size for x in jax.tree.leaves(variables['params']))


# torchvision.models.resnet18/34/50/101/152 and mobilenet_v2, 1000 classes.
@pytest.mark.parametrize('name,expected', [
    ('resnet18', 11_689_512), ('resnet34', 21_797_672), ('resnet50', 25_557_032),
    ('resnet101', 44_549_160), ('resnet152', 60_192_808), ('mobilenet_v2', 3_504_872)])
def test_parameter_counts_match_reference_implementations(name, expected):
  assert _num_params(nets.build(name, num_classes=1000), (1, 224, 224, 3)) == expected


# The CIFAR configs' networks: torchvision's with a 10-way head (and for ResNet-18 the
# 3x3 stem conv: 7,680 fewer weights than the 7x7 one). Their TFDS path is
# resnet18_cifar10's, run end to end below.
@pytest.mark.parametrize('module,expected', [(resnet18_cifar10, 11_173_962),
                                             (mobilenetv2_cifar10, 2_236_682)])
def test_cifar_configs_build_the_reference_networks(module, expected):
  model, *_ = trainer.build_components(module.get_config(), 10_000,
                                       pipeline.image_spec(10, (32, 32, 3)))
  assert _num_params(model, (1, 32, 32, 3)) == expected


@pytest.mark.parametrize('name,stem,size,final', [
    ('resnet18', 'imagenet', 64, 2), ('resnet18', 'cifar', 32, 4),
    ('resnet50', 'cifar', 28, 4), ('preact_resnet50', 'imagenet', 64, 2),
    ('preact_resnet18', 'cifar', 32, 4), ('mobilenet_v2', 'cifar', 32, 4),
    ('mobilenet_v2', 'imagenet', 64, 2)])
def test_output_shapes_and_final_feature_maps(name, stem, size, final):
  kwargs = dict(width=8) if 'resnet' in name else dict(width_multiplier=0.25)
  model = nets.build(name, num_classes=7, stem=stem, **kwargs)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)  # Shapes only: traced, not run.
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  # The pooled feature maps have side `final` (total stride 32 or 8, padding k // 2).
  logits, inter = jax.eval_shape(lambda v, x: model.apply(
      v, x, capture_intermediates=lambda m, _: m.name in (
          'stage4_block1', 'stage4_block2', 'stage4_block3', 'head_conv')), variables, x)
  chex.assert_shape(logits, (2, 7))
  assert logits.dtype == jnp.float32
  shapes = [v.shape for v in jax.tree.leaves(inter['intermediates'])]
  assert shapes and all(s[1:3] == (final, final) for s in shapes), shapes


def test_bfloat16_compute_keeps_float32_parameters_and_statistics():
  model = nets.build('resnet18', num_classes=10, stem='cifar', width=8, stage_sizes=(1, 1),
                     dtype=jnp.bfloat16)
  x = jnp.ones((2, 16, 16, 3))
  # Jitted: one compile each instead of one per operation, several times faster here.
  variables = jax.jit(model.init)(jax.random.key(0), x)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  logits, _ = apply(variables, x, train=True, mutable=('batch_stats',))
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize('name', ['resnet18', 'mobilenet_v2'])
def test_bad_images_name_the_shapes(name):
  model = nets.build(name, num_classes=10)
  with pytest.raises(ValueError, match=r'\[batch, height, width, 3\].*\(2, 64, 64, 1\)'):
    model.init(jax.random.key(0), jnp.ones((2, 64, 64, 1)))
  with pytest.raises(ValueError, match=r'28x28 are too small.*total stride 32.*at least 32x32 or.*stem=.cifar'):
    model.init(jax.random.key(0), jnp.ones((2, 28, 28, 3)))
  with pytest.raises(ValueError, match=r"Unknown stem 'tiny'.*\['imagenet', 'cifar'\]"):
    nets.build(name, num_classes=10, stem='tiny').init(jax.random.key(0), jnp.ones((1, 64, 64, 3)))


def test_unknown_depth_and_registry_names():
  with pytest.raises(ValueError, match=r'depth 20.*\[18, 34, 50, 101, 152\]'):
    resnet.ResNet(num_classes=10, depth=20).init(jax.random.key(0), jnp.ones((1, 64, 64, 3)))
  with pytest.raises(ValueError, match=r"Did you mean \['resnet50'"):
    nets.build('resnet05')


def test_make_divisible():
  # Values from the reference rounding: at least the divisor, never 10 % below.
  assert [mobilenet_v2.make_divisible(v) for v in (32 * 0.35, 16 * 0.35, 24 * 0.35, 3, 1280)] == \
      [16, 8, 8, 8, 1280]
  assert mobilenet_v2.make_divisible(92) == 96 and mobilenet_v2.make_divisible(27) == 32


@pytest.mark.parametrize('strides,size', [(1, 9), (2, 9), (2, 8), (2, 7)])
def test_shifted_depthwise_equals_xla_grouped_convolution(strides, size):
  x = jax.random.normal(jax.random.key(0), (2, size, size, 6))
  xla = layers.Conv(6, 3, strides, groups=6, depthwise_impl='xla')
  variables = xla.init(jax.random.key(1), x)
  shifted = layers.Conv(6, 3, strides, groups=6, depthwise_impl='shifted')
  np.testing.assert_allclose(shifted.apply(variables, x), xla.apply(variables, x), atol=1e-5)
  # The hand-written backward pass against autodiff of XLA's convolution.
  grad = lambda m: jax.grad(lambda v, x: (m.apply(v, x) ** 2).sum(), argnums=(0, 1))(variables, x)
  (shifted_kernel, shifted_x), (xla_kernel, xla_x) = grad(shifted), grad(xla)
  np.testing.assert_allclose(shifted_kernel['params']['kernel'], xla_kernel['params']['kernel'],
                             rtol=1e-4)
  np.testing.assert_allclose(shifted_x, xla_x, rtol=1e-4, atol=1e-5)


def test_shifted_depthwise_gradients_with_the_batch_over_eight_devices():
  # The custom VJP under jit with a batch-sharded input and under pmap: the same
  # gradients as on one device (its conditional reads its predicate from the kernel).
  x = jax.random.normal(jax.random.key(0), (8, 9, 9, 6))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 6))
  loss = lambda x, k: (layers.depthwise_shifted(x, k, 2) ** 2).sum()
  grad = jax.grad(loss, argnums=(0, 1))
  expected_x, expected_kernel = jax.jit(grad)(x, kernel)
  sharding = jax.sharding.NamedSharding(jax.make_mesh((8,), ('data',)),
                                        jax.sharding.PartitionSpec('data'))
  got_x, got_kernel = jax.jit(grad)(jax.device_put(x, sharding), kernel)
  np.testing.assert_allclose(got_x, expected_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_kernel, expected_kernel, rtol=1e-5)
  per_device = jax.pmap(grad, in_axes=(0, None))(x[:, None], kernel)
  np.testing.assert_allclose(per_device[0][:, 0], expected_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(per_device[1].sum(0), expected_kernel, rtol=1e-5)


@pytest.mark.parametrize('strides', [1, 2])
def test_pointwise_matmul_equals_xla_convolution(strides):
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 5))
  module = layers.Conv(4, 1, strides)
  variables = module.init(jax.random.key(1), x)
  expected = jax.lax.conv_general_dilated(x, variables['params']['kernel'], (strides,) * 2,
                                          'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_train_uses_batch_statistics_and_updates_running_averages():
  model = layers.ConvBN(4, 1, activation=None)
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (8, 5, 5, 2))
  variables = model.init(jax.random.key(1), x, train=False)
  y, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  # Normalised with this batch's moments: zero mean, unit variance per channel.
  np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, atol=1e-3)
  pre = x @ variables['params']['conv']['kernel'][0, 0]  # The 1x1 convolution.
  stats = updates['batch_stats']['bn']
  # Flax momentum 0.9: running = 0.9 * running + 0.1 * batch (PyTorch momentum 0.1).
  np.testing.assert_allclose(stats['mean'], 0.1 * pre.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * pre.var(axis=(0, 1, 2)), rtol=1e-4)


def test_batch_norm_eval_uses_running_averages_and_never_updates_them():
  model = nets.build('resnet18', num_classes=10, stem='cifar', width=4, stage_sizes=(1, 1))
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  _, trained = apply(variables, x, train=True, mutable=('batch_stats',))
  variables = {'params': variables['params'], **trained}
  logits, after_eval = apply(variables, x, train=False, mutable=('batch_stats',))
  chex.assert_trees_all_equal(after_eval['batch_stats'], variables['batch_stats'])
  # Eval output of one example does not depend on the rest of the batch.
  np.testing.assert_allclose(apply(variables, x[:1]), logits[:1], atol=1e-5)


def _bn_setup(name):
  from configs import common  # pylint: disable=import-outside-toplevel
  c = common.get_base_config()
  c.model.name = name
  c.model.stem = 'cifar'
  c.model.num_channels = 3
  if name == 'resnet18':
    c.model.width, c.model.stage_sizes = 4, (1, 1)
  else:
    c.model.width_multiplier, c.model.dropout_rate = 0.25, 0.0
  c.optim.name, c.learning_rate, c.warmup_steps = 'sgd', 0.1, 0
  c.optim.weight_decay, c.optim.weight_decay_mode = 1e-3, 'coupled'
  rng = np.random.default_rng(0)
  # Per-device slices with different statistics: unsynchronised BN would differ.
  images = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
  images *= np.repeat(np.linspace(0.5, 3.0, 8), 2)[:, None, None, None].astype(np.float32)
  batch = {'image': images, 'label': rng.integers(0, 10, 16).astype(np.int32)}
  return c, batch


@functools.lru_cache(maxsize=None)
def _bn_train(name, engine_name, num_devices):
  config, batch = _bn_setup(name)
  engine = parallel.build(engine_name, jax.devices()[:num_devices])
  model, task, _, schedule, init_fn = trainer.build_components(
      config, 10, pipeline.image_spec(10, (16, 16, 3)),
      engine.axis_name)
  state = engine.init_state(init_fn)
  step = engine.train_step(model=model, task=task, schedule=schedule, accum_steps=1)
  state, metrics = step(state, engine.put_batch(batch))
  m = engine.to_host(metrics)
  canonical = jax.tree.map(parallel.replica, engine.to_canonical(state))
  # Running statistics after one step, and the parameters after one update (their
  # gradients flow through the batch statistics).
  return m['loss'][0] / m['loss'][1], canonical.model_state, canonical.params


@pytest.mark.parametrize('name,engine', [('resnet18', 'jit'), ('resnet18', 'pmap')])
def test_batch_statistics_on_eight_devices_equal_one_device(name, engine):
  ref_loss, ref_stats, ref_params = _bn_train(name, 'jit', 1)
  loss, stats, params = _bn_train(name, engine, 8)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  chex.assert_trees_all_close(stats, ref_stats, rtol=1e-4, atol=1e-6)
  # The update equals the global one of the jit engine on the same 8 devices. Against 1
  # device only loosely: one SGD step (lr 0.1) back through the BatchNorm statistics
  # amplifies float32 reduction-order differences (on MobileNetV2's kernels, checked here
  # until 2026-11-24, jit on 8 devices differed from 1 device by up to 5.7e-4, exactly as
  # much as pmap on 8 devices).
  chex.assert_trees_all_close(params, _bn_train(name, 'jit', 8)[2], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(params, ref_params, rtol=1e-2, atol=2e-3)


def _count_primitive(jaxpr, name: str) -> int:
  """Equations of primitive `name` in `jaxpr` and every jaxpr nested in it."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, 'jaxpr', sub)
        count += _count_primitive(sub, name) if hasattr(sub, 'eqns') else 0
  return count


def test_pmap_engine_synchronises_every_mobilenet_v2_batch_norm():
  # MobileNetV2's BatchNorms are the code checked numerically on ResNet-18 above; what
  # is left to check is that the pmap engine's axis reaches all of them: one psum of the
  # moments per BatchNorm in the traced train-mode forward pass (tracing, no compile;
  # the full numerical check compiled MobileNetV2 three times, ~100 s).
  config, batch = _bn_setup('mobilenet_v2')
  axis_name = parallel.build('pmap', jax.devices()).axis_name
  model, *_ = trainer.build_components(config, 10, pipeline.image_spec(10, (16, 16, 3)),
                                       axis_name)
  images = batch['image'][:2]
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  forward = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  jaxpr = jax.make_jaxpr(forward, axis_env=[(axis_name, 8)])(variables, images).jaxpr
  num_batch_norms = len(jax.tree.leaves(variables['batch_stats'])) // 2  # mean, var each.
  assert num_batch_norms == 52
  assert _count_primitive(jaxpr, 'psum') == num_batch_norms


def test_pmap_without_synchronisation_would_differ():
  # The check above is sensitive: per-device statistics differ from the global ones.
  config, batch = _bn_setup('resnet18')
  model, *_ = trainer.build_components(config, 10, pipeline.image_spec(10, (16, 16, 3)))
  variables = model.init(jax.random.key(0), batch['image'][:1])
  stats = lambda x: model.apply(variables, x, train=True, mutable=['batch_stats'])[1]
  global_mean = stats(batch['image'])['batch_stats']['stem']['bn']['mean']
  local_mean = stats(batch['image'][:2])['batch_stats']['stem']['bn']['mean']
  assert np.abs(global_mean - local_mean).max() > 1e-3


# --- The TFDS configs end to end ----------------------------------------------------------

def _shrink(config, batch_size=8):
  config.batch_size = config.eval_batch_size = batch_size
  config.num_train_steps, config.warmup_steps = 2, 1
  config.data.num_threads, config.data.num_workers = 1, 0
  config.checkpoint.async_save = False
  config.model.width, config.model.stage_sizes = 4, (1, 1, 1, 1)
  return config


@pytest.mark.parametrize('module', [resnet18_cifar10, resnet50_imagenet])
def test_tfds_configs_run_under_mock_data(module, tmp_path):
  config = _shrink(module.get_config())
  num_examples = 12
  if module is resnet50_imagenet:  # Variable-size mock images -> 64x64 crops.
    config.augment.random_resized_crop_size = 64
    config.data.eval_crop_size, config.data.eval_resize_size = 64, 73
  with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
    metrics = trainer.run(config, str(tmp_path / 'run'))
  # Validation: a held-out slice of train (mock_data gives every split 12 images).
  assert metrics['splits']['validation'].startswith('train[')
  assert metrics['validation']['num_examples'] == metrics['test']['num_examples'] == 12
  assert metrics['step'] == metrics['selected_step'] == 2


@pytest.mark.parametrize('module', [resnet18_fashion_mnist, mobilenetv2_fashion_mnist])
def test_offline_configs_overfit_a_small_batch(module):
  config = module.get_config()
  config.optim.schedule, config.warmup_steps = 'constant', 0
  if 'width' in config.model:
    config.model.stage_sizes = (1, 1, 1)
  else:
    config.learning_rate, config.model.dropout_rate = 0.05, 0.0
  engine = parallel.build('jit', jax.devices()[:1])
  model, task, _, schedule, init_fn = trainer.build_components(
      config, 100, pipeline.image_spec(10, (28, 28, 1)))
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 28, 28, 1)).astype(np.float32),
           'label': np.arange(16, dtype=np.int32) % 10}
  state = engine.init_state(init_fn)
  step = engine.train_step(model=model, task=task, schedule=schedule, accum_steps=1)
  losses = []
  for _ in range(40):
    state, metrics = step(state, engine.put_batch(batch))
    metrics = engine.to_host(metrics)
    losses.append(metrics['loss'][0] / metrics['loss'][1])
  # Memorised: every example of the batch right, the loss a small fraction of the start.
  assert metrics['top1'][0] == 16, metrics
  assert losses[-1] < 0.1 * losses[0], losses
