"""Data-parallel engines over all devices of all processes.

`JitEngine` (default, the JAX-recommended path): `jax.jit` over a 1-D device Mesh
with axis 'data'; the batch is a global array sharded along its first axis
(`NamedSharding(mesh, P('data'))`), the state is replicated, and XLA inserts the
gradient all-reduce. `PmapEngine`: the same step under `jax.pmap` with explicit
`psum` collectives, for users of classic pmap jobs.

Both engines expose the same interface to the trainer, and both hand the
checkpointer the state in one canonical form: arrays replicated over the global
mesh. So a checkpoint written by one engine restores into the other.
"""

import functools

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train import step as step_lib

AXIS = 'data'
ENGINES = ('jit', 'pmap')


def check_batch_size(name: str, batch_size: int, num_devices: int) -> None:
  """Raises ValueError unless `batch_size` divides evenly over `num_devices`."""
  if batch_size % num_devices:
    raise ValueError(f'{name} ({batch_size}) must be divisible by the number of devices '
                     f'({num_devices}); e.g. use {max(num_devices, batch_size // num_devices * num_devices)}')


class JitEngine:
  """jit + Mesh + NamedSharding data parallelism."""
  name = 'jit'
  axis_name = None  # Arrays are global: batch statistics need no named collective.

  def __init__(self, devices=None):
    devices = list(devices or jax.devices())
    self.num_devices = len(devices)
    self.mesh = Mesh(np.asarray(devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))

  def init_state(self, init_fn):
    """Runs `init_fn() -> TrainState` under jit with the result replicated."""
    return jax.jit(init_fn, out_shardings=self.replicated)()

  def put_batch(self, batch: dict) -> dict:
    """This process's numpy batch -> global arrays sharded over the 'data' axis."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)

  def train_step(self, **kwargs):
    """The jitted train step `(state, batch) -> (state, metrics)`, state donated."""
    return jax.jit(functools.partial(step_lib.train_step, **kwargs), donate_argnums=0,
                   out_shardings=self.replicated)

  def eval_step(self, **kwargs):
    """The jitted eval step `(state, batch) -> metrics` ((sum, count) pairs, replicated)."""
    return jax.jit(functools.partial(step_lib.eval_step, **kwargs),
                   out_shardings=self.replicated)

  def compile(self, fn, *, reduce: bool):
    """`fn(variables, batch)` as a jitted `(state, batch) -> outputs`: sums over the
    global batch, replicated (`reduce`), or per-example rows sharded like the batch."""
    return jax.jit(lambda state, batch: fn(state.variables, batch),
                   out_shardings=self.replicated if reduce else self.batch_sharding)

  def to_local(self, tree):
    """Batch-sharded outputs (a pytree) -> this process's rows as numpy (as put_batch
    took them)."""
    return jax.tree.map(lambda x: np.asarray(multihost_utils.global_array_to_host_local_array(
        x, self.mesh, P(AXIS))), tree)

  def to_canonical(self, state):
    """The state as checkpoints store it; the jit engine already holds that form."""
    return state

  def from_canonical(self, state):
    """A restored (replicated) state in this engine's layout: unchanged for jit."""
    return state

  def to_host(self, tree):
    """Replicated step outputs (e.g. metrics) -> host numpy."""
    return jax.tree.map(replica, tree)


