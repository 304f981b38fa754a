r"""Where a train step spends its time: a `jax.profiler` trace of a config's compiled
train step, its operations summed by the model layer and pass that emitted them.

  python -m benchmarks.profile_step --config=configs/mobilenetv2_fashion_mnist.py \
      [--steps=5] [--top=20] [--group=layer|op] [--trace_dir=DIR] [--torch]

Each operation of the trace (an XLA fusion, copy, dot, ...; on the CPU backend one
thunk) is named after its HLO instruction, whose metadata holds the JAX name stack,
e.g. `jit(train_step)/transpose(jvp(MobileNetV2))/block2_1/depthwise/conv/reduce_sum`.
That gives the pass (`jvp(...)`: forward; `transpose(...)`: backward; neither: loss,
optimizer update) and the layer; numbers in layer names become `*`, so that the rows
add up a layer kind over all blocks (`block*_*/depthwise/conv`). `--group=op` keeps the
primitive (`.../conv/reduce_sum`). A fusion carries its root operation's metadata, so
work XLA fused across layers counts in the root's row. Times are per step, summed over
the executor's threads, so on a multi-threaded backend the total can exceed the step's
wall time; the wall time per traced step is printed below the total. Work an operation
hands to a thread pool after its event ends is in no event: XLA's CPU backend runs its
own (Eigen) convolutions that way, so for a convolution-heavy step (ResNet) most of the
convolution time shows up only as the "in no operation's event" row.

--torch prints the same breakdown for the PyTorch twin of the config's model
(`benchmarks.torch_cnn` for ResNets and MobileNetV2, `benchmarks.torch_vit` for ViTs), from
`torch.profiler`: self CPU time per ATen operation,
convolutions split by weight shape (depthwise k x k, 1 x 1, dense k x k).
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Optional

import jax
from absl import app, flags
from ml_collections import config_flags

from train import bench, run_config

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  flags.DEFINE_integer('steps', 5, 'Traced steps (after compiling and two untraced steps).')
  flags.DEFINE_integer('top', 20, 'Rows to print (the rest summed in one row).')
  flags.DEFINE_enum('group', 'layer', ['layer', 'op'], 'Sum by layer, or by layer and primitive.')
  flags.DEFINE_string('trace_dir', None, 'Keep the trace here (TensorBoard/Perfetto); '
                      'default: a temporary directory.')
  flags.DEFINE_bool('torch', False, 'Profile the PyTorch twin (benchmarks.torch_cnn or '
                    'torch_vit) instead.')
  flags.DEFINE_integer('image_size', 28, 'Input side for --torch (CNNs; a ViT uses its '
                       'model.image_size).')
  flags.mark_flags_as_required(['config'])


_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = ')
_OP_NAME = re.compile(r'metadata=\{[^}]*op_name="([^"]+)"')


def hlo_op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> JAX name stack (`op_name` metadata, '' if none) of every
  instruction of a compiled HLO module's text (`compiled.as_text()`)."""
  names = {}
  for line in hlo_text.splitlines():
    instruction = _INSTRUCTION.match(line)
    if instruction:
      op_name = _OP_NAME.search(line)
      names[instruction.group(1)] = op_name.group(1) if op_name else ''
  return names


def attribute(op_name: str, group: str = 'layer') -> tuple[str, str]:
  """(pass, layer) of a JAX name stack: pass 'forward' (inside `jvp(...)`), 'backward'
  (inside `transpose(...)`) or 'loss/update'; layer the path inside the model, numbers
  as '*', with the primitive kept only for group='op'.

  'jit(train_step)/transpose(jvp(Net))/block2_1/conv/reduce_sum' -> ('backward',
  'block*_*/conv').
  """
  parts = op_name.split('/')
  pass_ = ('backward' if 'transpose(' in op_name else
           'forward' if 'jvp(' in op_name else 'loss/update')
  inner = [p for p in parts[1:-1] if not p.startswith(('jit(', 'jvp(', 'transpose('))]
  layer = '/'.join(re.sub(r'\d+', '*', p) for p in inner) or '(outside the model)'
  if group == 'op':
    layer = f'{layer}/{parts[-1]}'
  return pass_, layer


def summarise(trace_events: list, op_names: dict[str, str], steps: int,
              group: str = 'layer') -> collections.Counter:
  """Microseconds per step by (pass, layer) of the trace's complete ('X') events whose
  names are instructions in `op_names` (other events: the runtime, Python); those
  without metadata under ('unattributed', instruction name without its number)."""
  totals = collections.Counter()
  for event in trace_events:
    name = event.get('name')
    if event.get('ph') != 'X' or name not in op_names:
      continue
    key = (attribute(op_names[name], group) if op_names[name] else
           ('unattributed', re.sub(r'\.\d+$', '', name)))
    totals[key] += event['dur'] / steps
  return totals


