"""Evaluators: metrics over a whole eval split that are not per-example averages.

As in big_vision's evaluators, an evaluator receives a `predict_fn(variables, batch)`
(the task's prediction, never the model) and compiles it once, on the run's engine,
together with its own reduction:

- `SumEvaluator`: a per-batch device function of (predictions, batch) whose outputs
  are summed over devices (global arrays under jit, `psum` under pmap), then over
  batches, and turned into metrics on the host: exact totals such as a segmentation
  confusion matrix, with no per-example data leaving the devices.
- `GatherEvaluator`: per-example predictions gathered from all devices and processes
  and scored on the host, e.g. decoded sequences -> WER / BLEU, or detections -> mAP.

The trainer calls `reset()`, then `update(state, device_batch, batch)` on every
(padded) eval batch, then `result(role)`.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


def all_processes(x: np.ndarray) -> np.ndarray:
  """This process's rows -> the rows of all processes, concatenated (in process order)."""
  return multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x


class SumEvaluator:
  """Metrics from device sums over the whole split.

  batch_sums(predictions, batch) -> pytree of arrays, summed over the batch's rows
    (padding must carry weight 0: use batch['mask']); runs inside the compiled step.
  finalize(totals) -> {name: float}: host numpy totals -> metrics.
  """

  def __init__(self, predict_fn: Callable, engine, batch_sums: Callable, finalize: Callable):
    self._engine = engine
    self._finalize = finalize
    self._step = engine.compile(lambda variables, batch: batch_sums(predict_fn(variables, batch),
                                                                    batch), reduce=True)
    self._totals = None

  def reset(self) -> None:
    self._totals = None

  def update(self, state, device_batch: dict, batch: dict) -> None:
    del batch
    sums = self._step(state, device_batch)
    self._totals = sums if self._totals is None else jax.tree.map(jnp.add, self._totals, sums)

  def result(self, role: str) -> dict:
    del role
    return self._finalize(self._engine.to_host(self._totals))


class GatherEvaluator:
  """Metrics of the per-example predictions of the whole split, scored on the host.

  score(role, indices [n] int32, predictions) -> {name: float}: every real example of
  split `role` once (padding removed), in any order; `predictions` is predict_fn's
  output (an array or pytree of arrays) with [n, ...] rows. Batches must carry 'index'
  [b] int32 and 'mask' [b] float32.
  """

  def __init__(self, predict_fn: Callable, engine, score: Callable):
    self._engine = engine
    self._score = score
    self._step = engine.compile(predict_fn, reduce=False)
    self.reset()

  def reset(self) -> None:
    self._rows, self._indices, self._masks = [], [], []

  def update(self, state, device_batch: dict, batch: dict) -> None:
    self._rows.append(self._engine.to_local(self._step(state, device_batch)))
    self._indices.append(batch['index'])
    self._masks.append(batch['mask'])

  def result(self, role: str) -> dict:
    mask = all_processes(np.concatenate(self._masks)) > 0
    index = all_processes(np.concatenate(self._indices))[mask]
    rows = jax.tree.map(lambda *parts: all_processes(np.concatenate(parts))[mask], *self._rows)
    return self._score(role, index, rows)
