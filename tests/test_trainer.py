"""End to end through train.trainer.run and launch.py: exact resume, config-aware
restarts, unreadable / interrupted / unreachable checkpoints, metrics after a resume,
validation-selected checkpoints tested once, NaN, SIGTERM and SIGKILL (one and two
processes), the vit_cifar10 config under tfds mock data, and config errors."""

import copy
import errno
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import grain
import jax
from ml_collections import config_flags
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from configs import vit_cifar10
import nets
from train import checkpoint as checkpoint_lib
from train import preemption, restore, trainer
from train.state import TrainState
from tests.conftest import make_fashion_mnist_dir, saved_state, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir, step):
  return saved_state(workdir, step)['params']


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


def _listing(directory) -> dict:
  """Every file under `directory`: relative path -> (size, mtime in ns)."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
  return out


def _copy_of(run_dir, tmp_path) -> str:
  """A copy of a finished run's workdir under tmp_path (tests change copies only)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(run_dir, workdir)
  return workdir


def _rows(workdir, name='metrics.jsonl'):
  with open(os.path.join(workdir, name)) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def six_step_runs(tmp_path_factory):
  """An uninterrupted 6-step run and a 3-step run of the same config (which the first
  test resumes to 6); dropout and Random Erasing are on so that the restored RNG and
  data position matter. The other tests copy the 6-step run before changing it."""
  fmnist_dir = make_fashion_mnist_dir(str(tmp_path_factory.mktemp('fmnist')))
  root = tmp_path_factory.mktemp('runs')
  config = tiny_config(fmnist_dir)
  config.model.dropout_rate = 0.1
  config.augment.random_erasing_prob = 0.5
  config.checkpoint_every_steps = 0  # Saved at the validations of steps 3 and 6 all the same.
  full = str(root / 'full')
  trainer.run(config, full)
  split = str(root / 'split')
  short = copy.deepcopy(config)
  short.num_train_steps = 3
  trainer.run(short, split)
  return config, full, split


def test_resume_equals_uninterrupted_and_logs_each_step_once(six_step_runs, caplog):
  config, full, split = six_step_runs
  # 3 -> 6 steps, a harmless change (logged): resumes at 3, data position included.
  metrics = trainer.run(config, split)
  assert metrics['step'] == 6
  _assert_same_params(_params(full, 6), _params(split, 6))
  assert 'Resuming at step 3 with changed config fields: num_train_steps: 3 -> 6' in caplog.text
  assert _rows(split, 'config_changes.jsonl')[0]['changes'] == {'num_train_steps': [3, 6]}
  # The 3-step run's final metrics are kept under their step, not left as the final ones.
  assert json.loads(open(os.path.join(split, 'final_metrics_step3.json')).read())['step'] == 3
  # Both runs logged the same train and validation rows, each once, in order; the
  # split run also tested its end at step 3 (each run tests once, when it completes).
  keys = lambda rows, splits: [(r['step'], r['split']) for r in rows if r['split'] in splits]
  both = ('train', 'validation')
  assert keys(_rows(split), both) == keys(_rows(full), both)
  assert (6, 'validation') in keys(_rows(full), both)
  assert len(set(keys(_rows(full), both))) == len(keys(_rows(full), both))
  assert [r['step'] for r in _rows(split) if r['split'] == 'test'] == [
      3, json.loads(open(os.path.join(split, 'final_metrics.json')).read())['selected_step']]


def test_final_metrics_label_the_selected_checkpoint_and_splits(six_step_runs):
  _, full, _ = six_step_runs
  final = json.loads(open(os.path.join(full, 'final_metrics.json')).read())
  assert final['splits'] == {'validation': 'train[48:]', 'test': 'test'}
  validation = {r['step']: r['top1'] for r in _rows(full) if r['split'] == 'validation'}
  best = max(sorted(validation), key=lambda s: validation[s])  # Earliest of equal values.
  assert final['selection'] == 'best validation top1 (max)'
  assert final['selected_step'] in [s for s, v in validation.items() if v == validation[best]]
  assert final['validation']['top1'] == validation[final['selected_step']]
  assert final['validation']['num_examples'] == 16 and final['test']['num_examples'] == 36
  tests = [r for r in _rows(full) if r['split'] == 'test']
  assert len(tests) == 1 and tests[0]['step'] == final['selected_step']
  # Every validated step was saved (checkpoint_every_steps is 0), so any can be selected.
  assert sorted(os.listdir(os.path.join(full, 'checkpoints'))) == ['3', '6']


