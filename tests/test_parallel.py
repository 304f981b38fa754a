"""Both engines on 1 and 8 fake CPU devices compute the same steps; no recompiles."""

import functools

import chex
import jax
import numpy as np
import pytest

import nets
from configs import common
from tasks import classification
from train import optim, parallel
from train import state as state_lib
from train import step as step_lib


def _setup(accum_steps=1):
  c = common.get_base_config()
  c.learning_rate, c.warmup_steps, c.optim.weight_decay = 1e-2, 2, 0.1
  model = nets.build('vit_custom', num_classes=10, image_size=16, patch_size=4, hidden_size=16,
                     num_layers=1, mlp_dim=32, num_heads=2, num_channels=1)
  tx, schedule = optim.build(c, 10)
  init_fn = functools.partial(state_lib.create, model, tx, (np.zeros((1, 16, 16, 1), np.float32),), 0)
  rng = np.random.default_rng(0)
  batches = [{'image': rng.normal(size=(16, 16, 16, 1)).astype(np.float32),
              'label': rng.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
  kwargs = dict(model=model, task=classification.ClassificationTask(10, 0.1), schedule=schedule,
                accum_steps=accum_steps)
  return init_fn, batches, kwargs


@functools.lru_cache(maxsize=None)  # The 1-device reference is shared by all cases.
def _train(engine_name, num_devices, accum_steps=1):
  init_fn, batches, kwargs = _setup(accum_steps)
  engine = parallel.build(engine_name, jax.devices()[:num_devices])
  state = engine.init_state(init_fn)
  step = engine.train_step(**kwargs)
  losses = []
  for batch in batches:
    state, metrics = step(state, engine.put_batch(batch))
    m = engine.to_host(metrics)
    losses.append(m['loss'][0] / m['loss'][1])
  return np.array(losses), parallel.replica(engine.to_canonical(state).params['head']['kernel'])


def test_eight_fake_devices_are_available():
  assert jax.device_count() == 8


@pytest.mark.parametrize('engine,devices,accum', [
    ('jit', 8, 1), ('pmap', 1, 1), ('pmap', 8, 1), ('jit', 1, 2), ('jit', 8, 2), ('pmap', 8, 2)])
def test_same_loss_and_params_as_one_device_jit(engine, devices, accum):
  ref_losses, ref_params = _train('jit', 1)
  losses, params = _train(engine, devices, accum)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params, ref_params, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('engine', ['jit', 'pmap'])
def test_train_step_compiles_once(engine, monkeypatch):
  """The engine's own step traces once for same-shaped batches; a new shape retraces."""
  chex.clear_trace_counter()  # Counts are per source footprint, shared by both cases.
  # The engines look step_lib.train_step up when `train_step(...)` builds the step.
  monkeypatch.setattr(step_lib, 'train_step', chex.assert_max_traces(step_lib.train_step, n=1))
  init_fn, batches, kwargs = _setup()
  eng = parallel.build(engine, jax.devices()[:4])
  state = eng.init_state(init_fn)
  step = eng.train_step(**kwargs)
  for batch in batches * 2:
    state, _ = step(state, eng.put_batch(batch))
  half = jax.tree.map(lambda x: x[:8], batches[0])  # 8 rows: a second trace, which must fail.
  with pytest.raises(AssertionError, match="'train_step' is traced > 1 times"):
    step(state, eng.put_batch(half))


def test_canonical_state_round_trips_between_engines():
  init_fn, _, _ = _setup()
  jit_state = parallel.build('jit').init_state(init_fn)
  pmap_engine = parallel.build('pmap')
  back = pmap_engine.to_canonical(pmap_engine.from_canonical(jit_state))
  chex.assert_trees_all_close(jax.tree.map(parallel.replica, back),
                              jax.tree.map(parallel.replica, jit_state))


def test_batch_not_divisible_by_devices():
  with pytest.raises(ValueError, match=r'config.batch_size \(100\).*number of devices \(8\)'):
    parallel.check_batch_size('config.batch_size', 100, 8)
  with pytest.raises(ValueError, match="valid: \\['jit', 'pmap'\\]"):
    parallel.build('pjit')


def test_multi_process_launchers_detected_from_the_environment(caplog):
  detected = parallel.launcher_detected
  assert not detected({})
  assert not detected({'SLURM_NTASKS': '1', 'SLURM_STEP_NODELIST': 'node1'})
  assert detected({'SLURM_NTASKS': '4', 'SLURM_STEP_NODELIST': 'node[1-4]'})  # srun step.
  assert detected({'OMPI_COMM_WORLD_SIZE': '2'}) and not detected({'OMPI_COMM_WORLD_SIZE': '1'})
  assert detected({'JAX_COORDINATOR_ADDRESS': 'host0:1234'})
  # An sbatch script running launch.py itself: one process, not a job to wait for.
  with caplog.at_level('WARNING'):
    assert not detected({'SLURM_NTASKS': '4', 'SLURM_JOB_NODELIST': 'node[1-4]'})
  assert 'not started by srun' in caplog.text and 'run 4 processes' in caplog.text
