"""Preemption: every process of a job stops at the same step, saves and exits cleanly.

One process: a Python SIGTERM handler sets a flag the loop reads after each step.

Several processes (jax.distributed): JAX's preemption sync manager (the coordination
service) catches SIGTERM, or the cluster's preemption notice, on whichever process
receives it, tells every process, and agrees on one step at which
`multihost_utils.reached_preemption_sync_point(step)` is True on all of them. A
Python handler would replace the service's signal handler, so none is installed
then. Without the service (`jax_enable_preemption_service=False`) a multi-process
job falls back to the local flag, with a warning that processes may then disagree.
"""

import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
  """Context manager; `reached(step)` after each step says whether to save and stop."""

  def __init__(self):
    self.requested = False
    self._previous = None
    self._service = False

  def __enter__(self):
    self._service = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
    if jax.process_count() > 1 and not self._service:
      logging.warning('jax_enable_preemption_service is off: a SIGTERM stops only the '
                      'process that receives it.')
    if not self._service:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # Not the main thread (e.g. some test runners): no handler.
        self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and exiting.')
    self.requested = True

  def reached(self, step: int) -> bool:
    """True when this step is where every process saves and stops (same on all)."""
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
