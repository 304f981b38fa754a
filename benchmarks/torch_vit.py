r"""The same-size ViT in PyTorch, timed the same way as `python -m train.bench`.

  pip install torch==2.13.0        # not a project requirement; a peer baseline only
  python -m benchmarks.torch_vit --config=configs/vit_fashion_mnist.py [--steps=30]

Architecture mirrors nets/vit.py: the optional conv stem (`model.conv_stem`: 3x3 stride-2
convolutions with BatchNorm and ReLU), a PxP stride-P convolutional patch embedding,
class token, learned position embeddings, pre-LN encoder layers
(torch.nn.TransformerEncoderLayer with norm_first=True, GELU in the config's tanh or
erf form), final LayerNorm and a
linear head; AdamW with global-norm clipping; one train step = forward, cross
entropy, backward, clip, update. On a CUDA machine it runs on the GPU (`--device`), under
bfloat16 autocast when the config computes in bfloat16, as benchmarks.torch_cnn does.
"""

import functools

import torch
from absl import app, flags
from ml_collections import config_flags
from torch import nn

from benchmarks import torch_timing

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  flags.DEFINE_integer('steps', 30, 'Timed steps (after warm-up steps).')
  flags.DEFINE_string('device', 'cuda' if torch.cuda.is_available() else 'cpu', 'torch device.')
  flags.mark_flags_as_required(['config'])


class TorchViT(nn.Module):
  """Pre-LN ViT classifier, [b, c, h, w] -> [b, num_classes]."""

  def __init__(self, image_size, patch_size, channels, hidden, layers, mlp, heads, classes,
               conv_stem=(), approximate_gelu=True):
    super().__init__()
    stem = []
    for width in conv_stem:
      stem += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
               nn.BatchNorm2d(width), nn.ReLU()]
      channels, image_size = width, (image_size + 1) // 2
    self.stem = nn.Sequential(*stem)
    grid = image_size // patch_size
    self.patch = nn.Conv2d(channels, hidden, patch_size, stride=patch_size)
    self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
    self.pos = nn.Parameter(torch.randn(1, grid * grid + 1, hidden) * 0.02)
    gelu = functools.partial(nn.functional.gelu,
                             approximate='tanh' if approximate_gelu else 'none')
    layer = nn.TransformerEncoderLayer(hidden, heads, mlp, dropout=0.0, activation=gelu,
                                       batch_first=True, norm_first=True)
    self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    self.norm = nn.LayerNorm(hidden, eps=1e-6)
    self.head = nn.Linear(hidden, classes)

  def forward(self, x):
    x = self.patch(self.stem(x)).flatten(2).transpose(1, 2)
    x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
    return self.head(self.norm(self.encoder(x))[:, 0])


def make_step(config, device: torch.device):
  """One train step of the twin of config.model on a fixed random batch: (step, model,
  bf16), `step()` running forward, cross entropy, backward, clipping and the AdamW
  update (bfloat16 autocast when the config computes in bfloat16 on CUDA)."""
  c, m = config, config.model
  model = TorchViT(m.image_size, m.patch_size, m.num_channels, m.hidden_size, m.num_layers,
                   m.mlp_dim, m.num_heads, 10, tuple(m.get('conv_stem', ())),
                   m.get('approximate_gelu', True)).to(device)
  opt = torch.optim.AdamW(model.parameters(), lr=c.learning_rate, weight_decay=0.05)
  x = torch.randn(c.batch_size, m.num_channels, m.image_size, m.image_size, device=device)
  y = torch.randint(0, 10, (c.batch_size,), device=device)
  bf16 = c.compute_dtype == 'bfloat16' and device.type == 'cuda'
  step = torch_timing.classification_step(model, opt, x, y, bf16, c.optim.grad_clip_norm)
  return step, model, bf16


def main(argv):
  del argv
  c, device = FLAGS.config, torch.device(FLAGS.device)
  step, model, bf16 = make_step(c, device)
  step_s = torch_timing.seconds_per_step(step, FLAGS.steps, 3, device)
  print(torch_timing.result_line(step_s, c.batch_size, 'vit', model, device, bf16))


if __name__ == '__main__':
  define_flags()
  from train import run_config  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=run_config.parse_flags)
