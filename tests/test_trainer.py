"""End to end through train.trainer.run: resume, corrupt checkpoints, NaN, SIGTERM,
the real vit_cifar10 config under tfds mock data, and config errors from launch.py."""

import os
import shutil
import signal
import subprocess
import sys

import grain
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from configs import vit_cifar10
from train import checkpoint as checkpoint_lib
from train import trainer
from train.state import TrainState
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)['params']


def _assert_same_params(a, b):
  flat_a, flat_b = (dict(_flatten(x)) for x in (a, b))
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_allclose(flat_a[k], flat_b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def _flatten(tree, prefix=''):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, f'{prefix}{k}/')
    else:
      yield f'{prefix}{k}', np.asarray(v)


def test_resume_equals_uninterrupted_and_corrupt_latest_falls_back(fmnist_dir, tmp_path, caplog):
  config = tiny_config(fmnist_dir)
  config.model.dropout_rate = 0.1  # The resumed RNG matters too.
  config.augment.random_erasing_prob = 0.5
  full = str(tmp_path / 'full')
  trainer.run(config, full)

  split = str(tmp_path / 'split')
  config.num_train_steps = 3
  trainer.run(config, split)
  config.num_train_steps = 6
  metrics = trainer.run(config, split)  # Resumes at step 3, data position included.
  assert metrics['step'] == 6
  _assert_same_params(_params(full, 6), _params(split, 6))
  with open(os.path.join(full, 'metrics.jsonl')) as f:
    assert '"split": "eval"' in f.read()

  # Corrupt the latest checkpoint: the run resumes from step 3 with a warning and
  # ends with the same parameters; the corrupt files are kept aside.
  state_dir = os.path.join(full, 'checkpoints', '6', 'state')
  for name in os.listdir(state_dir):
    path = os.path.join(state_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
  reference = _params(split, 6)
  trainer.run(config, full)
  assert 'cannot be restored' in caplog.text
  assert os.listdir(os.path.join(full, 'checkpoints_corrupt'))
  _assert_same_params(reference, _params(full, 6))


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir)
  workdir = str(tmp_path / 'run')
  config.num_train_steps = 3
  trainer.run(config, workdir)
  config.num_train_steps = 6
  config.data.std = (0.0,)  # Division by zero in normalisation from step 4 on.
  with pytest.raises(trainer.NonFiniteLossError, match='at step 4'):
    trainer.run(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']


def test_sigterm_saves_and_exits_cleanly(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir)
  config.num_train_steps = 50
  config.checkpoint_every_steps = 0
  config.eval_every_steps = 0
  workdir = str(tmp_path / 'run')
  original = trainer._Preemption._handle
  sent = []

  class Signaller(trainer._Preemption):  # Sends SIGTERM to itself once training runs.
    def __enter__(self):
      result = super().__enter__()
      os.kill(os.getpid(), signal.SIGTERM)
      sent.append(True)
      return result

  old = trainer._Preemption
  trainer._Preemption = Signaller
  try:
    metrics = trainer.run(config, workdir)
  finally:
    trainer._Preemption = old
  assert sent and trainer._Preemption._handle is original
  assert metrics['step'] < 50
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(metrics['step'])]


def test_vit_cifar10_config_runs_under_tfds_mock_data(tmp_path):
  config = vit_cifar10.get_config()
  config.model.hidden_size, config.model.num_layers, config.model.mlp_dim = 24, 1, 48
  config.model.num_heads = 2
  config.batch_size, config.eval_batch_size = 16, 8
  config.num_train_steps, config.warmup_steps = 2, 1
  config.data.num_threads = 1
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    metrics = trainer.run(config, str(tmp_path / 'run'))
  assert metrics['num_examples'] == 20  # Eval covers 20 examples in 3 padded batches of 8.
  assert np.isfinite(metrics['loss'])


