"""The train and eval steps as pure functions, shared by both parallel engines.

Under `jax.jit` on a Mesh (axis_name=None) the arrays are global and the batch mean
is the global mean by construction. Under `jax.pmap` (axis_name='data') each device
sees its shard; the loss is divided by the global example count and gradients and
metric sums are `psum`-ed, which gives the same numbers as the jit engine.
"""

import jax
import jax.numpy as jnp
import optax

from train.state import TrainState


_AUGMENT_STREAM = 0x41554721  # fold_in data: the augmentation's key, apart from dropout's.


def _psum(tree, axis_name):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def _step_rng(state: TrainState, axis_name):
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  if axis_name is not None:  # Different dropout masks on each device.
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  return rng


def _micro_batches(batch: dict, accum_steps: int) -> dict:
  """[b, ...] -> [accum_steps, b / accum_steps, ...]; micro-batch i holds examples
  i, i + accum_steps, ..., so each device keeps its own shard (no data movement)."""
  def split(x):
    x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: dict, *, model, task, schedule, axis_name=None,
               accum_steps: int = 1) -> tuple[TrainState, dict]:
  """One optimizer update on `batch`.

  The state's moving average of the weights, if it keeps one, follows the update.
  Returns the new state and metrics: the task's (sum, count) pairs plus scalars
  'learning_rate', 'grad_norm', 'param_norm' (global L2 norms).
  """
  rng = _step_rng(state, axis_name)
  # Its own stream (the dropout keys stay as they were without on-device augmentation).
  batch = task.augment(batch, jax.random.fold_in(rng, _AUGMENT_STREAM))
  normalizer = _psum(task.weights(batch).sum(), axis_name)
  mutable = list(state.model_state) or False

  def loss_fn(params, model_state, micro_batch, micro_rng):
    variables = {'params': params, **model_state}
    out = task.apply(model, variables, micro_batch, train=True, rngs={'dropout': micro_rng},
                     mutable=mutable)
    logits, new_model_state = out if mutable else (out, model_state)
    loss_sum = (task.loss(logits, micro_batch) * task.weights(micro_batch)).sum()
    return loss_sum / normalizer, (task.metrics(logits, micro_batch), new_model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (_, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
  else:
    def accumulate(carry, xs):
      grads_sum, metrics_sum, model_state = carry
      micro_batch, i = xs
      (_, (metrics, model_state)), grads = grad_fn(state.params, model_state, micro_batch,
                                                   jax.random.fold_in(rng, i))
      add = lambda a, b: jax.tree.map(jnp.add, a, b)
      return (add(grads_sum, grads), add(metrics_sum, metrics), model_state), None

    micro = _micro_batches(batch, accum_steps)
    first = jax.tree.map(lambda x: x[0], micro)
    metrics_shape = jax.eval_shape(lambda: loss_fn(state.params, state.model_state, first, rng)[1][0])
    zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
    init = (zeros(state.params), zeros(metrics_shape), state.model_state)
    (grads, metrics, model_state), _ = jax.lax.scan(
        accumulate, init, (micro, jnp.arange(accum_steps)))

  grads, metrics = _psum((grads, metrics), axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
                 grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params))
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state).update_ema()
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model, task, axis_name=None) -> dict:
  """The task's (sum, count) metrics on a (padded, masked) eval batch, with the state's
  evaluation variables (the moving average's when it keeps one); no state changes."""
  logits = task.apply(model, state.variables, batch, train=False)
  return _psum(task.metrics(logits, batch), axis_name)
