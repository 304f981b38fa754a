"""The exponential moving average of the weights (config.optim.ema_decay): its
recurrence by hand, inside the jitted train step, and end to end: evaluated, tested,
resumed and restored with it, and refused where the checkpoints were saved without it."""

import copy
import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from data import pipeline
from train import checkpoint as checkpoint_lib
from train import parallel, restore, trainer
from train.state import TrainState, with_ema_reset
from tests.conftest import make_fashion_mnist_dir, saved_state, tiny_config


def _decay(n, ema_decay):
  return min(ema_decay, (1 + n) / (10 + n))


def test_the_average_follows_the_hand_computed_recurrence_with_its_ramp():
  tx = optax.sgd(0.1)
  params = {'w': np.array([1.0, -2.0], np.float32)}
  state = with_ema_reset(TrainState(
      step=np.int32(0), params=params,
      model_state={'batch_stats': {'mean': np.zeros(1, np.float32)}, 'count': np.int32(0)},
      opt_state=tx.init(params), rng=np.zeros(2, np.uint32), tx=tx, ema_decay=0.5))
  expected_w, expected_mean = np.array([1.0, -2.0]), np.zeros(1)
  for n in range(1, 11):  # The ramp (1 + n) / (10 + n) reaches 0.5 at n = 8, then 0.5.
    w, mean = np.array([n, -n], np.float32) * 3.0, np.full(1, n, np.float32)
    state = state.replace(step=np.int32(n), params={'w': w},
                          model_state={'batch_stats': {'mean': mean}, 'count': np.int32(n)})
    state = state.update_ema()
    d = _decay(n, 0.5)
    expected_w = d * expected_w + (1 - d) * w
    expected_mean = d * expected_mean + (1 - d) * mean
    np.testing.assert_allclose(state.ema['params']['w'], expected_w, rtol=1e-6)
    np.testing.assert_allclose(state.ema['batch_stats']['mean'], expected_mean, rtol=1e-6)
    assert int(state.ema['count']) == n  # Integer variables are copied, not averaged.
  assert _decay(3, 0.5) == pytest.approx(4 / 13) and _decay(9, 0.5) == 0.5
  # Evaluation reads the average; the optimizer's weights stay the trained ones.
  assert state.variables is state.ema
  np.testing.assert_array_equal(state.trained_variables['params']['w'], [30.0, -30.0])
  without = with_ema_reset(state.replace(ema_decay=0.0))
  assert without.ema is None and without.variables['params'] is without.params


def test_the_jitted_train_step_moves_the_average_after_each_update(tmp_path):
  config = tiny_config(make_fashion_mnist_dir(str(tmp_path / 'fmnist')))
  config.optim.ema_decay = 0.9
  engine = parallel.build('jit', jax.devices()[:1])
  spec = pipeline.image_spec(10, (28, 28, 1))
  model, task, _, schedule, init_fn = trainer.build_components(config, 100, spec)
  state = engine.init_state(init_fn)
  step = engine.train_step(model=model, task=task, schedule=schedule)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 28, 28, 1)).astype(np.float32),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  expected = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema['params']), expected)
  for n in (1, 2, 3):
    state, _ = step(state, engine.put_batch(batch))
    d = _decay(n, 0.9)
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, expected,
                            jax.device_get(state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 jax.device_get(state.ema['params']), expected)
  moved = jax.tree.map(lambda e, p: np.abs(np.asarray(e) - np.asarray(p)).max(),
                       state.ema['params'], state.params)
  assert max(jax.tree.leaves(moved)) > 1e-4  # The average lags the trained weights.


@pytest.fixture(scope='module')
def ema_runs(tmp_path_factory):
  """A 6-step run keeping an average (decay 0.9), and a 3-step run of the same config."""
  fmnist_dir = make_fashion_mnist_dir(str(tmp_path_factory.mktemp('fmnist')))
  root = tmp_path_factory.mktemp('runs')
  config = tiny_config(fmnist_dir)
  config.optim.ema_decay = 0.9
  config.learning_rate = 1e-2  # Large enough that the average and the weights differ.
  full, split = str(root / 'full'), str(root / 'split')
  trainer.run(config, full)
  short = copy.deepcopy(config)
  short.num_train_steps = 3
  trainer.run(short, split)
  return config, full, split


def test_a_run_validates_and_tests_with_the_average_and_resumes_it_exactly(ema_runs):
  config, full, split = ema_runs
  trainer.run(config, split)  # Resumes 3 -> 6.
  a, b = saved_state(full, 6), saved_state(split, 6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
               {'ema': a['ema'], 'params': a['params']}, {'ema': b['ema'], 'params': b['params']})
  final = json.loads(open(os.path.join(full, 'final_metrics.json')).read())
  logged = [json.loads(line) for line in open(os.path.join(full, 'metrics.jsonl'))]
  validation = {r['step']: r for r in logged if r['split'] == 'validation'}
  # The Predictor takes the run's average from its config.json, whatever the config says.
  plain = copy.deepcopy(config)
  plain.optim.ema_decay = 0.0
  with_average = restore.Predictor(plain, full, '6').evaluate('validation')
  trained = restore.Predictor(plain, full, '6', weights='trained').evaluate('validation')
  assert with_average['loss'] == pytest.approx(validation[6]['loss'], rel=1e-5)
  assert abs(trained['loss'] - validation[6]['loss']) > 1e-4
  selected = restore.Predictor(plain, full, str(final['selected_step'])).evaluate('test')
  assert final['test']['loss'] == pytest.approx(selected['loss'], rel=1e-5)
  with pytest.raises(ValueError, match=r"weights='raw' is not valid.*\['ema', 'trained'\]"):
    restore.Predictor(plain, full, weights='raw')


def test_resuming_without_the_average_names_it_and_changes_nothing(ema_runs, tmp_path):
  config, full, _ = ema_runs
  workdir = str(tmp_path / 'run')
  shutil.copytree(full, workdir)
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  changed = copy.deepcopy(config)
  changed.optim.ema_decay, changed.num_train_steps = 0.0, 9
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=(
      r'(?s)ema/params/.*not in the current model.*optim.ema_decay: 0.9 -> 0.0')):
    trainer.run(changed, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
  config_bad = copy.deepcopy(config)
  config_bad.optim.ema_decay = 1.0
  with pytest.raises(ValueError, match=r'optim.ema_decay must be in \[0, 1\).*got 1.0'):
    trainer.validate(config_bad, 1)