def test_validate_errors(fmnist_dir):
  config = tiny_config(fmnist_dir)
  config.batch_size = 100
  with pytest.raises(ValueError, match=r'\(100\).*\(8\)'):
    trainer.validate(config, 8)
  config.batch_size, config.parallel = 16, 'pjit'
  with pytest.raises(ValueError, match=r"config.parallel='pjit'.*\['jit', 'pmap'\]"):
    trainer.validate(config, 8)
  config.parallel, config.grad_accum_steps = 'jit', 3
  with pytest.raises(ValueError, match='grad_accum_steps'):
    trainer.validate(config, 8)


def _launch(*args):
  return subprocess.run([sys.executable, 'launch.py', '--config=configs/vit_fashion_mnist.py',
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_launch_rejects_unknown_field_and_wrong_type(tmp_path):
  result = _launch('--config.learning_rat=0.1', f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert 'learning_rat' in result.stderr and 'Did you mean "learning_rate"' in result.stderr
  result = _launch('--config.batch_size=many', f'--workdir={tmp_path}')
  assert result.returncode != 0 and 'batch_size' in result.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def _free_port():
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch_two_processes(config_path: str, args: list) -> list:
  """Runs launch.py as two local processes joined by jax.distributed; asserts both
  exit 0 and returns their outputs."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, 'launch.py', f'--config={config_path}', *args,
       f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}) for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  return outputs


@pytest.mark.parametrize('engine', ['jit', 'pmap'])
def test_two_processes_train_together(fmnist_dir, tmp_path, engine):
  """Two local CPU processes joined by jax.distributed (gloo) act as two hosts."""
  import json  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  args = ['--config.data.dir=' + fmnist_dir, '--config.num_train_steps=4',
          '--config.warmup_steps=1', '--config.model.num_layers=1',
          '--config.model.hidden_size=16', '--config.model.mlp_dim=32',
          '--config.model.num_heads=2', '--config.batch_size=16', '--config.eval_batch_size=16',
          '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
          f'--config.parallel={engine}', f'--workdir={workdir}']
  outputs = _launch_two_processes('configs/vit_fashion_mnist.py', args)
  assert all('2 processes' in out for out in outputs)
  final = json.loads((workdir / 'final_metrics.json').read_text())
  assert final['num_examples'] == 36 and final['step'] == 4  # Every eval example once.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']


def test_two_processes_decode_and_score_every_eval_example_once(tmp_path):
  """Seq2seq eval across two hosts: each decodes its shard, the outputs are gathered
  and scored once over the whole split (CMUdict dev: 6,268 words)."""
  import json  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  args = ['--config.model.name=transformer_g2p_tiny', '--config.num_train_steps=2',
          '--config.warmup_steps=1', '--config.batch_size=8', '--config.eval_batch_size=1000',
          '--config.data.eval_split=dev', '--config.decode.max_length=4',
          '--config.eval_every_steps=0', '--config.checkpoint_every_steps=0',
          f'--workdir={workdir}']
  _launch_two_processes('configs/transformer_g2p.py', args)
  final = json.loads((workdir / 'final_metrics.json').read_text())
  assert final['num_examples'] == 6268 and final['step'] == 2
  assert 0.0 <= final['wer'] <= 100.0 and final['per'] >= 0.0


def test_checkpoint_averaging_means_the_newest_params(tmp_path):
  tx = optax.sgd(0.1)
  def state(step, value):
    params = {'w': np.full((2,), value, np.float32)}
    return TrainState(step=np.int32(step), params=params, model_state={},
                      opt_state=tx.init(params), rng=np.zeros((2,), np.uint32), tx=tx)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=5, best_metric='', async_save=False)
  iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
  for step, value in ((1, 1.0), (2, 2.0), (3, 6.0)):
    ckpt.save(state(step, value), iterator)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          state(0, 0.0))
  averaged = ckpt.restore_average(abstract, 2)
  assert int(averaged.step) == 3
  np.testing.assert_allclose(averaged.params['w'], [4.0, 4.0])  # (2 + 6) / 2
  with pytest.raises(ValueError, match='Cannot average 4 checkpoints'):
    ckpt.restore_average(abstract, 4)
  ckpt.close()
