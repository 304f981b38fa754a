"""The CNN building blocks against torch.nn on CPU with the same weights.

Layouts: Flax NHWC activations and HWIO kernels; torch NCHW and OIHW.
"""

import jax
import numpy as np
import pytest

from nets import layers, mobilenet_v2, resnet

torch = pytest.importorskip('torch')
tnn = torch.nn


def _to_torch(x):  # NHWC -> NCHW
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _from_torch(t):  # NCHW -> NHWC
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _conv(kernel, strides=1, groups=1):
  """A torch Conv2d with the Flax kernel [k, k, in / groups, out], padding k // 2."""
  k, _, in_per_group, out = kernel.shape
  c = tnn.Conv2d(in_per_group * groups, out, k, strides, k // 2, groups=groups, bias=False)
  c.weight.data = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())
  return c


def _bn(params, stats):
  b = tnn.BatchNorm2d(len(params['scale']), eps=layers.BN_EPSILON,
                      momentum=1 - layers.BN_MOMENTUM)
  b.weight.data = torch.from_numpy(np.asarray(params['scale']).copy())
  b.bias.data = torch.from_numpy(np.asarray(params['bias']).copy())
  b.running_mean.data = torch.from_numpy(np.asarray(stats['mean']).copy())
  b.running_var.data = torch.from_numpy(np.asarray(stats['var']).copy())
  return b


def _conv_bn(p, s, strides=1, groups=1, act=tnn.ReLU):
  mods = [_conv(p['conv']['kernel'], strides, groups), _bn(p['bn'], s['bn'])]
  return tnn.Sequential(*mods, *([act()] if act else []))


def _randomised(variables):
  """Non-trivial BN parameters and running statistics (init has 1s and 0s)."""
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  out = [x + 0.1 * jax.random.uniform(k, x.shape) if x.ndim == 1 else x
         for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, out)


def _check(flax_module, torch_module, x, variables, *, train):
  torch_module.train(train)
  with torch.no_grad():
    expected = _from_torch(torch_module(_to_torch(x)))
  if train:
    got, updates = flax_module.apply(variables, x, train=True, mutable=['batch_stats'])
  else:
    got, updates = flax_module.apply(variables, x, train=False), None
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  return updates


@pytest.mark.parametrize('train', [True, False])
def test_conv_bn_relu_matches_conv2d_batchnorm2d(train):
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 3))
  module = layers.ConvBN(8, 3, 2)
  v = _randomised(module.init(jax.random.key(1), x, train=False))
  ref = _conv_bn(v['params'], v['batch_stats'], strides=2)
  updates = _check(module, ref, x, v, train=train)
  if train:
    bn = ref[1]
    np.testing.assert_allclose(updates['batch_stats']['bn']['mean'], bn.running_mean.numpy(),
                               rtol=1e-5, atol=1e-6)
    # PyTorch updates running_var with the unbiased batch variance (n / (n - 1)); Flax
    # with the biased one. n = 4 * 5 * 5 = 100 values per channel here.
    n = 100
    old = np.asarray(v['batch_stats']['bn']['var'])
    torch_batch_var = (bn.running_var.numpy() - 0.9 * old) / 0.1
    flax_batch_var = (np.asarray(updates['batch_stats']['bn']['var']) - 0.9 * old) / 0.1
    np.testing.assert_allclose(flax_batch_var * n / (n - 1), torch_batch_var, rtol=1e-4)


def test_imagenet_stem_matches_conv_bn_relu_maxpool():
  # A ResNet without stages: stem -> global average pool -> head, in eval mode.
  model = resnet.ResNet(num_classes=3, width=8, stage_sizes=(), block='basic')
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  v = _randomised(model.init(jax.random.key(1), x))
  p, s = v['params'], v['batch_stats']
  ref = tnn.Sequential(_conv_bn(p['stem'], s['stem'], strides=2), tnn.MaxPool2d(3, 2, 1))
  with torch.no_grad():
    pooled = _from_torch(ref.eval()(_to_torch(x))).mean(axis=(1, 2))
  expected = pooled @ np.asarray(p['head']['kernel']) + np.asarray(p['head']['bias'])
  np.testing.assert_allclose(model.apply(v, x), expected, rtol=1e-4, atol=1e-4)


class _TorchResidual(tnn.Module):
  def __init__(self, branch, shortcut, post_relu):
    super().__init__()
    self.branch, self.shortcut, self.post_relu = branch, shortcut, post_relu

  def forward(self, x):
    y = self.branch(x) + self.shortcut(x)
    return torch.relu(y) if self.post_relu else y


@pytest.mark.parametrize('kind,strides,train', [
    ('basic', 2, True), ('basic', 1, False), ('bottleneck', 2, True), ('bottleneck', 1, False)])
def test_residual_block_matches_torch(kind, strides, train):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  module = resnet.ResidualBlock(8, kind, strides)
  v = _randomised(module.init(jax.random.key(1), x, train=False))
  p, s = v['params'], v['batch_stats']
  convs = [f'conv_bn{i}' for i in range(2 if kind == 'basic' else 3)]
  stride_at = 0 if kind == 'basic' else 1  # v1.5: stride on the 3x3 convolution.
  branch = tnn.Sequential(*[
      _conv_bn(p[n], s[n], strides if i == stride_at else 1, act=None if i == len(convs) - 1
               else tnn.ReLU) for i, n in enumerate(convs)])
  shortcut = (_conv_bn(p['projection'], s['projection'], strides, act=None)
              if 'projection' in p else tnn.Identity())
  _check(module, _TorchResidual(branch, shortcut, True), x, v, train=train)


