"""train.plot (learning curves from metrics.jsonl) and train.export / train.export_loader
(the predict function as a jax.export program) on one tiny real training run."""

import ast
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from train import export, export_loader, plot, restore, trainer
from tests.conftest import make_fashion_mnist_dir, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 4-step run: train rows at steps 2 and 4, validation at 2 and 4 (48 training
  examples, batch 16: epochs 2/3 and 4/3), checkpoints where validated, tested."""
  config = tiny_config(make_fashion_mnist_dir(str(tmp_path_factory.mktemp('fmnist'))))
  config.num_train_steps = 4
  config.log_every_steps = config.eval_every_steps = 2
  config.checkpoint_every_steps = 0  # Only where validated: each save costs seconds here.
  workdir = str(tmp_path_factory.mktemp('runs') / 'tiny')
  trainer.run(config, workdir)
  return config, workdir


def _write_rows(directory, rows):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  return str(directory)


def _png(path) -> bytes:
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:8] == PNG and len(data) > 20_000, (data[:8], len(data))
  return data


def test_plot_of_two_runs_against_steps_and_epochs(run, tmp_path):
  config, workdir = run
  rows = plot.read_run(workdir)
  # The trainer's documented epoch: step * batch_size / num_train_examples.
  train_rows = [r for r in rows if r['split'] == 'train']
  assert [(r['step'], r['epoch']) for r in train_rows] == [(2, 2 * 16 / 48), (4, 4 * 16 / 48)]
  assert config.batch_size == 16
  other = _write_rows(tmp_path / 'other', [  # A second "run": the same rows, lower loss.
      {**r, 'loss': r['loss'] / 2} if 'loss' in r else r for r in rows])

  plotted = plot.plot([workdir, other], str(tmp_path / 'steps.png'))
  assert plotted == ['loss', 'top1', 'top5', 'learning_rate']
  by_steps = _png(tmp_path / 'steps.png')
  assert plot.plot([workdir, other], str(tmp_path / 'out' / 'epochs.png'), 'epochs',
                   ['loss', 'grad_norm', 'examples_per_sec']) == [
                       'loss', 'grad_norm', 'examples_per_sec']
  assert _png(tmp_path / 'out' / 'epochs.png') != by_steps

  epoch = plot.epoch_function('tiny', rows)
  points = plot.curves(rows, 'loss', epoch)
  np.testing.assert_allclose(points['train'][0], [2 / 3, 4 / 3])
  np.testing.assert_allclose(points['validation'][0], [2 / 3, 4 / 3])  # Train rows' epochs.
  test_step = [r['step'] for r in rows if r['split'] == 'test']
  np.testing.assert_allclose(points['test'][0], np.asarray(test_step) / 3)
  np.testing.assert_array_equal(points['test'][1],
                                [r['loss'] for r in rows if r['split'] == 'test'])


def test_default_metrics_and_epochs_of_hand_written_rows(tmp_path):
  rows = [{'step': 10, 'split': 'train', 'time': 1.0, 'epoch': 0.5, 'loss': 2.0,
           'learning_rate': 0.1, 'grad_norm': 3.0, 'examples_per_sec': 9.0},
          {'step': 20, 'split': 'train', 'time': 2.0, 'epoch': 1.0, 'loss': 1.0,
           'learning_rate': 0.05, 'grad_norm': 2.0, 'examples_per_sec': 9.0},
          {'step': 20, 'split': 'validation', 'loss': 1.5, 'miou': 0.4, 'iou/cat': 0.3,
           'AP_small': float('nan'), 'num_examples': 8.0},
          {'step': 10, 'split': 'test', 'loss': 1.7, 'miou': 0.35, 'num_examples': 8.0}]
  directory = _write_rows(tmp_path / 'run', rows)
  runs = {'run': plot.read_run(directory)}
  assert plot.default_metrics(runs) == ['loss', 'miou', 'learning_rate']
  epoch = plot.epoch_function('run', rows)
  np.testing.assert_allclose(epoch(np.array([0, 5, 10, 15, 20, 30])),
                             [0, 0.25, 0.5, 0.75, 1.0, 1.5])  # Beyond: the last ratio.
  points = plot.curves(rows, 'miou', epoch)
  assert set(points) == {'validation', 'test'}
  np.testing.assert_allclose(points['validation'][0], [1.0])
  np.testing.assert_allclose(points['test'], [[0.5], [0.35]])
  assert plot.run_labels(['a/x', 'b/x/']) == ['a/x', 'b/x']  # Same basename: the paths.
  # A live run's row half written: skipped; a broken line before the last: an error.
  with open(os.path.join(directory, 'metrics.jsonl'), 'a', encoding='utf-8') as f:
    f.write('{"step": 30, "split": "tra')
  keys = lambda rows: [(r['step'], r['split']) for r in rows]
  assert keys(plot.read_run(directory)) == keys(rows)
  with open(os.path.join(directory, 'metrics.jsonl'), 'a', encoding='utf-8') as f:
    f.write('\n' + json.dumps(rows[0]) + '\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:5 is not valid JSON'):
    plot.read_run(directory)


def test_plot_errors_name_the_problem(run, tmp_path):
  _, workdir = run
  with pytest.raises(FileNotFoundError, match='nowhere.*does not exist'):
    plot.plot([workdir, str(tmp_path / 'nowhere')], str(tmp_path / 'a.png'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match="empty' has no metrics.jsonl"):
    plot.plot([str(tmp_path / 'empty')], str(tmp_path / 'a.png'))
  with pytest.raises(ValueError, match=r"Unknown metric\(s\) \['bogus'\].*Available: .*'top1'"):
    plot.plot([workdir], str(tmp_path / 'a.png'), metrics=['loss', 'bogus'])
  old = _write_rows(tmp_path / 'old', [{'step': 2, 'split': 'train', 'loss': 1.0}])
  with pytest.raises(ValueError, match="'old' has no 'epoch' values.*--x=steps"):
    plot.plot([workdir, old], str(tmp_path / 'a.png'), 'epochs')
  with pytest.raises(ValueError, match=r"x='hours' is not valid; choose one of \['steps'"):
    plot.plot([workdir], str(tmp_path / 'a.png'), 'hours')
  assert not os.path.exists(tmp_path / 'a.png')


def test_plot_command_and_lazy_matplotlib(run, tmp_path):
  _, workdir = run
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = tmp_path / 'curves.png'
  done = subprocess.run([sys.executable, '-m', 'train.plot', workdir, f'--out={out}',
                         '--x=epochs', '--metrics=loss,top1'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'loss, top1 of 1 run(s) against epochs' in done.stdout
  _png(out)
  done = subprocess.run(
      [sys.executable, '-c', 'import sys; from train import plot, export, export_loader; '
       "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and done.stdout.strip() == '[]', done.stderr[-2000:]


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
  config, workdir = run
  predictor = restore.Predictor(config, workdir, 'last')
  directory = str(tmp_path_factory.mktemp('export'))
  signature = export.export_run(predictor, directory)
  batch = next(iter(predictor.data.eval_batches('test')))
  return predictor, directory, signature, batch


def test_exported_predict_matches_the_predictor_for_two_batch_sizes(exported):
  predictor, directory, signature, batch = exported
  assert sorted(os.listdir(directory)) == sorted(export.FILES)
  with open(os.path.join(directory, 'signature.json')) as f:
    assert json.load(f) == signature
  image = signature['inputs'].pop('image')
  assert signature['inputs'] == {}  # Not 'label' nor 'mask': predict does not read them.
  assert image['shape'] == ['b', 28, 28, 1] and image['dtype'] == 'float32'
  assert 'mean [0.286], std [0.353]' in image['values']
  assert signature['outputs'] == {'shape': ['b'], 'dtype': 'int32'}
  assert (signature['model'], signature['task'], signature['step']) == (
      'vit_custom', 'classification', 4)

  predict = export_loader.load(directory)
  expected = predictor.predict_batch(batch)  # The 16 rows of an eval batch, on 8 devices.
  np.testing.assert_array_equal(predict(batch), expected)  # Extra keys are ignored.
  np.testing.assert_array_equal(predict({'image': batch['image'][3:8]}), expected[3:8])


def test_exported_logits_match_the_model_in_a_process_without_the_codebase(exported, tmp_path):
  """The loader copied alone into an empty folder computes the model's logits (through
  export_function, the machinery export_run uses) for two batch sizes."""
  predictor, _, _, batch = exported
  model = predictor.model
  logits_fn = lambda variables, b: predictor.task.apply(model, variables, b, train=False)
  variables = export.host_variables(predictor)
  exp, inputs = export.export_function(logits_fn, variables, batch)
  assert inputs == {'image': {'shape': ['b', 28, 28, 1], 'dtype': 'float32'}}
  export.write(str(tmp_path / 'logits'), exp, variables, {'inputs': inputs})
  expected = np.asarray(jax.jit(logits_fn)(variables, batch))  # One device: compiles fast.
  assert expected.shape == (16, 10) and expected.std(axis=0).max() > 1e-3

  user = tmp_path / 'user'
  user.mkdir()
  shutil.copy(os.path.join(ROOT, 'train', 'export_loader.py'), user)
  np.save(user / 'images.npy', batch['image'])
  script = (
      'import sys, numpy as np, export_loader\n'
      f'predict = export_loader.load({str(tmp_path / "logits")!r})\n'
      "images = np.load('images.npy')\n"
      "np.savez('out.npz', all=predict({'image': images}), some=predict({'image': images[:5]}))\n"
      "print(sorted(m for m in sys.modules if m.split('.')[0] in "
      "('nets', 'tasks', 'data', 'train', 'configs', 'pretrained')))\n")
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run([sys.executable, '-c', script], cwd=user, capture_output=True,
                        text=True, timeout=120, env=dict(env, JAX_PLATFORMS='cpu'))
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == '[]'
  out = np.load(user / 'out.npz')
  np.testing.assert_allclose(out['all'], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['some'], expected[:5], rtol=1e-5, atol=1e-5)

  with open(os.path.join(ROOT, 'train', 'export_loader.py')) as f:
    tree = ast.parse(f.read())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imported |= {alias.name.split('.')[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      imported.add(node.module.split('.')[0])
  assert imported <= {'json', 'os', 'flax', 'jax', 'numpy'}, imported


def test_loader_rejects_bad_input(exported, tmp_path):
  _, directory, _, batch = exported
  predict = export_loader.load(directory)
  image = batch['image']
  for bad, message in [
      ({'label': batch['label']}, r"lacks input\(s\) \['image'\]; the inputs are image: "
                                  r"\['b', 28, 28, 1\] float32"),
      ({'image': image.astype(np.float64)}, r"'image' must be float32, got float64"),
      ({'image': image[0]}, r"'image' must have rank 4 .* got shape \[28, 28, 1\]"),
      ({'image': image[:, :27]}, r'dimension 1: 27 instead of 28'),
      ({'image': image[:0]}, r"dimension 0 \('b'\) must be >= 1, got 0"),
      (image, 'must be a dict of arrays')]:
    with pytest.raises(ValueError, match=message):
      predict(bad)
  shutil.copytree(directory, tmp_path / 'partial')
  os.remove(tmp_path / 'partial' / 'variables.msgpack')
  with pytest.raises(FileNotFoundError, match='variables.msgpack is missing'):
    export_loader.load(str(tmp_path / 'partial'))


def test_input_keys_are_the_keys_predict_reads():
  variables = {'w': np.ones(3, np.float32)}
  batch = {k: np.zeros((2, 3), np.float32) for k in ('a', 'b', 'c', 'mask')}
  fn = lambda v, b: b['a'] * v['w'] + (b['c'] if 'c' in b else 0)
  assert export.input_keys(fn, variables, batch) == ['a', 'c']
  assert export.input_keys(lambda v, b: sum(b.values()), variables, batch) == [
      'a', 'b', 'c', 'mask']
  with pytest.raises(ValueError, match='reads none of the batch keys'):
    export.input_keys(lambda v, b: v['w'], variables, batch)


def test_pmap_run_exports_the_same_variables(run, exported):
  """pmap keeps a copy of the state per device; the export takes one."""
  config, workdir = run
  predictor = exported[0]
  pmap_config = config.copy_and_resolve_references()
  pmap_config.parallel = 'pmap'
  pmap_predictor = restore.Predictor(pmap_config, workdir, 'last')
  jax.tree.map(np.testing.assert_array_equal, export.host_variables(pmap_predictor),
               export.host_variables(predictor))
  assert jax.tree.leaves(export.host_variables(pmap_predictor))[0].shape == jax.tree.leaves(
      predictor.state.variables)[0].shape


def test_exports_compute_attention_with_the_portable_core():
  from configs import resnet18_fashion_mnist, vit_fashion_mnist  # pylint: disable=import-outside-toplevel
  config = vit_fashion_mnist.get_config()
  config.model.attention_impl = 'cudnn'  # No CPU lowering, not serialisable: never exported.
  assert export.portable_config(config).model.attention_impl == 'matmul'
  assert config.model.attention_impl == 'cudnn'  # The caller's config is left as it was.
  convolutional = resnet18_fashion_mnist.get_config()
  assert export.portable_config(convolutional) is convolutional


def test_a_predictor_warns_of_fields_the_run_trained_otherwise(run, caplog):
  # data.mean restores without a shape error but changes every input: said in the log.
  config, workdir = run
  changed = config.copy_and_resolve_references()
  changed.data.mean = (0.5,)
  restore.Predictor(changed, workdir)
  assert 'data.mean: [0.286] -> [0.5]' in caplog.text
  caplog.clear()
  changed = config.copy_and_resolve_references()
  changed.model.attention_impl = 'xla'  # The same attention: not a difference,
  changed.model.dropout_rate = 0.3  # nor is dropout, inactive at inference.
  restore.Predictor(changed, workdir)
  assert 'differs from the run' not in caplog.text


def test_timed_eval_of_a_classifier_reports_its_accuracy(run):
  # Classification has no evaluators: `predict --eval` times its eval step instead.
  config, workdir = run
  result = restore.Predictor(config, workdir).timed_eval('test')
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    tested = json.load(f)['test']
  assert result['examples'] == 36 and result['examples_per_s'] > 0
  assert result['top1'] == pytest.approx(tested['top1'])
  # An eval set the config lacks is named before the checkpoint is restored.
  config = config.copy_and_resolve_references()
  config.data.validation_split = ''
  with pytest.raises(ValueError, match=r"No 'validation' split in this config; valid: \['test'\]"):
    restore.Predictor(config, workdir, roles=('validation',))
