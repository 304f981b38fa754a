r"""One side-by-side table of training throughput on whatever accelerator JAX and PyTorch
find: this codebase's train steps next to the PyTorch implementations people compare with.

  python -m benchmarks.suite                      # full sizes (meant for a GPU)
  python -m benchmarks.suite --rows=resnet50,vit_b16 --steps=50 --torch_compile=False
  python -m benchmarks.suite --smoke              # tiny sizes, 1 timed step: checks that
                                                  # every row runs (CPU is fine)

Rows (synthetic data, one train step = forward, loss, backward, optimizer update; bf16
compute with float32 parameters, as the configs train):

  resnet50     configs/resnet50_imagenet.py, 224x224, batch 256; torchvision resnet50,
               channels-last, bf16 autocast, SGD as the config; eager and torch.compile
  vit_b16      configs/vit_b16_cifar10_finetune.py at 224x224, batch 256; timm
               VisionTransformer of the same sizes (ViT-B/16), bf16 autocast, SGD
  transformer  configs/transformer_wmt14.py (Transformer-base, shared 32k vocabulary),
               96 rows of 256 source + 256 target tokens; torch.nn.Transformer of the same
               sizes with embeddings, sinusoidal positions and a tied output layer, Adam

Columns: examples/s (target tokens/s for the Transformer), step time, compile time (JAX:
the first step, compilation included; PyTorch: the first step, which is where cuDNN
autotuning and torch.compile's compilation happen), and MFU = FLOPs per step / step time
/ the device's peak dense bf16 FLOP/s (PEAK_TFLOPS by device name, or --peak_tflops).
FLOPs per step are XLA's cost analysis of this codebase's traced step (train.bench; on
the host CPU where the accelerator's JAX gives none, as JAX 0.11 on GPUs); the PyTorch
rows run the same architecture, so they are given the same count.

Each workload's rows are printed as soon as they are timed, so a run cut short by a time
limit keeps the rows before it; a row that fails (e.g. torch.compile without a working
Triton or C compiler) says why in its note and the others still run. Under a
per-command time limit (10 minutes on the lent GPU machines), run one workload per
command: --rows=resnet50, then vit_b16, then transformer.

Machines whose image lacks some of the project's wheels (e.g. grain, ml_collections,
faster-coco-eval): download them where pip works (README: "GPU benchmark suite") and
install them with `pip install --no-index --no-deps --target DIR wheels/*.whl`,
PYTHONPATH=DIR. A PyTorch row whose library (torchvision, timm) is missing is listed as
skipped, with the reason.
"""

import dataclasses
import importlib
import math
import os
import time
from typing import Callable, Optional

# JAX and PyTorch share the accelerator in this one process: JAX must not take 75 % of
# its memory up front (its default).
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

# pylint: disable=wrong-import-position
import jax
import numpy as np
from absl import app, flags, logging

import tasks
from tasks import common as task_common
from train import bench

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags, defined only when it runs as one (tests import this module)."""
  flags.DEFINE_list('rows', ['resnet50', 'vit_b16', 'transformer'], 'Workloads to run.')
  flags.DEFINE_integer('steps', 20, 'Timed steps per row (after warm-up).')
  flags.DEFINE_bool('torch_compile', True, 'Also time torch.compile rows.')
  flags.DEFINE_float('peak_tflops', 0.0, 'Peak dense bf16 TFLOP/s of one device; 0: from '
                     'PEAK_TFLOPS by device name (no MFU if unknown).')
  flags.DEFINE_bool('smoke', False, 'Tiny sizes and one timed step (a check, not a '
                    'measurement).')


# Dense bf16 peak TFLOP/s per device, by a substring of jax's device_kind (first match, so
# a name that contains another comes before it: 'H100 NVL' before 'H100', 'L40' before 'L4').
PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.4), ('H200', 989.4),
               ('A100', 312.0), ('L40S', 362.1), ('L40', 181.0), ('L4', 121.0))


@dataclasses.dataclass(frozen=True)
class Workload:
  """A row group: a config, its benchmark sizes (full and smoke, as dotted config
  overrides), the input side, and how a PyTorch twin is built from the JAX model."""
  config: str
  overrides: dict
  smoke_overrides: dict
  image_size: int
  smoke_image_size: int
  torch_builders: Callable  # (flax module, config, device, image_size, torch_compile)
                            # -> [(implementation name, () -> step function)]
  tokens_per_example: Callable = lambda config: 1


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  with node.unlocked():
    node[leaf] = value


def load_config(workload: Workload, smoke: bool):
  """The workload's config (configs/<name>.py) with its full or smoke overrides."""
  config = importlib.import_module(f'configs.{workload.config}').get_config()
  for key, value in {**workload.overrides, **(workload.smoke_overrides if smoke else {})}.items():
    _set(config, key, value)
  return config


