"""XLA compiler flags this codebase sets by default, before JAX creates its backends.

Importing the `train` package applies them, so launch.py, train.bench, train.predict,
train.export, the benchmarks and the tests all compile with them. A flag the user's own
`XLA_FLAGS` names is left as the user set it:

  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution python launch.py ...

restores jaxlib's default (YNNPACK convolutions).

Why (README: "XLA CPU flags", measured on the 2-core CPU with jaxlib 0.10.2): this jaxlib
hands every convolution to YNNPACK (`ynn_fusion` in the compiled HLO). Its forward pass is
fine, but the convolutions of the backward pass (input and kernel gradients) are slow:
one 3x3, 32-channel convolution on [16, 64, 64, 32] took 289 ms forward + backward with
YNNPACK against 68 ms with XLA's own convolution emitter, and the ResNet-18
Fashion-MNIST train step went from 1.02-1.09 s to 0.56-0.62 s. oneDNN and XNNPACK
fusions (`--xla_cpu_use_onednn`, `--xla_cpu_experimental_{onednn,xnn}_fusion_type`,
`--xla_cpu_experimental_xnn_graph_fusion_mode`) and YNNPACK elementwise/reduce fusions
were measured too and gave no gain beyond the machine's noise (or lost), so they stay off.
The flags name the CPU backend only; accelerators ignore them.
"""

import os

DEFAULT_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


def _flag_name(flag: str) -> str:
  return flag.lstrip('-').split('=', 1)[0]


def apply_defaults(environ=None) -> list[str]:
  """Appends each of DEFAULT_FLAGS to `environ['XLA_FLAGS']` (default: os.environ) unless
  XLA_FLAGS already sets that flag; returns the flags it added.

  XLA reads XLA_FLAGS once, when JAX creates its first backend (the first computation,
  not `import jax`); called after that, the new value has no effect on this process.
  """
  environ = os.environ if environ is None else environ
  current = environ.get('XLA_FLAGS', '')
  named = {_flag_name(f) for f in current.split()}
  added = [f for f in DEFAULT_FLAGS if _flag_name(f) not in named]
  if added:
    environ['XLA_FLAGS'] = ' '.join([current.strip(), *added]).strip()
  return added
