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
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @property
  def variables(self) -> dict:
    """The variables dict for `model.apply`."""
    return {'params': self.params, **self.model_state}


def create(model, tx: optax.GradientTransformation, init_args: tuple,
           seed: int) -> TrainState:
  """Initialises the model on `init_args` (its inputs for one example, e.g.
  (image [1, h, w, c],) or (source [1, n], target [1, m])) and the optimizer.

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
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    model_state=variables, opt_state=tx.init(params),
                    rng=jax.random.key_data(state_rng), tx=tx)


def count_params(params) -> tuple[int, list[tuple[str, int]]]:
  """Total number of parameters and a per-top-level-module table [(name, count)]."""
  table = [(name, sum(x.size for x in jax.tree.leaves(sub))) for name, sub in params.items()]
  return sum(n for _, n in table), table