def read_trace(trace_dir: str) -> list:
  """The events of the newest Chrome-format trace (`*.trace.json.gz`) under trace_dir.
  Raises FileNotFoundError if the profiler wrote none."""
  paths = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'No *.trace.json.gz under {trace_dir}')
  with gzip.open(paths[-1]) as f:
    return json.load(f)['traceEvents']


def table(totals: collections.Counter, top: int, title: str,
          wall_us: Optional[float] = None) -> str:
  """Markdown rows, largest first: the `top` keys, the rest summed, and the total; with
  `wall_us` (the traced step's wall time), also that time and what no event covers."""
  total = sum(totals.values())
  lines = [f'| {title} | ms/step | share |', '|---|---:|---:|']
  ranked = totals.most_common()
  for key, us in ranked[:top]:
    lines.append(f'| {" ".join(key) if isinstance(key, tuple) else key} | {us / 1e3:.1f} | '
                 f'{100 * us / total:.1f} % |')
  rest = sum(us for _, us in ranked[top:])
  if rest:
    lines.append(f'| ({len(ranked) - top} more) | {rest / 1e3:.1f} | {100 * rest / total:.1f} % |')
  lines.append(f'| **total** | **{total / 1e3:.1f}** | |')
  if wall_us is not None:
    lines.append(f'| wall time per traced step | {wall_us / 1e3:.1f} | |')
    if wall_us > total:
      lines.append(f'| in no operation\'s event (asynchronous work, see the docstring) | '
                   f'{(wall_us - total) / 1e3:.1f} | {100 * (wall_us - total) / wall_us:.1f} % '
                   f'of wall |')
  return '\n'.join(lines)


def profile_jax(config, steps: int, trace_dir: str,
                group: str) -> tuple[collections.Counter, float]:
  """Microseconds per step by (pass, layer) of `steps` traced train steps of `config`
  (after compiling and two untraced steps), the trace written under `trace_dir`; and
  the wall time per traced step in microseconds."""
  _, step_fn, state, batch, _ = bench.build_step(config)
  compiled = step_fn.lower(state, batch).compile()
  op_names = hlo_op_names(compiled.as_text())
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  with jax.profiler.trace(trace_dir):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    wall_us = (time.perf_counter() - start) / steps * 1e6
  return summarise(read_trace(trace_dir), op_names, steps, group), wall_us


def conv_kind(op: str, shapes: list) -> str:
  """'depthwise 3x3', '1x1' or '3x3' (etc.) of an ATen convolution op from its input
  shapes: (input, weight, ...) for forward ops, (grad_output, input, weight, ...) for
  `aten::convolution_backward`; weight [out, in / groups, k, k]. '' if they do not fit."""
  first = 1 if op == 'aten::convolution_backward' else 0
  if len(shapes) < first + 2 or len(shapes[first]) != 4 or len(shapes[first + 1]) != 4:
    return ''
  channels, (_, per_group, k, _) = shapes[first][1], shapes[first + 1]
  return f'depthwise {k}x{k}' if per_group == 1 < channels else f'{k}x{k}'


def profile_torch(config, steps: int, image_size: int) -> collections.Counter:
  """Self CPU time per step of each ATen operation in `steps` steps of the PyTorch twin
  (after two warm-up steps); convolution operations get their `conv_kind`."""
  import torch  # The PyTorch peer baseline only.
  if config.model.name.startswith('vit'):
    from benchmarks import torch_vit
    step, _, _ = torch_vit.make_step(config, torch.device('cpu'))
  else:
    from benchmarks import torch_cnn
    step, _, _ = torch_cnn.make_step(config, image_size, False, torch.device('cpu'))
  for _ in range(2):
    step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                              record_shapes=True) as prof:
    for _ in range(steps):
      step()
  totals = collections.Counter()
  for event in prof.key_averages(group_by_input_shape=True):
    kind = conv_kind(event.key, event.input_shapes) if 'conv' in event.key else ''
    totals[f'{event.key} {kind}'.strip()] += event.self_cpu_time_total / steps
  return +totals


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.torch:
    totals = profile_torch(config, FLAGS.steps, FLAGS.image_size)
    print(table(totals, FLAGS.top, f'PyTorch {config.model.name}: ATen operation (self time)'))
    return
  with tempfile.TemporaryDirectory() as tmp:
    totals, wall_us = profile_jax(config, FLAGS.steps, FLAGS.trace_dir or tmp, FLAGS.group)
  print(table(totals, FLAGS.top, f'{config.model.name}: pass, layer', wall_us))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=run_config.parse_flags)