# --- PyTorch twins --------------------------------------------------------------------

def _torch_optimizer(config, params):
  """The config's optimizer in torch: SGD (momentum, coupled weight decay) or Adam(W)."""
  import torch  # pylint: disable=import-outside-toplevel
  o = config.optim
  if o.name == 'sgd':
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=o.momentum,
                           nesterov=o.nesterov, weight_decay=o.weight_decay)
  return torch.optim.AdamW(params, lr=config.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                           weight_decay=o.weight_decay)


def _classifier_step(net, wrap, config, device, image_size, num_classes, channels_last):
  """A train step of image classifier `net` (run through `wrap`: identity or
  torch.compile) on one random batch, bf16 autocast."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_timing  # pylint: disable=import-outside-toplevel
  b = config.batch_size
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  net = net.to(device, memory_format=fmt)
  x = torch.randn(b, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
  y = torch.randint(0, num_classes, (b,), device=device)
  return torch_timing.classification_step(
      net, _torch_optimizer(config, net.parameters()), x, y, bf16=True,
      clip_norm=max(config.optim.grad_clip_norm, 0.0), label_smoothing=config.label_smoothing,
      forward=wrap(net))


def _with_compile(name, build, torch_compile: bool):
  """[(name, builder of the eager step)], plus the torch.compile one when torch_compile."""
  import torch  # pylint: disable=import-outside-toplevel
  rows = [(name, lambda: build(lambda m: m))]
  if torch_compile:
    rows.append((f'{name}, torch.compile', lambda: build(torch.compile)))
  return rows


def resnet_twins(model, config, device, image_size, torch_compile):
  """torchvision's ResNet of the same depth (resnet18/34/50/...), channels-last."""
  import torchvision  # pylint: disable=import-outside-toplevel
  def build(wrap):
    net = getattr(torchvision.models, config.model.name)(num_classes=model.num_classes)
    return _classifier_step(net, wrap, config, device, image_size, model.num_classes,
                            channels_last=True)
  return _with_compile(f'torchvision {config.model.name}, channels-last, bf16 autocast', build,
                       torch_compile)


def vit_twins(model, config, device, image_size, torch_compile):
  """timm's VisionTransformer with the flax ViT's sizes (class token, pre-LN)."""
  from timm.models import vision_transformer  # pylint: disable=import-outside-toplevel
  def build(wrap):
    net = vision_transformer.VisionTransformer(
        img_size=image_size, patch_size=model.patch_size, embed_dim=model.hidden_size,
        depth=model.num_layers, num_heads=model.num_heads,
        mlp_ratio=model.mlp_dim / model.hidden_size, num_classes=model.num_classes)
    return _classifier_step(net, wrap, config, device, image_size, model.num_classes,
                            channels_last=False)
  return _with_compile('timm VisionTransformer, bf16 autocast', build, torch_compile)


