"""The optax chain, built in one place from the config.

  clip_by_global_norm -> [coupled L2 (masked)] -> optimizer moments (Adam or SGD
  momentum) -> [decoupled weight decay (masked)] -> -learning_rate(step)

optim.weight_decay_mode picks where the decay term enters:
  'decoupled' (default): after the moments, Loshchilov & Hutter 2019 ("Decoupled
    Weight Decay Regularization", Alg. 2: AdamW; SGDW for SGD), scaled by the
    scheduled learning rate as in optax and PyTorch AdamW.
  'coupled': added to the gradient before the moments, i.e. classic L2
    regularisation as in `torch.optim.SGD(weight_decay=...)`, the convention behind
    the ResNet recipes' "weight decay 1e-4 / 5e-4" (He et al. 2016, Sec. 3.4).
It is never part of the loss. Biases, normalisation scales and position
embeddings / class tokens are not decayed.
"""

import re
from typing import Callable

import jax
import optax

SCHEDULES = ('cosine', 'linear', 'step', 'constant', 'rsqrt')
OPTIMIZERS = ('adamw', 'sgd')
WEIGHT_DECAY_MODES = ('decoupled', 'coupled')


def learning_rate_schedule(config, total_steps: int) -> Callable[[int], float]:
  """Linear warmup from 0 to `config.learning_rate` over `config.warmup_steps`, then decay.

  config.optim.schedule:
    'cosine': half cosine to learning_rate * end_learning_rate_factor at total_steps
      (Loshchilov & Hutter 2017, SGDR without restarts);
    'linear': straight line to the same end value;
    'step': multiply by step_factor at each fraction in step_boundaries of the decay phase
      (He et al. 2016: x0.1 at fixed epochs);
    'rsqrt': learning_rate * sqrt(warmup_steps / step) after warmup (Vaswani et al. 2017, Eq. 3);
    'constant'.
  Raises ValueError for an unknown schedule or warmup_steps >= total_steps.
  """
  opt = config.optim
  peak, warmup = config.learning_rate, config.warmup_steps
  if opt.schedule not in SCHEDULES:
    raise ValueError(f'Unknown optim.schedule {opt.schedule!r}; valid: {list(SCHEDULES)}')
  if warmup >= total_steps and opt.schedule != 'constant':
    raise ValueError(f'warmup_steps ({warmup}) must be smaller than the number of training '
                     f'steps ({total_steps})')
  decay_steps = max(total_steps - warmup, 1)
  end = peak * opt.end_learning_rate_factor
  if opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_learning_rate_factor)
  elif opt.schedule == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif opt.schedule == 'step':
    decay = optax.piecewise_constant_schedule(
        peak, {int(b * decay_steps): opt.step_factor for b in opt.step_boundaries})
  elif opt.schedule == 'rsqrt':
    # join_schedules also evaluates it during warmup (s < 0), where it is not used.
    decay = lambda s: peak * jax.numpy.sqrt(max(warmup, 1) / (jax.numpy.maximum(s, 0)
                                                             + max(warmup, 1)))
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params, no_decay_names: tuple[str, ...]):
  """True for parameters that get weight decay: arrays with ndim > 1 (kernels,
  embeddings), except those whose path contains one of `no_decay_names`
  (config.optim.no_decay_names, the one list of them). Biases and normalisation
  scales are never decayed, whatever their rank: the attention projections'
  biases are [heads, head_dim] (`nn.DenseGeneral`)."""
  pattern = re.compile('|'.join(map(re.escape, no_decay_names))) if no_decay_names else None

  def decays(path, x):
    keys = [str(getattr(k, 'key', k)) for k in path]
    return (x.ndim > 1 and keys[-1] not in ('bias', 'scale')
            and not (pattern and pattern.search('/'.join(keys))))

  return jax.tree_util.tree_map_with_path(decays, params)


def build(config, total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
  """The whole optimizer from `config` (fields in configs/common.py).

  Returns (transformation, schedule). Raises ValueError for unknown names.
  """
  opt = config.optim
  schedule = learning_rate_schedule(config, total_steps)
  if opt.name == 'adamw':
    moments = optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif opt.name == 'sgd':
    moments = optax.trace(decay=opt.momentum, nesterov=opt.nesterov)
  else:
    raise ValueError(f'Unknown optim.name {opt.name!r}; valid: {list(OPTIMIZERS)}')
  if opt.weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(f'Unknown optim.weight_decay_mode {opt.weight_decay_mode!r}; '
                     f'valid: {list(WEIGHT_DECAY_MODES)}')
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  decay = []
  if opt.weight_decay > 0:
    mask = lambda p: weight_decay_mask(p, tuple(opt.no_decay_names))
    decay = [optax.add_decayed_weights(opt.weight_decay, mask=mask)]
  if opt.weight_decay_mode == 'coupled':
    parts += decay + [moments]
  else:
    parts += [moments] + decay
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
