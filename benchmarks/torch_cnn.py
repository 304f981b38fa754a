r"""The same ResNet / MobileNetV2 in PyTorch, timed the same way as `python -m train.bench`.

  pip install torch==2.13.0        # (in requirements-test.txt) a peer baseline only
  python -m benchmarks.torch_cnn --config=configs/resnet50_imagenet.py --image_size=224 \
      --config.batch_size=32 --config.compute_dtype=float32 [--steps=10]

On a CUDA machine it runs on the GPU, under bfloat16 autocast when the config's
compute_dtype is bfloat16 (parameters float32, as in this codebase).

The networks mirror nets/resnet.py (post-activation, v1.5 bottleneck, both stems) and
nets/mobilenet_v2.py layer for layer; the printed parameter count equals the JAX one
(and torchvision's at 224x224 / 1000 classes). One train step = forward, cross
entropy, backward, SGD (+ momentum, coupled weight decay) update.
"""


import torch
from absl import app, flags
from ml_collections import config_flags
from torch import nn

from benchmarks import torch_timing
from nets import mobilenet_v2, resnet

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of the torch_* CNN baselines, defined only when one runs as a script, so
  that its modules import next to other flag-defining modules (tests, torch_yolo)."""
  config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  flags.DEFINE_integer('steps', 10, 'Timed steps (after warm-up steps).')
  flags.DEFINE_integer('image_size', 32, 'Input side in pixels.')
  flags.DEFINE_bool('channels_last', False, 'torch.channels_last memory format.')
  flags.DEFINE_string('device', 'cuda' if torch.cuda.is_available() else 'cpu',
                      'torch device.')
  flags.mark_flags_as_required(['config'])


def conv_bn(cin, cout, k, stride=1, groups=1, act=nn.ReLU):
  layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
  return nn.Sequential(*layers, *([act(inplace=True)] if act else []))


class Residual(nn.Module):
  """Basic or v1.5 bottleneck block (post-activation)."""

  def __init__(self, cin, width, kind, stride):
    super().__init__()
    cout = width * resnet.EXPANSION[kind]
    if kind == 'basic':
      self.branch = nn.Sequential(conv_bn(cin, width, 3, stride), conv_bn(width, cout, 3, act=None))
    else:
      self.branch = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                  conv_bn(width, cout, 1, act=None))
    self.shortcut = (conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout
                     else nn.Identity())

  def forward(self, x):
    return torch.relu(self.branch(x) + self.shortcut(x))


def torch_resnet(depth, width, stem, channels, classes):
  stages, kind = resnet.DEPTHS[depth]
  mods = [conv_bn(channels, width, 7, 2), nn.MaxPool2d(3, 2, 1)] if stem == 'imagenet' else [
      conv_bn(channels, width, 3)]
  cin = width
  for i, n in enumerate(stages):
    for j in range(n):
      mods.append(Residual(cin, width * 2 ** i, kind, 2 if i > 0 and j == 0 else 1))
      cin = width * 2 ** i * resnet.EXPANSION[kind]
  return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


class InvertedResidual(nn.Module):

  def __init__(self, cin, cout, stride, t):
    super().__init__()
    hidden = cin * t
    mods = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if t != 1 else []
    mods += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
             conv_bn(hidden, cout, 1, act=None)]
    self.branch = nn.Sequential(*mods)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    return x + self.branch(x) if self.residual else self.branch(x)


def torch_mobilenet_v2(alpha, stem, channels, classes, dropout):
  div = mobilenet_v2.make_divisible
  cifar = stem == 'cifar'
  cin = div(32 * alpha)
  mods = [conv_bn(channels, cin, 3, 1 if cifar else 2, act=nn.ReLU6)]
  for t, c, n, s in mobilenet_v2.INVERTED_RESIDUAL_SETTING:
    s = 1 if cifar and c == 24 else s
    for j in range(n):
      mods.append(InvertedResidual(cin, div(c * alpha), s if j == 0 else 1, t))
      cin = div(c * alpha)
  last = div(1280 * max(1.0, alpha))
  mods += [conv_bn(cin, last, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
           nn.Dropout(dropout), nn.Linear(last, classes)]
  return nn.Sequential(*mods)


def build(config, classes):
  """The torch twin of config.model."""
  m = config.model
  if m.name.startswith('resnet'):
    return torch_resnet(int(m.name[len('resnet'):]), m.width, m.stem, m.num_channels, classes)
  if m.name == 'mobilenet_v2':
    return torch_mobilenet_v2(m.width_multiplier, m.stem, m.num_channels, classes, m.dropout_rate)
  raise ValueError(f'No torch twin for {m.name!r}; valid: resnet18..152, mobilenet_v2')


def make_step(config, image_size: int, channels_last: bool, device: torch.device):
  """One train step of the twin of config.model on a fixed random batch of side
  `image_size`: (step, model, bf16), `step()` running forward, cross entropy, backward
  and the SGD update (bfloat16 autocast when the config computes in bfloat16 on CUDA)."""
  c = config
  classes = 1000 if c.data.name == 'imagenet2012' else 10
  model = build(c, classes)
  opt = torch.optim.SGD(model.parameters(), lr=c.learning_rate, momentum=c.optim.momentum,
                        nesterov=c.optim.nesterov, weight_decay=c.optim.weight_decay)
  x = torch.randn(c.batch_size, c.model.num_channels, image_size, image_size, device=device)
  y = torch.randint(0, classes, (c.batch_size,), device=device)
  model = model.to(device)
  if channels_last:
    model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
  torch.backends.cudnn.benchmark = True
  bf16 = c.compute_dtype == 'bfloat16' and device.type == 'cuda'
  return torch_timing.classification_step(model, opt, x, y, bf16), model, bf16


def main(argv):
  del argv
  c, size, device = FLAGS.config, FLAGS.image_size, torch.device(FLAGS.device)
  step, model, bf16 = make_step(c, size, FLAGS.channels_last, device)
  step_s = torch_timing.seconds_per_step(step, FLAGS.steps, 2, device)
  print(torch_timing.result_line(step_s, c.batch_size, c.model.name, model, device, bf16,
                                 image_size=size, channels_last=FLAGS.channels_last))


if __name__ == '__main__':
  define_flags()
  from train import run_config  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=run_config.parse_flags)
