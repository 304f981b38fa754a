"""Starting runs from converted weights or another run (config.init_from, init_into):
what is loaded, resized, reinitialised and left out, the errors, and fine-tuning runs
under tfds mock data and on a tiny Fashion-MNIST."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

import nets
import pretrained
import tasks
from configs import transformer_g2p, unetpp_fashion_mnist_scenes, vit_cifar10
from nets import vit
from pretrained import convert, mapping
from data import pipeline
from train import parallel, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_VIT = dict(hidden_size=24, num_layers=1, mlp_dim=48, num_heads=2, patch_size=4,
                num_channels=3)


def _converted(directory, image_size=16, num_classes=7, **overrides):
  """A converted directory as pretrained.convert writes it, from a random tiny ViT."""
  net = nets.build('vit_custom', num_classes=num_classes, image_size=image_size,
                   **{**TINY_VIT, **overrides})
  variables = jax.device_get(net.init(jax.random.key(1), np.zeros((1, image_size, image_size, 3)),
                                      train=False))
  # Non-zero heads, so that a reinitialised head is told apart from a loaded one.
  variables['params']['head']['kernel'] = np.ones_like(variables['params']['head']['kernel'])
  pretrained.save(directory, dict(variables), {'model': 'vit_custom', 'architecture': 'test'})
  return variables


def _fine_tune_config(init_from):
  config = vit_cifar10.get_config()
  for name, value in TINY_VIT.items():
    config.model[name] = value
  config.init_from = init_from
  config.batch_size, config.eval_batch_size = 16, 8
  config.num_train_steps, config.warmup_steps = 2, 0
  config.learning_rate = 0.0  # The saved params are then exactly what was initialised.
  config.optim.schedule = 'constant'
  config.augment.mixup_alpha = config.augment.cutmix_alpha = 0.0
  config.data.num_threads = 1
  return config


def test_merge_loads_resizes_and_reinitialises_only_what_it_may():
  rng = np.random.default_rng(0)
  fresh = {'params': {'head': {'kernel': np.zeros((4, 10))}, 'pos_embedding': np.zeros((1, 16, 4)),
                      'block': {'kernel': np.zeros((4, 4))}},
           'batch_stats': {'bn': {'mean': np.zeros(4)}}}
  loaded = {'params': {'head': {'kernel': rng.normal(size=(4, 7))},
                       'pos_embedding': rng.normal(size=(1, 4, 4)),
                       'block': {'kernel': rng.normal(size=(4, 4))}},
            'batch_stats': {'bn': {'mean': rng.normal(size=4)}}}
  merged, notes = pretrained.merge(fresh, loaded, 'src')
  np.testing.assert_array_equal(merged['params']['block']['kernel'], loaded['params']['block']['kernel'])
  np.testing.assert_array_equal(merged['batch_stats']['bn']['mean'], loaded['batch_stats']['bn']['mean'])
  np.testing.assert_array_equal(merged['params']['head']['kernel'], np.zeros((4, 10)))
  np.testing.assert_allclose(merged['params']['pos_embedding'],
                             vit.interpolate_position_embeddings(loaded['params']['pos_embedding'],
                                                                 (4, 4)), rtol=1e-6)
  assert notes == ['reinitialised params/head/kernel: checkpoint [4, 7], model [4, 10]',
                   'resized params/pos_embedding from a 2^2 to a 4^2 grid (bilinear)']
  # A body variable of another shape, one missing and one extra, and position
  # embeddings of another width (not a grid to resize): all listed at once.
  loaded['params']['block']['kernel'] = np.zeros((4, 5))
  loaded['params']['pos_embedding'] = np.zeros((1, 4, 8))
  loaded['params']['extra'] = np.zeros(3)
  del loaded['batch_stats']['bn']['mean']
  with pytest.raises(mapping.WeightMismatchError) as error:
    pretrained.merge(fresh, loaded, 'src')
  assert str(error.value).splitlines()[1:] == [
      '  batch_stats/bn/mean: missing in the checkpoint',
      '  params/pos_embedding: checkpoint [1, 4, 8], model [1, 16, 4]',
      '  params/block/kernel: checkpoint [4, 5], model [4, 4]',
      '  params/extra: not in the model']


def test_converts_a_timm_file_then_fine_tunes_from_it_under_tfds_mock_data(tmp_path, caplog):
  torch = pytest.importorskip('torch')
  from benchmarks import torch_twins  # pylint: disable=import-outside-toplevel
  twin = torch_twins.timm_vision_transformer(img_size=16, patch_size=4, num_classes=7,
                                             embed_dim=24, depth=1, num_heads=2, mlp_ratio=2)
  torch.save(twin.state_dict(), str(tmp_path / 'timm.pth'))
  out = str(tmp_path / 'weights')
  sizes = {k: v for k, v in TINY_VIT.items() if k != 'num_channels'}
  with pytest.raises(ValueError, match="cannot fill model 'resnet18'"):
    convert.convert('timm_vit', str(tmp_path / 'timm.pth'), 'resnet18', out)
  result = convert.convert('timm_vit', str(tmp_path / 'timm.pth'), 'vit_custom', out, sizes)
  assert result['model_kwargs']['approximate_gelu'] is False  # timm's GELU is exact.
  assert result['num_params'] == sum(p.numel() for p in twin.parameters())
  config = _fine_tune_config(out)
  with pytest.raises(ValueError, match='approximate_gelu: weights False, config True'):
    trainer.validate(config, 8)
  config.model.approximate_gelu = False
  workdir = str(tmp_path / 'run')
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    metrics = trainer.run(config, workdir)
  assert metrics['step'] == 2 and np.isfinite(metrics['test']['loss'])
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', '2', 'state'))
  params, loaded = state['params'], pretrained.load(out)[0]['params']
  # The body is the converted one, unchanged (lr 0); the 7-class head was reinitialised
  # (zeros: ViT's head init) for 10 classes; the 4x4 position grid resized to 8x8.
  for name in ('encoder_block_0', 'patch_embedding', 'encoder_norm', 'cls_token'):
    jax.tree.map(np.testing.assert_array_equal, params[name], loaded[name])
  np.testing.assert_array_equal(params['cls_pos_embedding'], loaded['cls_pos_embedding'])
  np.testing.assert_array_equal(params['head']['kernel'], np.zeros((24, 10)))
  np.testing.assert_allclose(params['pos_embedding'], vit.interpolate_position_embeddings(
      loaded['pos_embedding'], (8, 8)), rtol=1e-6)
  assert 'reinitialised params/head/kernel: checkpoint [24, 7], model [24, 10]' in caplog.text
  assert 'resized params/pos_embedding from a 4^2 to a 8^2 grid' in caplog.text
  with pytest.raises(FileExistsError, match='exists and is not an empty directory'):
    convert.convert('timm_vit', str(tmp_path / 'timm.pth'), 'vit_custom', out, sizes)


def test_init_from_errors_come_before_training(tmp_path):
  config = _fine_tune_config(str(tmp_path / 'nothing'))
  with pytest.raises(FileNotFoundError, match='is neither a converted weight directory.*nor a run'):
    trainer.validate(config, 8)
  pretrained.save(str(tmp_path / 'b16'), {'params': {'w': np.zeros(2)}},
                  {'model': 'vit_b16', 'architecture': 'vit_b16 at 224x224'})
  config.init_from = str(tmp_path / 'b16')
  with pytest.raises(ValueError, match="holds weights for model 'vit_b16'.*'vit_custom'"):
    trainer.validate(config, 8)
  _converted(str(tmp_path / 'wider'), hidden_size=32, mlp_dim=48, num_heads=2)
  config.init_from = str(tmp_path / 'wider')
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(mapping.WeightMismatchError,
                       match=r'params/encoder_norm/scale: checkpoint \[32\], model \[24\]'):
      trainer.run(config, str(tmp_path / 'run'))
  assert not os.listdir(os.path.join(tmp_path, 'run', 'checkpoints'))  # Nothing trained.


def _classifier_run(directory, width=4, step=7):
  """A launch.py workdir holding one checkpoint of a tiny two-stage ResNet-18 classifier
  (1 channel, ImageNet stem; random values: only the shapes are the model's), written as
  the trainer writes it; returns its variables."""
  fields = {'name': 'resnet18', 'width': width, 'stem': 'imagenet', 'num_channels': 1,
            'stage_sizes': [2, 2]}
  net = nets.build(**{'num_classes': 10, **fields})
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)),
                                           train=False))
  rng = np.random.default_rng(width)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  os.makedirs(os.path.join(directory, 'checkpoints'))
  with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump({'model': fields, 'task': 'classification'}, f)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, 'checkpoints', str(step), 'state'),
                    {'params': variables['params'],
                     'model_state': {'batch_stats': variables['batch_stats']},
                     'opt_state': {'mu': np.zeros(2)}, 'rng': np.zeros(2, np.uint32),
                     'step': np.int32(step)})
  checkpointer.wait_until_finished()
  checkpointer.close()
  return variables


def test_a_classifier_run_initialises_a_unetpp_encoder_through_init_into(tmp_path):
  """config.init_from = a run's workdir, config.init_into = 'encoder': the encoder is the
  classifier's (its head left out), the decoder keeps its initialisation; a bad module
  name, a missing checkpoint and other shapes are refused by the checks that run
  before anything is initialised (trainer.run order, test above)."""
  source = str(tmp_path / 'classifier')
  classifier = _classifier_run(source)
  config = unetpp_fashion_mnist_scenes.get_config()
  config.model.update(encoder='resnet18', width=4 / 64, depth=2)  # The classifier's 2 stages.
  config.update(init_from=source, init_into='encoder')
  config.optim.ema_decay = 0.999  # The moving average starts at the loaded weights.
  trainer.validate(config, 1)
  engine = parallel.build('jit', jax.devices()[:1])
  _, _, _, _, init_fn = trainer.build_components(config, 1000, pipeline.image_spec(11, (32, 32, 1)))
  abstract = trainer.abstract_state(init_fn, engine)
  abstract = {'params': abstract.params, **abstract.model_state}
  pretrained.check_shapes(config, abstract)
  fresh = engine.to_canonical(engine.init_state(init_fn))
  state = pretrained.initialise(config, fresh, engine.replicated)
  variables = jax.device_get({'params': state.params, **state.model_state})
  encoder = {c: variables[c]['encoder'] for c in variables}
  assert set(classifier['params']) - set(encoder['params']) == {'head'}
  jax.tree.map(np.testing.assert_array_equal, encoder,
               {c: {k: v for k, v in classifier[c].items() if k != 'head'} for c in encoder})
  jax.tree.map(np.testing.assert_array_equal, variables['params']['X_0_1'],
               jax.device_get(fresh.params['X_0_1']))  # The decoder: initialised.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema), variables)

  config.init_into = 'encodr'
  with pytest.raises(ValueError, match=r"init_into='encodr' is not a module.*'encoder'"):
    pretrained.check_shapes(config, abstract)
  config.init_into = ''
  with pytest.raises(ValueError, match="holds weights for model 'resnet18'.*'unetpp'"):
    trainer.validate(config, 1)
  config.update(init_from='', init_into='encoder')
  with pytest.raises(ValueError, match='init_into=.encoder. needs config.init_from'):
    trainer.validate(config, 1)
  config.init_from = str(tmp_path / 'wider')
  _classifier_run(config.init_from, width=8)
  with pytest.raises(mapping.WeightMismatchError,
                     match=r'params/encoder/stem/conv/kernel: checkpoint \[7, 7, 1, 8\], '
                           r'model \[7, 7, 1, 4\]'):
    pretrained.check_shapes(config, abstract)
  config.init_from = str(tmp_path / 'untrained')
  os.makedirs(os.path.join(config.init_from, 'checkpoints'))
  with open(os.path.join(config.init_from, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump({'model': {'name': 'resnet18'}}, f)
  with pytest.raises(FileNotFoundError, match='has no checkpoint yet'):
    trainer.validate(config, 1)


def test_a_run_saved_from_eight_devices_loads_in_a_process_with_one(tmp_path):
  """A run trained on 8 devices as init_from of a run on 1 (its checkpoint records the 8)."""
  source = str(tmp_path / 'run')
  os.makedirs(os.path.join(source, 'checkpoints'))
  with open(os.path.join(source, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump({'model': {'name': 'resnet18'}}, f)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
  state = {'params': {'dense': {'kernel': kernel}},
           'model_state': {'batch_stats': {'bn': {'mean': np.ones(3, np.float32)}}},
           'step': np.int32(3)}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(source, 'checkpoints', '3', 'state'),
                    jax.device_put(state, replicated))
  checkpointer.wait_until_finished()
  checkpointer.close()
  code = ('import sys, jax, pretrained; v, _ = pretrained.load(sys.argv[1]); '
          'print(len(jax.devices()), v["params"]["dense"]["kernel"].tolist(), '
          'v["batch_stats"]["bn"]["mean"].tolist())')
  out = subprocess.run([sys.executable, '-c', code, source], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''},
                       check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split('\n')[-2] == f'1 {kernel.tolist()} [1.0, 1.0, 1.0]'


def _fake_run(directory, config):
  """A directory that looks like a launch.py run of `config` (checkpoint contents are
  not read by pretrained.check)."""
  os.makedirs(os.path.join(directory, 'checkpoints', '5', 'state'))
  with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort())
  return str(directory)


def test_a_run_as_init_from_may_change_regularisation_not_what_its_weights_compute(tmp_path):
  config = vit_cifar10.get_config()
  config.init_from = _fake_run(tmp_path / 'run', vit_cifar10.get_config())
  config.model.drop_path_rate, config.model.attention_impl = 0.0, 'xla'
  config.model.dropout_rate = 0.3
  check = lambda: pretrained.check(config, tasks.get(config.task).check(config))
  check()  # Fine-tuning with other regularisation, another core.
  config.model.approximate_gelu = not config.model.approximate_gelu
  with pytest.raises(ValueError, match='approximate_gelu: weights True, config False'):
    check()
  # Any task's run: a Transformer has vocabulary sizes, not a class count.
  config = transformer_g2p.get_config()
  config.init_from = _fake_run(tmp_path / 'g2p', transformer_g2p.get_config())
  check()
  config.model.pre_ln = not config.model.get('pre_ln', False)
  with pytest.raises(ValueError, match='pre_ln: weights'):
    check()


def test_init_into_a_backbone_leaves_out_mobilenet_v2s_classifier_convolution():
  # A MobileNetV2 classifier's head_conv (1x1 to 1280 channels) and head are the
  # classifier's; its features_only backbone (yolov3_mobilenet_v2's) has neither.
  init = lambda model: jax.eval_shape(functools.partial(model.init, train=False),
                                      jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  classifier = mapping.flatten(init(nets.build(
      'mobilenet_v2', num_classes=10, width_multiplier=0.35, num_channels=1)))
  detector = mapping.flatten(init(nets.build('yolov3_mobilenet_v2', num_classes=10,
                                             width=0.35, num_anchors=3, num_channels=1)))
  target, placed, notes = pretrained._target(  # pylint: disable=protected-access
      detector, classifier, ('backbone',), 'RUN')
  assert {'head', 'head_conv'} == {p[1] for p in classifier} - {p[2] for p in placed}
  assert set(placed) <= set(target) and len(placed) == len(classifier) - sum(
      p[1] in ('head', 'head_conv') for p in classifier)
  assert notes == ['not loaded: head of RUN (backbone has none)',
                   'not loaded: head_conv of RUN (backbone has none)']