def test_eval_only_reproduces_the_logged_metrics_and_touches_nothing(six_step_runs,
                                                                     tmp_path):
  config, full, _ = six_step_runs
  workdir = _copy_of(full, tmp_path)
  checkpoints = _listing(os.path.join(workdir, 'checkpoints'))
  logged = {(r['step'], r['split']): r for r in _rows(workdir)}
  final = json.loads(open(os.path.join(workdir, 'final_metrics.json')).read())
  # 'best' is the checkpoint training selected and tested; 3 is an explicit step.
  for checkpoint, role, step in (('best', 'test', final['selected_step']),
                                 ('3', 'validation', 3), ('last', 'validation', 6)):
    result = restore.evaluate_checkpoint(config, workdir, checkpoint, role)
    assert result['step'] == step
    expected = {k: v for k, v in logged[(step, role)].items()
                if k not in ('step', 'split', 'time')}
    assert result['metrics'].keys() == expected.keys()
    for name, value in expected.items():
      assert result['metrics'][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    path = restore.result_path(workdir, final['splits'][role], step)
    written = json.loads(open(path).read())
    assert written['metrics'] == result['metrics'] and written['split'] == final['splits'][role]
  # One file per split: both evaluations of step 6 are kept.
  assert {'test_step6.json', 'train_48___step6.json'} <= set(
      os.listdir(os.path.join(workdir, 'eval')))
  assert _listing(os.path.join(workdir, 'checkpoints')) == checkpoints
  assert {(r['step'], r['split']) for r in _rows(workdir)} == set(logged)  # No new rows.
  epochs = [r['epoch'] for r in _rows(workdir) if r['split'] == 'train']
  assert epochs == pytest.approx([s * 16 / 48 for s in (2, 3, 4, 6)])  # step * batch / 48.


def test_predictor_ranks_best_by_the_runs_own_metric_and_needs_no_init_from_weights(
    six_step_runs, tmp_path):
  # The run's config.json, not the config passed to evaluate, says how 'best' is ranked.
  config, full, _ = six_step_runs
  workdir = _copy_of(full, tmp_path)
  final = json.loads(open(os.path.join(workdir, 'final_metrics.json')).read())
  losses = {r['step']: r['loss'] for r in _rows(workdir) if r['split'] == 'validation'}
  mode = 'min' if min(losses, key=losses.get) != final['selected_step'] else 'max'
  expected = (min if mode == 'min' else max)(losses, key=losses.get)
  assert expected != final['selected_step']  # Ranking by loss picks another step.
  saved = json.loads(open(os.path.join(workdir, 'config.json')).read())
  saved['checkpoint'].update(best_metric='loss', best_mode=mode)
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(saved, f)
  passed = copy.deepcopy(config)  # Still top1 / max, as the run's own file said before.
  passed.init_from = '/nonexistent/pretrained/weights'  # Never read when restoring.
  assert restore.Predictor(passed, workdir, 'best').step == expected


def test_eval_only_errors(six_step_runs, tmp_path):
  config, full, _ = six_step_runs
  empty = str(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(empty, 'checkpoints'))):
    restore.evaluate_checkpoint(config, empty)
  assert not os.path.exists(empty)  # Nothing created.
  with pytest.raises(ValueError, match=r'No checkpoint at step 4 .*saved steps: \[3, 6\]'):
    restore.Predictor(config, full, '4')
  with pytest.raises(ValueError, match="'newest' is not valid; choose 'last', 'best'"):
    restore.Predictor(config, full, 'newest')
  with pytest.raises(ValueError, match="split 'train' is not valid"):
    restore.evaluate_checkpoint(config, full, 'last', 'train')


def test_rows_logged_after_the_restored_step_are_superseded(six_step_runs, tmp_path):
  config, full, _ = six_step_runs
  workdir = _copy_of(full, tmp_path)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '6'))  # As if killed before saving 6.
  before = _rows(workdir)
  trainer.run(config, workdir)
  superseded = _rows(workdir, 'metrics_superseded.jsonl')
  assert superseded == [r for r in before if r['step'] > 3]
  steps = [r['step'] for r in _rows(workdir) if r['split'] == 'train']
  assert steps == sorted(set(steps)) == [2, 3, 4, 6]
  events = _tensorboard_events(os.path.join(workdir, 'tensorboard'))
  assert (4, 'purge') in events  # TensorBoard hides the first run's events from step 4 on.


