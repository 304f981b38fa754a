r"""The same UNet++ in PyTorch: train steps on random data, timed on the CPU.

  pip install torch==2.13.0        # (in requirements-test.txt) a peer baseline only
  python -m benchmarks.torch_unet --batch_size=8 --image_size=96 --width=0.25 [--steps=10]

The network mirrors nets/unet.py (UNetPlusPlus) node for node: H = two (3x3 conv without
bias -> BatchNorm -> ReLU), 2x2 max-pooling, Up = ConvTranspose2d(2, stride 2) to the
level's filters, X^{i,j} = H([X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})]), 1x1 heads on
X^{0,1..depth} (deep supervision; only X^{0,depth} with --nodeep_supervision), filters
nets.unet.scaled_filters(FILTERS, width). Its parameter count equals the JAX model's
(checked for widths 1, 0.25, 0.125 x depths 1, 2, 4, deep supervision on and off, 3
channels, 2 classes: 9,046,056 at width 1, depth 4). One train step = forward, loss = mean
over the heads of the per-pixel softmax cross entropy, backward, global-norm gradient
clipping and the AdamW update with weight decay on the convolution kernels only, as
configs/unetpp_fashion_mnist_scenes.py trains (optax: no decay on biases or norm
scales; the flags' defaults are that config's values). Tensors are channels_last.

On a CPU shared with other busy processes, torch's OpenMP threads can stall each other:
with the 2 cores loaded, --threads=1 ran the width-0.125, batch-2, 32x32 step in 46 ms
and torch's default 2 threads in 4,371 ms. Compare runs at the same --threads.
"""

import json

import torch
from absl import app, flags
from torch import nn

from benchmarks import torch_timing
from nets import unet

_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Images per train step.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 96, 'Input side in pixels (a multiple of '
                                   '2**depth).')
_WIDTH = flags.DEFINE_float('width', 1.0, 'Multiplier of the filters (32, 64, 128, 256, 512).')
_DEPTH = flags.DEFINE_integer('depth', 4, 'Number of poolings, 1..4.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 2, 'Classes per pixel.')
_CHANNELS = flags.DEFINE_integer('channels', 3, 'Input channels.')
_DEEP_SUPERVISION = flags.DEFINE_bool('deep_supervision', True, 'Heads on X^{0,1..depth}.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after warm-up steps).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed warm-up steps.')
_DEVICE = flags.DEFINE_string('device', 'cpu', 'torch device.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 3e-3, 'AdamW learning rate.')
_WEIGHT_DECAY = flags.DEFINE_float('weight_decay', 1e-4, 'AdamW weight decay (kernels only).')
_GRAD_CLIP_NORM = flags.DEFINE_float('grad_clip_norm', 1.0, 'Global gradient norm clip; 0: off.')
_THREADS = flags.DEFINE_integer('threads', 0, 'torch.set_num_threads; 0 keeps torch\'s default.')


def conv_block(cin, cout):
  """H: (3x3 conv -> BN -> ReLU) twice."""
  layers = []
  for c in (cin, cout):
    layers += [nn.Conv2d(c, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
  return nn.Sequential(*layers)


class TorchUNetPlusPlus(nn.Module):
  """UNet++ with nodes 'X_{i}_{j}', upsamplings 'up_{i}_{j}' and heads 'head_{j}', as in
  nets/unet.py; [b, c, h, w] -> tuple of [b, num_classes, h, w] logits."""

  def __init__(self, filters, depth, channels, classes, deep_supervision):
    super().__init__()
    self.depth = depth
    self.pool = nn.MaxPool2d(2, 2)
    nodes, ups = {}, {}
    for i in range(depth + 1):
      nodes[f'X_{i}_0'] = conv_block(channels if i == 0 else filters[i - 1], filters[i])
    for j in range(1, depth + 1):
      for i in range(depth - j + 1):
        ups[f'up_{i}_{j}'] = nn.ConvTranspose2d(filters[i + 1], filters[i], 2, 2)
        nodes[f'X_{i}_{j}'] = conv_block((j + 1) * filters[i], filters[i])
    self.nodes, self.ups = nn.ModuleDict(nodes), nn.ModuleDict(ups)
    self.head_levels = list(range(1, depth + 1)) if deep_supervision else [depth]
    self.heads = nn.ModuleDict({f'head_{j}': nn.Conv2d(filters[0], classes, 1)
                                for j in self.head_levels})

  def forward(self, images):
    x = {(0, 0): self.nodes['X_0_0'](images)}
    for i in range(1, self.depth + 1):
      x[i, 0] = self.nodes[f'X_{i}_0'](self.pool(x[i - 1, 0]))
    for j in range(1, self.depth + 1):
      for i in range(self.depth - j + 1):
        up = self.ups[f'up_{i}_{j}'](x[i + 1, j - 1])
        x[i, j] = self.nodes[f'X_{i}_{j}'](torch.cat([x[i, k] for k in range(j)] + [up], 1))
    return tuple(self.heads[f'head_{j}'](x[0, j]) for j in self.head_levels)


def build():
  """The torch twin of nets.unet.UNetPlusPlus with the flags' settings."""
  depth = _DEPTH.value
  filters = unet.scaled_filters(unet.FILTERS, _WIDTH.value)
  if not 1 <= depth < len(filters):
    raise ValueError(f'--depth must be in 1..{len(filters) - 1}, got {depth}')
  if _IMAGE_SIZE.value % 2 ** depth:
    raise ValueError(f'--image_size {_IMAGE_SIZE.value} must be a multiple of 2**{depth}')
  return TorchUNetPlusPlus(filters, depth, _CHANNELS.value, _NUM_CLASSES.value,
                           _DEEP_SUPERVISION.value)


def main(argv):
  del argv
  if _THREADS.value:
    torch.set_num_threads(_THREADS.value)
  model = build()
  batch, size, classes = _BATCH_SIZE.value, _IMAGE_SIZE.value, _NUM_CLASSES.value
  device = torch.device(_DEVICE.value)
  kernels = [p for p in model.parameters() if p.ndim > 1]
  others = [p for p in model.parameters() if p.ndim <= 1]
  opt = torch.optim.AdamW([{'params': kernels, 'weight_decay': _WEIGHT_DECAY.value},
                           {'params': others, 'weight_decay': 0.0}], lr=_LEARNING_RATE.value)
  x = torch.randn(batch, _CHANNELS.value, size, size, device=device)
  y = torch.randint(0, classes, (batch, size, size), device=device)
  model = model.to(device).to(memory_format=torch.channels_last)
  x = x.to(memory_format=torch.channels_last)

  def step():
    opt.zero_grad(set_to_none=True)
    heads = model(x)
    loss = sum(nn.functional.cross_entropy(h, y) for h in heads) / len(heads)
    loss.backward()
    if _GRAD_CLIP_NORM.value:
      nn.utils.clip_grad_norm_(model.parameters(), _GRAD_CLIP_NORM.value)
    opt.step()

  step_s = torch_timing.seconds_per_step(step, _STEPS.value, _WARMUP.value, device)
  print(json.dumps({'framework': 'torch', 'torch_version': torch.__version__,
                    'threads': torch.get_num_threads(), 'device': str(device),
                    'model': f'unetpp_w{_WIDTH.value:g}_d{_DEPTH.value}'
                             f'{"" if _DEEP_SUPERVISION.value else "_nods"}',
                    'params': sum(p.numel() for p in model.parameters()),
                    'batch_size': batch, 'image_size': size, 'step_ms': round(step_s * 1e3, 2),
                    'examples_per_s': round(batch / step_s, 1)}))


if __name__ == '__main__':
  app.run(main)