def transformer_twins(model, config, device, image_size, torch_compile):
  """torch.nn.Transformer with the flax Transformer's sizes, shared embeddings (scaled by
  sqrt(d_model)), sinusoidal positions, tied output layer, label-smoothed CE."""
  import torch  # pylint: disable=import-outside-toplevel
  from nets import transformer  # pylint: disable=import-outside-toplevel
  del image_size
  vocab, length, b = model.source_vocab_size, config.data.max_length, config.batch_size

  class Seq2Seq(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = torch.nn.Embedding(vocab, model.d_model)
      self.core = torch.nn.Transformer(
          model.d_model, model.num_heads, model.num_encoder_layers, model.num_decoder_layers,
          model.d_ff, model.dropout_rate, batch_first=True, norm_first=model.pre_ln)
      # The config's dropout acts on the embeddings and on every sub-layer's output
      # (Vaswani et al. 2017, Sec. 5.4), not on attention weights or the FFN's hidden
      # units, which torch.nn.Transformer's one rate also drops: those are turned off,
      # and the embeddings get theirs.
      for layer in [*self.core.encoder.layers, *self.core.decoder.layers]:
        layer.dropout = torch.nn.Identity()  # The FFN's hidden units.
        for attention in (layer.self_attn, getattr(layer, 'multihead_attn', None)):
          if attention is not None:
            attention.dropout = 0.0
      self.embedding_dropout = torch.nn.Dropout(model.dropout_rate)
      table = transformer.sinusoidal_position_encoding(length, model.d_model)
      self.register_buffer('positions', torch.as_tensor(np.asarray(table), dtype=torch.float32))
      # A buffer, so it lives on the device: no host-to-device copy (and sync) per step.
      self.register_buffer('causal', torch.nn.Transformer.generate_square_subsequent_mask(
          length), persistent=False)

    def forward(self, source, target):
      emb = lambda ids: self.embedding_dropout(
          self.embed(ids) * math.sqrt(model.d_model) + self.positions)
      out = self.core(emb(source), emb(target), tgt_mask=self.causal, tgt_is_causal=True)
      return out @ self.embed.weight.T

  def build(wrap):
    net = Seq2Seq().to(device)
    forward = wrap(net)
    source = torch.randint(3, vocab, (b, length), device=device)
    target = torch.randint(3, vocab, (b, length), device=device)
    opt = _torch_optimizer(config, net.parameters())
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def step():
      opt.zero_grad(set_to_none=True)
      with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = forward(source, target)
        loss = loss_fn(logits.reshape(-1, vocab).float(), target.reshape(-1))
      loss.backward()
      opt.step()
    return step
  return _with_compile('torch.nn.Transformer, bf16 autocast', build, torch_compile)


WORKLOADS = {
    'resnet50': Workload(
        # warmup_steps: the config's is 5 epochs of its batch; irrelevant to the step time.
        'resnet50_imagenet', {'batch_size': 256, 'warmup_steps': 100},
        {'batch_size': 8, 'model.name': 'resnet18'},
        224, 32, resnet_twins),
    'vit_b16': Workload(
        'vit_b16_cifar10_finetune',
        {'batch_size': 256, 'grad_accum_steps': 1, 'init_from': '', 'model.image_size': 224},
        {'batch_size': 8, 'model.image_size': 32, 'model.num_layers': 1},
        224, 32, vit_twins),
    'transformer': Workload(
        # The config as it trains (dropout on embeddings and sub-layer outputs only); the
        # PyTorch twin turns off the dropouts torch.nn.Transformer adds to that.
        'transformer_wmt14', {'batch_size': 96},
        {'batch_size': 8, 'data.max_length': 16, 'data.vocab_size': 512, 'model.d_model': 64,
         'model.num_heads': 2, 'model.d_ff': 128, 'model.num_encoder_layers': 1,
         'model.num_decoder_layers': 1},
        0, 0, transformer_twins, tokens_per_example=lambda config: config.data.max_length),
}


# --- The table ------------------------------------------------------------------------

def peak_flops(device_kind: str, override_tflops: float = 0.0) -> Optional[float]:
  """Peak dense bf16 FLOP/s of one device: the override, else PEAK_TFLOPS' first name
  found in device_kind, else None (unknown: no MFU)."""
  if override_tflops > 0:
    return override_tflops * 1e12
  return next((t * 1e12 for name, t in PEAK_TFLOPS if name in device_kind), None)


def torch_row(step_fn: Callable[[], None], steps: int, warmup: int, device) -> dict:
  """Times a PyTorch step: the first call (autotuning, compilation) then `steps`."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_timing  # pylint: disable=import-outside-toplevel
  sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
  start = time.perf_counter()
  step_fn()
  sync()
  compile_s = time.perf_counter() - start
  step_s = torch_timing.seconds_per_step(step_fn, steps, warmup, device)
  return {'compile_s': compile_s, 'step_s': step_s}


def run_workload(name: str, smoke: bool, steps: int, peak: Optional[float],
                 torch_compile: bool = True) -> list[dict]:
  """This codebase's row of workload `name` (WORKLOADS), then its PyTorch rows (or one
  row saying why they were skipped): dicts of workload, implementation, batch,
  items_per_s and unit, step_ms, compile_s, mfu (a fraction, None without a peak), note."""
  w = WORKLOADS[name]
  config = load_config(w, smoke)
  image_size = w.smoke_image_size if smoke else w.image_size
  warmup = 1 if smoke else 3
  # One device, as each PyTorch row uses: the table compares one accelerator with one.
  jax_result = bench.benchmark(config, steps, image_size, devices=jax.devices()[:1])
  flops = jax_result.get('gflop_per_step', 0) * 1e9 or None
  per_example = w.tokens_per_example(config)

  def row(impl, compile_s, step_s, note=''):
    return {'workload': name, 'implementation': impl, 'batch': config.batch_size,
            'items_per_s': config.batch_size * per_example / step_s if step_s else None,
            'unit': 'tokens/s' if per_example > 1 else 'examples/s',
            'step_ms': step_s * 1e3 if step_s else None, 'compile_s': compile_s,
            'mfu': flops / step_s / peak if flops and peak and step_s else None, 'note': note}

  rows = [row(f'this codebase ({config.model.name}, {jax_result["engine"]})',
              jax_result['compile_s'], jax_result['step_ms'] / 1e3)]
  try:
    import torch  # pylint: disable=import-outside-toplevel
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    # Lets cuDNN time its convolution algorithms in the untimed first steps, as the PyTorch
    # recipes do (torch_cnn.py too).
    torch.backends.cudnn.benchmark = device.type == 'cuda'
    spec, _ = tasks.get(config.task).bench_inputs(config, image_size, 1, np.random.default_rng(0))
    model = task_common.build_model(config, **spec.model_kwargs)
    twins = w.torch_builders(model, config, device, image_size, torch_compile)
  except ImportError as e:
    return rows + [row('PyTorch', None, None, note=f'skipped: {e}')]
  # Said in the row, never silent: a torch without CUDA next to JAX on a GPU.
  torch_note = ('PyTorch on the CPU (no CUDA in this torch)'
                if device.type == 'cpu' and jax.default_backend() != 'cpu' else '')
  for impl, build in twins:
    try:
      timing = torch_row(build(), steps, warmup, device)
    except Exception as e:  # pylint: disable=broad-except
      # E.g. torch.compile without a working Triton / C compiler: the row says why and
      # the other rows still run.
      rows.append(row(impl, None, None, note=failure_note(e)))
      continue
    rows.append(row(impl, timing['compile_s'], timing['step_s'], note=torch_note))
    if device.type == 'cuda':
      torch.cuda.empty_cache()
  return rows


def failure_note(error: Exception) -> str:
  """'failed: <type>: <first line of the message>' for a table row (no '|')."""
  first_line = (str(error).strip().splitlines() or [''])[0][:160]
  return f'failed: {type(error).__name__}: {first_line}'.replace('|', '/')


def table_header(device: str) -> str:
  """The line naming the device and the Markdown table's header."""
  return '\n'.join([
      f'device: {device}', '',
      '| workload | implementation | batch | throughput | step (ms) | compile (s) | MFU | note |',
      '|---|---|---:|---:|---:|---:|---:|---|'])


