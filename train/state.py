"""The train state: everything a resumed run needs besides the data iterator."""

from typing import Any

import flax
import jax
import optax


@flax.struct.dataclass
class TrainState:
  """Model and optimizer state, a pytree (so it can be jitted, donated and checkpointed).

  Attributes:
    step: int32 scalar, optimizer updates applied so far.
    params: the model's 'params' collection, float32.
    model_state: the other collections a model keeps (e.g. {'batch_stats': ...}), or {}.
    opt_state: optax state.
    rng: uint32 key data (`jax.random.key_data`); raw data so Orbax stores it as an array.
    tx: the optax transformation (static, not saved).
    ema: None, or the exponential moving average of the weights (`update_ema`), laid
      out like `variables` ({'params': ..., 'batch_stats': ...}), float32.
    ema_decay: the moving average's decay (static; 0 when `ema` is None).
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  ema: Any = None
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

  @property
  def trained_variables(self) -> dict:
    """The variables dict for `model.apply` that the optimizer updates."""
    return {'params': self.params, **self.model_state}

  @property
  def variables(self) -> dict:
    """The variables dict for evaluation, prediction and export: the moving average's
    when the run keeps one (config.optim.ema_decay > 0), else the trained ones."""
    return self.trained_variables if self.ema is None else self.ema

  def update_ema(self) -> 'TrainState':
    """The state with its moving average moved towards the current variables:
    ema <- ema + (1 - d_n) (variables - ema), d_n = min(ema_decay, (1 + n) / (10 + n))
    after n = `step` updates. The ramp is tf.train.ExponentialMovingAverage's
    `num_updates` (as in the EfficientNet and MobileNet recipes): early averages are not
    dominated by the random initialisation. Averaging weights: Polyak & Juditsky 1992;
    BatchNorm statistics and other float variables are averaged too (as timm's ModelEmaV2
    and YOLOv5's ModelEMA do), integer ones are copied. Unchanged when `ema` is None."""
    if self.ema is None:
      return self
    n = self.step.astype(jax.numpy.float32)
    decay = jax.numpy.minimum(self.ema_decay, (1.0 + n) / (10.0 + n))
    move = lambda e, v: (e + (1.0 - decay) * (v - e)).astype(e.dtype) if (
        jax.numpy.issubdtype(e.dtype, jax.numpy.floating)) else v
    return self.replace(ema=jax.tree.map(move, self.ema, self.trained_variables))


def create(model, tx: optax.GradientTransformation, init_args: tuple,
           seed: int, ema_decay: float = 0.0) -> TrainState:
  """Initialises the model on `init_args` (its inputs for one example, e.g.
  (image [1, h, w, c],) or (source [1, n], target [1, m])) and the optimizer; with
  `ema_decay` > 0 also a moving average of the weights, starting at the initial ones.

  Pure; the engines call it under jit (or `jax.eval_shape` for the abstract state).
  """
  init_rng, state_rng = jax.random.split(jax.random.key(seed))
  # The initial weights come from the 'rbg' generator: XLA on the CPU compiles the
  # threefry bits of ~100 parameter tensors slowly (ResNet-18: 18 s, UNet++: 56 s,
  # against 4 s and 8 s). The training key (`state_rng`: dropout) stays threefry.
  init_rng = jax.random.key(jax.random.randint(init_rng, (), 0, 2 ** 31 - 1), impl='rbg')
  variables = model.init({'params': init_rng, 'dropout': init_rng}, *init_args, train=False)
  variables = flax.core.unfreeze(variables)
  params = variables.pop('params')
  return with_ema_reset(TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32), params=params, model_state=variables,
      opt_state=tx.init(params), rng=jax.random.key_data(state_rng), tx=tx,
      ema_decay=ema_decay))


def with_ema_reset(state: TrainState, copy=jax.numpy.copy) -> TrainState:
  """`state` with its moving average (kept when `state.ema_decay` > 0) set to a copy
  (made by `copy`: `np.array` for host states) of its current variables: at
  initialisation, and after loading pretrained weights."""
  if state.ema_decay <= 0:
    return state.replace(ema=None)
  return state.replace(ema=jax.tree.map(copy, state.trained_variables))


def count_params(params) -> tuple[int, list[tuple[str, int]]]:
  """Total number of parameters and a per-top-level-module table [(name, count)]."""
  table = [(name, sum(x.size for x in jax.tree.leaves(sub))) for name, sub in params.items()]
  return sum(n for _, n in table), table