def test_preactivation_block_matches_torch():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  module = resnet.ResidualBlock(8, 'bottleneck', 2, preact=True)
  v = _randomised(module.init(jax.random.key(1), x, train=False))
  p, s = v['params'], v['batch_stats']

  class PreAct(tnn.Module):
    def __init__(self):
      super().__init__()
      self.bn = tnn.ModuleList([_bn(p[f'bn{i}'], s[f'bn{i}']) for i in range(3)])
      self.conv = tnn.ModuleList([_conv(p[f'conv{i}']['kernel'], 2 if i == 1 else 1)
                                  for i in range(3)])
      self.projection = _conv(p['projection']['kernel'], 2)

    def forward(self, x):
      y = torch.relu(self.bn[0](x))
      shortcut = self.projection(y)
      for i in range(3):
        y = self.conv[i](y if i == 0 else torch.relu(self.bn[i](y)))
      return y + shortcut

  _check(module, PreAct(), x, v, train=True)


@pytest.mark.parametrize('expand,strides,in_ch,out_ch', [(6, 1, 8, 8), (6, 2, 8, 16), (1, 1, 8, 16)])
def test_inverted_residual_matches_torch(expand, strides, in_ch, out_ch):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, in_ch))
  module = mobilenet_v2.InvertedResidual(out_ch, strides, expand, depthwise_impl='shifted')
  v = _randomised(module.init(jax.random.key(1), x, train=False))
  p, s = v['params'], v['batch_stats']
  hidden = in_ch * expand
  mods = [_conv_bn(p['expand'], s['expand'], act=tnn.ReLU6)] if expand != 1 else []
  mods += [_conv_bn(p['depthwise'], s['depthwise'], strides, groups=hidden, act=tnn.ReLU6),
           _conv_bn(p['project'], s['project'], act=None)]
  branch = tnn.Sequential(*mods)
  residual = strides == 1 and in_ch == out_ch

  class Ref(tnn.Module):
    def __init__(self):
      super().__init__()
      self.branch = branch

    def forward(self, x):
      return x + self.branch(x) if residual else self.branch(x)

  for train in (False, True):  # Eval first: torch's train mode updates its statistics.
    _check(module, Ref(), x, v, train=train)


@pytest.mark.parametrize('class_loss', ['sigmoid', 'softmax'])
def test_yolo_loss_matches_the_pytorch_twin(class_loss, box_loss='ciou', assign_threshold=0.213):
  """tasks.yolo_loss and benchmarks/torch_yolo.py (an independent, batch-vectorised
  PyTorch implementation) on the same raw predictions: a duplicated box (collision),
  a centre outside the image, padding and an image without boxes; value and gradient."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_yolo  # pylint: disable=import-outside-toplevel
  from tasks import yolo_loss  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  anchors = ((10, 8), (13, 22), (24, 16), (22, 25), (18, 37), (35, 19), (27, 36), (38, 29),
             (36, 42))
  b, m, num_classes, size = 3, 6, 4, 64
  raws = [rng.normal(size=(b, size // s, size // s, 3, 5 + num_classes)).astype(np.float32)
          for s in (8, 16, 32)]
  x, y = np.sort(rng.uniform(0, size, (2, b, m, 2)), axis=-1)
  boxes = np.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1).astype(np.float32)
  boxes[:, 4] = boxes[:, 1]
  boxes[0, 3] = [-3, 60, 10, 70]
  classes = rng.integers(0, num_classes, (b, m)).astype(np.int32)
  mask = (rng.uniform(size=(b, m)) < 0.8).astype(np.float32)
  mask[2] = 0
  loss = yolo_loss.YoloLoss(anchors, box_loss=box_loss, assign_threshold=assign_threshold,
                            class_loss=class_loss)
  fn = lambda r: loss(r, jnp.asarray(boxes), jnp.asarray(classes), jnp.asarray(mask),
                      (size, size))['loss'].mean()
  value, grads = jax.jit(jax.value_and_grad(fn))(tuple(map(jnp.asarray, raws)))
  leaves = [torch.tensor(r, requires_grad=True) for r in raws]
  config = ml_collections.ConfigDict(dict(
      box_loss=box_loss, ignore_threshold=0.5, box_weight=1.0, obj_weight=1.0, cls_weight=1.0,
      assign_threshold=assign_threshold, class_loss=class_loss))
  torch_value = torch_yolo.yolo_loss(leaves, torch.tensor(boxes), torch.tensor(classes).long(),
                                     torch.tensor(mask), torch.tensor(anchors).float(), config,
                                     (size, size))
  torch_value.backward()
  np.testing.assert_allclose(float(value), float(torch_value), rtol=1e-5)
  for g, leaf in zip(grads, leaves):
    np.testing.assert_allclose(np.asarray(g), leaf.grad.numpy(), atol=1e-5)