def format_row(r: dict) -> str:
  """One row (run_workload) of the Markdown table."""
  fmt = lambda v, spec, unit='': '—' if v is None else format(v, spec) + unit
  rate = '—' if r['items_per_s'] is None else f"{r['items_per_s']:,.0f} {r['unit']}"
  return (f"| {r['workload']} | {r['implementation']} | {r['batch']} | {rate} | "
          f"{fmt(r['step_ms'], '.1f')} | {fmt(r['compile_s'], '.1f')} | "
          f"{fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f', '%')} | {r['note']} |")


def format_table(rows: list[dict], device: str) -> str:
  """A Markdown table of `rows` (run_workload) under a line naming the device."""
  return '\n'.join([table_header(device)] + [format_row(r) for r in rows])


def main(argv):
  del argv
  unknown = [r for r in FLAGS.rows if r not in WORKLOADS]
  if unknown:
    raise app.UsageError(f'Unknown rows {unknown}; valid: {sorted(WORKLOADS)}')
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind, FLAGS.peak_tflops)
  peak_note = f'peak {peak / 1e12:.0f} TFLOP/s bf16' if peak else 'peak unknown: no MFU'
  smoke_note = ' -- SMOKE sizes, not a measurement' if FLAGS.smoke else ''
  print_table(FLAGS.rows, FLAGS.smoke, 1 if FLAGS.smoke else FLAGS.steps, peak,
              FLAGS.torch_compile, f'{jax.device_count()}x {kind} ({jax.default_backend()}, '
                                   f'{peak_note}){smoke_note}')


def print_table(names, smoke: bool, steps: int, peak: Optional[float], torch_compile: bool,
                device: str) -> None:
  """Prints the table of workloads `names`, each workload's rows as soon as they are
  timed: a run cut short by a time limit keeps the rows before it, and a workload that
  fails gets one row naming the error."""
  print(table_header(device), flush=True)
  for name in names:
    try:
      rows = run_workload(name, smoke, steps, peak, torch_compile)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception('Workload %s failed', name)
      rows = [{'workload': name, 'implementation': 'this codebase', 'batch': '—',
               'items_per_s': None, 'unit': '', 'step_ms': None, 'compile_s': None,
               'mfu': None, 'note': failure_note(e)}]
    for r in rows:
      print(format_row(r), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