class PmapEngine:
  """pmap over this process's devices; collectives span all processes."""
  name = 'pmap'
  axis_name = AXIS  # Models average batch statistics over it (synchronised BatchNorm).

  def __init__(self, devices=None):
    # pmap maps over local devices; with several processes `devices=None` lets every
    # process contribute its local devices to one global axis.
    self._devices = list(devices) if devices else None
    self.local_devices = self._devices or jax.local_devices()
    self.num_devices = len(devices) if devices else jax.device_count()
    self.mesh = Mesh(np.asarray(self._devices or jax.devices()), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self._stacked = NamedSharding(Mesh(np.asarray(self.local_devices), (AXIS,)), P(AXIS))

  def init_state(self, init_fn):
    """Runs `init_fn() -> TrainState` once and copies the result to every local device."""
    return self.from_canonical(jax.jit(init_fn)())

  def put_batch(self, batch: dict) -> dict:
    """[local_batch, ...] -> [local_devices, local_batch / local_devices, ...] on devices."""
    n = len(self.local_devices)
    return jax.tree.map(lambda x: jax.device_put(x.reshape((n, -1) + x.shape[1:]), self._stacked),
                        batch)

  def _pmap(self, fn, donate_argnums=(), **kwargs):
    return jax.pmap(functools.partial(fn, axis_name=AXIS, **kwargs), axis_name=AXIS,
                    devices=self._devices, donate_argnums=donate_argnums)

  def train_step(self, **kwargs):
    """The pmapped train step `(state, batch) -> (state, metrics)`, state donated."""
    return self._pmap(step_lib.train_step, donate_argnums=0, **kwargs)

  def eval_step(self, **kwargs):
    """The pmapped eval step `(state, batch) -> metrics`, psum-ed over all devices."""
    return self._pmap(step_lib.eval_step, **kwargs)

  def compile(self, fn, *, reduce: bool):
    """`fn(variables, batch)` as a pmapped `(state, batch) -> outputs`: its per-device
    sums `psum`-ed over all devices (`reduce`), or rows [local_devices, rows, ...]."""
    def device_fn(state, batch, axis_name):
      out = fn(state.variables, batch)
      return jax.lax.psum(out, axis_name) if reduce else out
    return self._pmap(device_fn)

  def to_local(self, tree):
    """Outputs (a pytree) [local_devices, rows, ...] -> this process's rows
    [local_batch, ...] as numpy."""
    return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)

  def to_host(self, tree):
    """Per-device step outputs (identical after psum) -> host numpy of one device."""
    return jax.tree.map(lambda x: replica(x)[0], tree)

  def to_canonical(self, state):
    """Per-device copies -> one copy replicated over the global mesh."""
    def one(x):
      local = replica(x)[0]
      return jax.make_array_from_callback(local.shape, self.replicated, lambda _: local)
    return jax.tree.map(one, state)

  def from_canonical(self, state):
    """One copy -> a stacked copy per local device."""
    n = len(self.local_devices)
    def stack(x):
      local = replica(x)
      return jax.device_put(np.broadcast_to(local, (n,) + local.shape), self._stacked)
    return jax.tree.map(stack, state)


def launcher_detected(environ) -> bool:
  """Whether this process was started, with others, by a launcher whose job
  `jax.distributed.initialize()` reads without arguments: an `srun` step of more than
  one task (SLURM), `mpirun` with more than one rank (Open MPI), or
  JAX_COORDINATOR_ADDRESS set. `environ`: the process environment (a mapping).

  An `sbatch` script that runs launch.py directly, without `srun`, also has
  SLURM_NTASKS > 1 but no step (SLURM_STEP_NODELIST, which JAX's SLURM detection reads):
  there is only this one process, and jax.distributed.initialize() would find no job
  and stop ('coordinator_address should be defined'), so it runs alone, with a warning.
  """
  if 'JAX_COORDINATOR_ADDRESS' in environ:
    return True
  tasks = int(environ.get('SLURM_NTASKS', '1'))
  if tasks > 1:
    if 'SLURM_STEP_NODELIST' in environ:
      return True
    logging.warning('SLURM_NTASKS=%d, but this process was not started by srun (no '
                    'SLURM_STEP_NODELIST): running it alone; start launch.py with srun to '
                    'run %d processes.', tasks, tasks)
  return int(environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1


def build(name: str, devices=None):
  """The engine called `name` ('jit' or 'pmap'). Raises ValueError for other names."""
  if name == 'jit':
    return JitEngine(devices)
  if name == 'pmap':
    return PmapEngine(devices)
  raise ValueError(f'Unknown parallel engine {name!r}; valid: {list(ENGINES)}')


def replica(x) -> np.ndarray:
  """The host copy of a replicated array (works for multi-process arrays too)."""
  return np.asarray(x.addressable_shards[0].data)