def _tensorboard_events(logdir):
  """(step, 'purge') for SessionLog START events and (step, tag) for scalars, in order."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecord: length (8), its CRC (4), payload, CRC (4).
      length = int.from_bytes(data[offset:offset + 8], 'little')
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      if event.HasField('session_log') and event.session_log.status == 1:
        out.append((event.step, 'purge'))
      out += [(event.step, v.tag) for v in event.summary.value]
  return out


def test_changed_model_width_stops_before_training_and_touches_nothing(six_step_runs,
                                                                         tmp_path):
  config, full, _ = six_step_runs
  workdir = _copy_of(full, tmp_path)
  before = _listing(workdir)
  config = copy.deepcopy(config)
  config.model.hidden_size = 24
  with pytest.raises(checkpoint_lib.CheckpointMismatchError) as error:
    trainer.run(config, workdir)
  message = str(error.value)
  assert 'The checkpoint at step 6' in message
  assert re.search(r'\n  params/[\w/]+: checkpoint float32\[.*16.*\], current float32\[.*24',
                   message)
  assert 'model.hidden_size: 16 -> 24' in message and 'new --workdir' in message
  assert _listing(workdir) == before
  # A batch size or seed changes what the saved data position means: refused, too.
  config = copy.deepcopy(six_step_runs[0])
  config.batch_size, config.seed = 8, 7
  with pytest.raises(ValueError, match=r'data position under other values of batch_size: '
                     r'16 -> 8; seed: 0 -> 7.*No checkpoint was changed or deleted'):
    trainer.run(config, workdir)
  assert _listing(workdir) == before


@pytest.mark.parametrize('fault', ['truncated', 'truncated_arrays', 'interrupted_save'])
def test_unreadable_latest_checkpoint_falls_back_and_is_kept(six_step_runs, tmp_path, caplog,
                                                            fault):
  config, full, split = six_step_runs
  workdir = _copy_of(full, tmp_path)
  step_dir = os.path.join(workdir, 'checkpoints', '6')
  if fault == 'truncated':
    manifest = os.path.join(step_dir, 'state', 'manifest.ocdbt')
    os.truncate(manifest, os.path.getsize(manifest) // 2)
    expected = 'Checkpoint at step 6 is unreadable'
  elif fault == 'truncated_arrays':  # Orbax wraps tensorstore's error in a bare Exception.
    # To nothing: a file cut in half can keep every byte the restore reads (OCDBT data
    # files may end in bytes no array refers to).
    for path in glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd', '*')):
      os.truncate(path, 0)
    expected = 'Checkpoint at step 6 is unreadable'
  else:  # Orbax writes into <step>.orbax-checkpoint-tmp-<time> and renames at the end.
    os.rename(step_dir, step_dir + '.orbax-checkpoint-tmp-1234')
    expected = 'Checkpoint 6.orbax-checkpoint-tmp-1234 is an interrupted save'
  bad_files = _listing(os.path.join(workdir, 'checkpoints'))
  metrics = trainer.run(config, workdir)  # Resumes from step 3 and trains 4..6 again.
  assert expected in caplog.text and 'rows after step 3' in caplog.text  # Resumed at 3.
  assert metrics['step'] == 6
  _assert_same_params(_params(full, 6), _params(workdir, 6))
  kept = os.listdir(os.path.join(workdir, 'checkpoints_corrupt'))
  assert len(kept) == 1 and kept[0].startswith('6')
  # Nothing deleted: every file of the bad step is in checkpoints_corrupt/, unchanged.
  moved = _listing(os.path.join(workdir, 'checkpoints_corrupt', kept[0]))
  bad = {path.split(os.sep, 1)[1]: size for path, (size, _) in bad_files.items()
         if path.split(os.sep, 1)[0] != '3'}
  assert {path: size for path, (size, _) in moved.items()} == bad


def test_when_no_checkpoint_is_readable_the_fresh_start_reads_from_the_first_batch(
    six_step_runs, tmp_path, caplog):
  # Each failed restore moves the data iterator before the state read fails (Orbax
  # restores 'data' first); the start from scratch must not keep that position.
  config, full, _ = six_step_runs
  workdir = _copy_of(full, tmp_path)
  for step in ('3', '6'):
    for path in glob.glob(os.path.join(workdir, 'checkpoints', step, 'state',
                                       'ocdbt.process_0', 'd', '*')):
      os.truncate(path, 0)
  metrics = trainer.run(config, workdir)
  assert 'Checkpoint at step 3 is unreadable' in caplog.text and metrics['step'] == 6
  assert sorted(name.split('-')[0] for name in
                os.listdir(os.path.join(workdir, 'checkpoints_corrupt'))) == ['3', '6']
  _assert_same_params(_params(full, 6), _params(workdir, 6))


@pytest.mark.parametrize('change', ['validation_split', 'best_metric'])
def test_restart_that_would_delete_the_best_checkpoint_is_refused(six_step_runs, tmp_path,
                                                                   change):
  config, full, _ = six_step_runs
  workdir = _copy_of(full, tmp_path)
  before = _listing(workdir)
  config = copy.deepcopy(config)
  config.num_train_steps = 12
  if change == 'validation_split':
    config.data.validation_split = ''
  else:
    config.checkpoint.best_metric = ''
  with pytest.raises(ValueError, match=r"keep the best one by validation 'top1'.*would delete "
                     r'that checkpoint.*No checkpoint was changed or deleted'):
    trainer.run(config, workdir)
  assert _listing(workdir) == before


def test_a_final_metrics_file_cut_short_is_set_aside_not_an_error(tmp_path):
  (tmp_path / 'final_metrics.json').write_text('{"step": 6, "valid')
  trainer._set_aside_final_metrics(str(tmp_path))  # pylint: disable=protected-access
  assert os.listdir(tmp_path) == ['final_metrics_stepunknown.json']


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


def test_a_non_finite_gradient_stops_training_although_its_loss_is_finite():
  # The loss of step s is computed before update s: an overflowing gradient leaves it
  # finite while the update makes the parameters NaN.
  step = lambda grad_norm, param_norm: {'loss': np.array([2.0, 8.0]), 'grad_norm': grad_norm,
                                        'param_norm': param_norm, 'learning_rate': 0.1}
  assert trainer._summarise([step(1.0, 3.0)], 7)['loss'] == 0.25
  with pytest.raises(trainer.NonFiniteLossError, match='gradient norm is inf at step 8'):
    trainer._summarise([step(1.0, 3.0), step(np.inf, np.nan)], 7)
  with pytest.raises(trainer.NonFiniteLossError, match='parameter norm is nan at step 7'):
    trainer._summarise([step(1.0, np.nan)], 7)


def test_sigterm_saves_and_exits_cleanly(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir)
  config.num_train_steps = 50
  config.checkpoint_every_steps = 0
  config.eval_every_steps = 0
  workdir = str(tmp_path / 'run')
  handlers = []

  class Signaller(preemption.Preemption):  # Sends SIGTERM to itself once training runs.
    def __enter__(self):
      result = super().__enter__()
      handlers.append(signal.getsignal(signal.SIGTERM))
      os.kill(os.getpid(), signal.SIGTERM)
      return result

  previous = signal.getsignal(signal.SIGTERM)
  original = preemption.Preemption
  preemption.Preemption = Signaller
  try:
    metrics = trainer.run(config, workdir)
  finally:
    preemption.Preemption = original
  assert metrics == {'step': 1, 'preempted': True}  # Stops after the step it arrived in.
  assert handlers[0] != previous  # Our handler was installed during the run ...
  assert signal.getsignal(signal.SIGTERM) == previous  # ... and the previous one restored.
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['1']
  assert not os.path.exists(os.path.join(workdir, 'final_metrics.json'))  # Not tested yet.


def test_vit_cifar10_config_runs_under_tfds_mock_data(tmp_path):
  config = vit_cifar10.get_config()
  config.model.hidden_size, config.model.num_layers, config.model.mlp_dim = 24, 1, 48
  config.model.num_heads = 2
  config.batch_size, config.eval_batch_size = 16, 8
  config.num_train_steps, config.warmup_steps = 2, 1
  config.data.num_threads = 1
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    metrics = trainer.run(config, str(tmp_path / 'run'))
  # CIFAR-10's last 10 % of train is the validation split (mock_data gives any split,
  # sliced or not, 20 images); the test split (3 padded batches of 8) is evaluated once.
  assert metrics['splits'] == {'validation': 'train[90%:]', 'test': 'test'}
  assert metrics['validation']['num_examples'] == metrics['test']['num_examples'] == 20
  assert metrics['selected_step'] == 2 and metrics['step'] == 2


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
  config.grad_accum_steps, config.checkpoint.best_mode = 1, 'best'
  with pytest.raises(ValueError, match=r"best_mode='best'.*\['max', 'min'\]"):
    trainer.validate(config, 8)
  config.checkpoint.best_mode, config.checkpoint.best_metric = 'max', 'loss'
  with pytest.raises(ValueError, match="best_metric='loss' is best at its minimum.*best_mode=min"):
    trainer.validate(config, 8)
  config.checkpoint.best_metric = 'top1'


def test_best_metric_must_name_a_validation_metric():
  validation = {'top1': 0.5, 'loss': 1.2, 'num_examples': 100.0}
  trainer._check_best_metric('top1', validation)
  trainer._check_best_metric('', validation)
  with pytest.raises(ValueError, match=r"best_metric='acc'.*\['loss', 'top1'\]"):
    trainer._check_best_metric('acc', validation)


def _launch(*args):
  return subprocess.run([sys.executable, 'launch.py', '--config=configs/vit_fashion_mnist.py',
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_launch_rejects_unknown_field_and_wrong_type(tmp_path):
  result = _launch('--config.learning_rat=0.1', f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert 'learning_rat' in result.stderr and 'Did you mean "learning_rate"' in result.stderr
  # One flag error (run_config.parse_flags), not ml_collections' traceback.
  assert 'FATAL Flags parsing error: the config has no field' in result.stderr
  assert 'Traceback' not in result.stderr
  result = _launch('--config.batch_size=many', f'--workdir={tmp_path}')
  assert result.returncode != 0 and 'batch_size' in result.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))
  # A config file's own AttributeError is no misspelt override: its traceback is kept.
  broken = tmp_path / 'broken_config.py'
  broken.write_text('import ml_collections\n\ndef get_config():\n'
                    '  return ml_collections.ConfigDict().not_a_field\n')
  result = _launch(f'--config={broken}', f'--workdir={tmp_path}')
  assert result.returncode != 0 and 'Traceback' in result.stderr
  assert 'not_a_field' in result.stderr and 'the config has no field' not in result.stderr


def test_entry_points_refuse_bad_flags_before_any_work(tmp_path):
  def run(entry, *args):
    result = subprocess.run(
        [sys.executable, *entry.split(), '--config=configs/vit_fashion_mnist.py',
         f'--workdir={tmp_path}', *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert result.returncode != 0
    return result.stderr
  # Evaluation flags without --mode=eval would resume (and extend) the run instead.
  assert '--checkpoint only apply with --mode=eval' in run('launch.py', '--checkpoint=2')
  (tmp_path / 'a_file').write_text('')
  assert 'is a file, not a run directory' in run('launch.py', f'--workdir={tmp_path}/a_file')
  assert 'config.learning_rate must be >= 0, got -1.0' in run(
      'launch.py', '--config.learning_rate=-1', f'--workdir={tmp_path}/run')
  assert 'Nothing to predict' in run('-m train.predict')
  assert 'no such file: missing.png' in run('-m train.predict', '--image=missing.png')
  assert "--text: not read by task 'classification', which reads --image" in run(
      '-m train.predict', '--text=hello')
  assert 'exists and is not an empty directory' in run('-m train.export', f'--out={tmp_path}')
  assert "unknown ['foo']; valid: ['cpu', 'cuda', 'rocm', 'tpu']" in run(
      '-m train.export', f'--out={tmp_path}/export', '--platforms=foo')
  assert os.listdir(tmp_path) == ['a_file']  # Nothing was written.


@pytest.mark.parametrize('config_file,overrides', [
    ('resnet18_fashion_mnist.py', {'stage_sizes': '(1, 2, 1)', 'block': 'bottleneck'}),
    ('transformer_g2p.py', {'pre_ln': 'True', 'position_encoding': 'learned',
                            'share_embeddings': 'decoder'}),
    ('vit_fashion_mnist.py', {'approximate_gelu': 'False'})])
def test_model_fields_the_readme_names_can_be_set_from_the_command_line(config_file, overrides):
  # launch.py's flag (a locked config): a field the config file does not list cannot be set.
  argv = [sys.argv[0], f'--config={os.path.join(ROOT, "configs", config_file)}',
          *(f'--config.model.{k}={v}' for k, v in overrides.items())]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', lock_config=True, flag_values=values, sys_argv=argv)
  values(argv)
  config = values.config
  data_kwargs = (dict(source_vocab_size=9, target_vocab_size=9) if config.task == 'seq2seq'
                 else dict(num_classes=10))
  model = nets.build(config.model.name, **data_kwargs,
                     **{k: v for k, v in config.model.items() if k != 'name'})
  for field, text in overrides.items():
    assert str(getattr(model, field)).replace(' ', '') == text.replace(' ', '')


def _free_port():
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_two_processes(config_path: str, args: list, logdir) -> list:
  """Starts launch.py as two local processes joined by jax.distributed (output to
  <logdir>/process_<i>.log); returns the Popen objects."""
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, 'launch.py', f'--config={config_path}', *args,
       f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, stdout=open(os.path.join(logdir, f'process_{i}.log'), 'w'),
      stderr=subprocess.STDOUT, env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
      for i in range(2)]


def _finish(procs, logdir) -> list:
  """Waits for `procs`; asserts both exit 0 and returns their outputs."""
  for p in procs:
    p.wait(timeout=240)
  outputs = [open(os.path.join(logdir, f'process_{i}.log')).read() for i in range(2)]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  return outputs


def _launch_two_processes(config_path: str, args: list, logdir) -> list:
  return _finish(_start_two_processes(config_path, args, logdir), logdir)


@pytest.mark.parametrize('engine', ['jit', 'pmap'])
def test_two_processes_train_together(fmnist_dir, tmp_path, engine):
  """Two local CPU processes joined by jax.distributed (gloo) act as two hosts."""
  workdir = tmp_path / 'run'
  args = ['--config.data.dir=' + fmnist_dir, '--config.num_train_steps=4',
          '--config.warmup_steps=1', '--config.model.num_layers=1',
          '--config.model.hidden_size=16', '--config.model.mlp_dim=32',
          '--config.model.num_heads=2', '--config.batch_size=16', '--config.eval_batch_size=16',
          '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
          f'--config.parallel={engine}', f'--workdir={workdir}']
  args += ['--config.data.train_split=train[:48]', '--config.data.validation_split=train[48:]']
  outputs = _launch_two_processes('configs/vit_fashion_mnist.py', args, tmp_path)
  assert all('2 processes' in out for out in outputs)
  final = json.loads((workdir / 'final_metrics.json').read_text())
  assert final['step'] == 4  # Every eval example once:
  assert final['validation']['num_examples'] == 16 and final['test']['num_examples'] == 36
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  if engine == 'jit':  # An unreadable latest step: both processes agree to fall back.
    manifest = workdir / 'checkpoints' / '4' / 'state' / 'manifest.ocdbt'
    os.truncate(manifest, os.path.getsize(manifest) // 2)
    outputs = _launch_two_processes('configs/vit_fashion_mnist.py', args, tmp_path)
    assert all('Resumed from checkpoint at step 2' in out for out in outputs)
    assert [n.split('-')[0] for n in os.listdir(workdir / 'checkpoints_corrupt')] == ['4']
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']


def _tiny_vit_args(fmnist_dir, workdir, steps):
  return ['--config.data.dir=' + fmnist_dir, f'--config.num_train_steps={steps}',
          '--config.warmup_steps=1', '--config.model.num_layers=1',
          '--config.model.hidden_size=16', '--config.model.mlp_dim=32',
          '--config.model.num_heads=2', '--config.batch_size=16', '--config.eval_batch_size=16',
          '--config.eval_every_steps=0', f'--workdir={workdir}']


def _wait_for(predicate, timeout=120):
  start = time.time()
  while not predicate():
    assert time.time() - start < timeout, 'timed out'
    time.sleep(0.1)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(fmnist_dir, tmp_path):
  workdir = tmp_path / 'run'
  args = _tiny_vit_args(fmnist_dir, workdir, 1_000_000) + [
      '--config.checkpoint_every_steps=0', '--config.log_every_steps=20']
  procs = _start_two_processes('configs/vit_fashion_mnist.py', args, tmp_path)
  try:
    _wait_for(lambda: (workdir / 'metrics.jsonl').exists())  # Training is under way.
    procs[1].send_signal(signal.SIGTERM)  # Only process 1 is told.
    outputs = _finish(procs, tmp_path)
  finally:
    for p in procs:
      p.kill()
  steps = [re.findall(r'Preempted at step (\d+)', out) for out in outputs]
  assert steps[0] == steps[1] and len(steps[0]) == 1, steps
  assert os.listdir(workdir / 'checkpoints') == steps[0]  # One checkpoint, that step.


def test_sigkill_during_async_saves_then_restart_ends_like_uninterrupted(fmnist_dir, tmp_path):
  """A run killed (SIGKILL) at an arbitrary point while asynchronous saves are in flight,
  then restarted, ends with the parameters of an uninterrupted run (1 CPU device)."""
  steps = 150
  def launch(workdir):
    return subprocess.Popen(
        [sys.executable, 'launch.py', '--config=configs/vit_fashion_mnist.py',
         *_tiny_vit_args(fmnist_dir, workdir, steps), '--config.checkpoint_every_steps=7',
         '--config.log_every_steps=50', '--config.checkpoint.async_save=true'],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
  reference, killed = tmp_path / 'reference', tmp_path / 'killed'
  first, uninterrupted = launch(killed), launch(reference)
  checkpoints = killed / 'checkpoints'
  _wait_for(lambda: checkpoints.exists() and len(os.listdir(checkpoints)) >= 2)
  first.kill()  # Mid-run, most likely while a save is being written.
  first.wait()
  complete = [int(n) for n in os.listdir(checkpoints) if n.isdigit()]
  assert complete and max(complete) < steps, 'the run ended before it was killed'
  assert launch(killed).wait(timeout=240) == 0 and uninterrupted.wait(timeout=240) == 0
  _assert_same_params(_params(reference, steps), _params(killed, steps))


def test_two_processes_decode_and_score_every_eval_example_once(tmp_path):
  """Seq2seq eval across two hosts: each decodes its shard, the outputs are gathered
  and scored once over the whole split (CMUdict dev: 6,268 words)."""
  workdir = tmp_path / 'run'
  args = ['--config.model.name=transformer_g2p_tiny', '--config.num_train_steps=2',
          '--config.warmup_steps=1', '--config.batch_size=8', '--config.eval_batch_size=1000',
          '--config.data.validation_split=', '--config.data.test_split=dev',
          '--config.decode.max_length=4', '--config.eval_every_steps=0',
          '--config.checkpoint_every_steps=0', f'--workdir={workdir}']
  _launch_two_processes('configs/transformer_g2p.py', args, tmp_path)
  final = json.loads((workdir / 'final_metrics.json').read_text())
  assert final['test']['num_examples'] == 6268 and final['step'] == 2
  assert final['selection'] == 'last step (no validation split)'
  assert {'wer', 'per'} <= set(final['test'])  # Their values: test_evaluate_scores_...


def test_checkpoint_averaging_means_the_newest_params(tmp_path):
  tx = optax.sgd(0.1)
  def state(step, value):
    params = {'w': np.full((2,), value, np.float32)}
    return TrainState(step=np.int32(step), params=params, model_state={},
                      opt_state=tx.init(params), rng=np.zeros((2,), np.uint32), tx=tx,
                      ema={'params': {'w': np.full((2,), 10 * value, np.float32)}},
                      ema_decay=0.9)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=5, best_metric='', async_save=False)
  iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
  for step, value in ((1, 1.0), (2, 2.0), (3, 6.0)):
    ckpt.save(state(step, value), iterator)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          state(0, 0.0))
  averaged = ckpt.restore_average(abstract, 2)
  assert int(averaged.step) == 3
  np.testing.assert_allclose(averaged.params['w'], [4.0, 4.0])  # (2 + 6) / 2
  np.testing.assert_allclose(averaged.ema['params']['w'], [40.0, 40.0])  # The average's too.
  with pytest.raises(ValueError, match='Cannot average 4 checkpoints'):
    ckpt.restore_average(abstract, 4)
  ckpt.close()


def _tiny_state(step, value, width=2):
  tx = optax.sgd(0.1)
  params = {'w': np.full((width,), value, np.float32)}
  return TrainState(step=np.int32(step), params=params, model_state={},
                    opt_state=tx.init(params), rng=np.zeros((2,), np.uint32), tx=tx)


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def test_transient_read_errors_are_retried_then_reported_never_quarantined(tmp_path,
                                                                            monkeypatch):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=5, best_metric='', async_save=False,
                                     retry_seconds=0.0)
  iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
  for step in (1, 2):
    ckpt.save(_tiny_state(step, float(step)), iterator)
  read = checkpoint_lib.Checkpointer._restore
  failures = []
  def flaky(self, *args, **kwargs):  # EIO twice, then the real read.
    if len(failures) < 2:
      failures.append(1)
      raise OSError(errno.EIO, 'Input/output error')
    return read(self, *args, **kwargs)
  monkeypatch.setattr(checkpoint_lib.Checkpointer, '_restore', flaky)
  restored = ckpt.restore_latest(_abstract(_tiny_state(0, 0.0)), None)
  assert int(restored.step) == 2 and len(failures) == 2

  def broken(self, *args, **kwargs):
    raise OSError(errno.EIO, 'Input/output error')
  monkeypatch.setattr(checkpoint_lib.Checkpointer, '_restore', broken)
  before = _listing(tmp_path)
  with pytest.raises(checkpoint_lib.CheckpointReadError, match='after 3 attempts.*nothing was '
                     'moved'):
    ckpt.restore_latest(_abstract(_tiny_state(0, 0.0)), None)
  assert _listing(tmp_path) == before and ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_unknown_restore_errors_are_raised_not_quarantined(tmp_path, monkeypatch):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=5, best_metric='', async_save=False)
  ckpt.save(_tiny_state(1, 1.0), iter(grain.MapDataset.range(4).to_iter_dataset()))
  def bug(self, *args, **kwargs):
    raise TypeError('a bug in the restore code')
  monkeypatch.setattr(checkpoint_lib.Checkpointer, '_restore', bug)
  with pytest.raises(TypeError, match='a bug'):
    ckpt.restore_latest(_abstract(_tiny_state(0, 0.0)), None)
  assert ckpt.all_steps() == [1] and not os.path.exists(tmp_path / 'checkpoints_corrupt')
  ckpt.close()


def test_checkpoints_of_another_process_count_stop_the_run_and_stay(tmp_path):
  """Data positions are saved per process: a restart with another process count must
  not take the missing position file for damage and move every checkpoint aside."""
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=5, best_metric='', async_save=False)
  for step in (1, 2):
    ckpt.save(_tiny_state(step, float(step)), iter(grain.MapDataset.range(4).to_iter_dataset()))
  for step in (1, 2):  # As two processes would have written them.
    data = tmp_path / 'checkpoints' / str(step) / 'data'
    (data / 'process_0-of-1.json').rename(data / 'process_0-of-2.json')
    (data / 'process_1-of-2.json').write_text((data / 'process_0-of-2.json').read_text())
  before = _listing(tmp_path)
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match='step 2 .* written by 2 processes and this run has 1'):
    ckpt.restore_latest(_abstract(_tiny_state(0, 0.0)),
                        iter(grain.MapDataset.range(4).to_iter_dataset()))
  assert _listing(tmp_path) == before and ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_structure_diff_names_missing_extra_and_reshaped_leaves():
  saved = {'params': {'w': jax.ShapeDtypeStruct((2, 3), np.float32),
                      'old': jax.ShapeDtypeStruct((1,), np.float32)},
           'step': jax.ShapeDtypeStruct((), np.int32)}
  expected = {'params': {'w': jax.ShapeDtypeStruct((4, 3), np.float32),
                         'new': jax.ShapeDtypeStruct((1,), np.float32)},
              'step': jax.ShapeDtypeStruct((), np.int64)}
  assert checkpoint_lib.structure_diff(saved, expected) == [
      'params/new: missing in the checkpoint', 'params/old: not in the current model',
      'step: checkpoint int32[], current int64[]',
      'params/w: checkpoint float32[2, 3], current float32[4, 3]']
  assert checkpoint_lib.structure_diff(saved, saved) == []
