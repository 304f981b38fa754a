"""pretrained/torchvision.py: torchvision ResNet / MobileNetV2 state_dicts -> our models.

The reference is a torch.nn twin with torchvision's module names (benchmarks/torch_twins.py),
random weights and random BatchNorm statistics: its state_dict goes through a written
.pth and .safetensors file, and our model's logits must equal the twin's.
"""

import pickle
import re

import jax
import numpy as np
import pytest

import nets
from pretrained import mapping
from pretrained import torchvision as tv

torch = pytest.importorskip('torch')
torch_twins = pytest.importorskip('benchmarks.torch_twins')
safetensors_torch = pytest.importorskip('safetensors.torch')

NUM_CLASSES = 7  # Few classes: a small classifier, quick compilation.


def _numpy(state_dict):
  return {k: v.detach().numpy().copy() for k, v in state_dict.items()}


def _shapes_only(module):
  """The state_dict of a module built on the meta device as zero arrays (no weights are
  computed: for recognising the big ResNets by their shapes)."""
  return {k: np.zeros(v.shape, np.float32) for k, v in module.state_dict().items()}


def _torch_logits(twin, x):
  with torch.no_grad():
    return twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


_APPLY = {}


def _our_logits(model, variables, x):
  """One compilation per model configuration for all the tests."""
  if model not in _APPLY:
    _APPLY[model] = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return np.asarray(_APPLY[model](variables, x))


def _images(size=64):
  return np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def resnet18_twin():
  return torch_twins.torchvision_resnet(18, NUM_CLASSES)


@pytest.fixture(scope='module')
def resnet18():
  return nets.build('resnet18', num_classes=NUM_CLASSES)


def _write(state_dict, tmp_path, kind):
  path = str(tmp_path / f'weights.{kind}')
  if kind == 'pth':
    torch.save(state_dict, path)
  else:
    safetensors_torch.save_file(state_dict, path)
  return path


# --- Parity with torch ------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['memory', 'pth', 'safetensors'])
def test_resnet18_logits_match_torchvision_twin(kind, tmp_path, resnet18_twin, resnet18):
  state_dict = resnet18_twin.state_dict()
  tensors = (_numpy(state_dict) if kind == 'memory'
             else tv.read(_write(state_dict, tmp_path, kind)))
  assert tv.architecture(tensors) == f'resnet18 ({NUM_CLASSES} classes)'
  assert tv.model_kwargs(tensors) == {'num_classes': NUM_CLASSES}
  variables = tv.to_variables(tensors, resnet18, 'twin')
  assert variables['params']['stem']['conv']['kernel'].shape == (7, 7, 3, 64)
  assert variables['params']['head']['kernel'].shape == (512, NUM_CLASSES)
  x = _images()
  np.testing.assert_allclose(_our_logits(resnet18, variables, x),
                             _torch_logits(resnet18_twin, x), rtol=1e-4, atol=1e-4)


def test_parity_is_sensitive_to_one_batch_norm_statistic(resnet18_twin, resnet18):
  """A single misread running statistic deep in the network breaks the parity check."""
  tensors = _numpy(resnet18_twin.state_dict())
  tensors['layer3.1.bn1.running_var'] = tensors['layer3.1.bn1.running_var'][::-1].copy()
  variables = tv.to_variables(tensors, resnet18, 'twin')
  x = _images()
  error = np.abs(_our_logits(resnet18, variables, x) - _torch_logits(resnet18_twin, x)).max()
  assert error > 1e-2


def test_resnet50_logits_match_torchvision_twin(tmp_path):
  twin = torch_twins.torchvision_resnet(50, NUM_CLASSES, seed=1)
  tensors = tv.read(_write(twin.state_dict(), tmp_path, 'safetensors'))
  assert tv.architecture(tensors) == f'resnet50 ({NUM_CLASSES} classes)'
  model = nets.build('resnet50', **tv.model_kwargs(tensors))
  variables = tv.to_variables(tensors, model, 'twin')
  x = _images()
  np.testing.assert_allclose(_our_logits(model, variables, x), _torch_logits(twin, x),
                             rtol=1e-4, atol=1e-4)


def test_mobilenet_v2_logits_match_torchvision_twin(tmp_path):
  twin = torch_twins.torchvision_mobilenet_v2(NUM_CLASSES, width_mult=0.5, seed=2)
  tensors = tv.read(_write(twin.state_dict(), tmp_path, 'pth'))
  assert tv.architecture(tensors) == f'mobilenet_v2 (width multiplier 0.5, {NUM_CLASSES} classes)'
  model = nets.build('mobilenet_v2', width_multiplier=0.5, **tv.model_kwargs(tensors))
  variables = tv.to_variables(tensors, model, 'twin')
  # The first block (t = 1) has no expansion conv; a depthwise kernel is [3, 3, 1, C].
  assert 'expand' not in variables['params']['block1_1']
  assert variables['params']['block2_1']['depthwise']['conv']['kernel'].shape == (3, 3, 1, 48)
  x = _images()
  np.testing.assert_allclose(_our_logits(model, variables, x), _torch_logits(twin, x),
                             rtol=1e-4, atol=1e-4)


# --- Recognising the architecture --------------------------------------------------------

@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_architecture_recognises_resnet_depths(depth):
  with torch.device('meta'):
    twin = torch_twins.TorchvisionResNet(depth, 1000)
  tensors = _shapes_only(twin)
  assert tv.architecture(tensors) == f'resnet{depth} (1000 classes)'
  assert tv.model_kwargs(tensors) == {'num_classes': 1000}
  del tensors['fc.weight'], tensors['fc.bias']
  assert tv.architecture(tensors) == f'resnet{depth} (no classifier)'
  assert tv.model_kwargs(tensors) == {}


def test_architecture_names_torchvision_resnet_variants_without_a_counterpart():
  with torch.device('meta'):
    tensors = _shapes_only(torch_twins.TorchvisionResNet(50, 1000))
  wide = dict(tensors, **{'layer1.0.conv1.weight': np.zeros((128, 64, 1, 1))})
  assert tv.architecture(wide) == ('torchvision wide_resnet50_2 (no wide ResNet in nets/; '
                                   '1000 classes)')
  resnext = dict(wide, **{'layer1.0.conv2.weight': np.zeros((128, 4, 3, 3))})
  assert tv.architecture(resnext) == ('torchvision resnext50_32x4d (no ResNeXt in nets/; '
                                      '1000 classes)')
  del tensors['layer4.2.conv1.weight']  # Blocks are counted by their index, whatever remains.
  assert tv.architecture(tensors) == 'resnet50 (1000 classes)'
  for key in [k for k in tensors if k.startswith('layer4.2.')]:
    del tensors[key]
  assert tv.architecture(tensors) == ("a ResNet with bottleneck blocks [3, 4, 6, 2] "
                                      "(1000 classes)")


@pytest.mark.parametrize('width', [1.0, 0.75, 0.5, 0.35, 1.4])
def test_architecture_recognises_mobilenet_v2_widths(width):
  with torch.device('meta'):
    twin = torch_twins.TorchvisionMobileNetV2(10, width)
  tensors = _shapes_only(twin)
  assert tv.architecture(tensors) == f'mobilenet_v2 (width multiplier {width}, 10 classes)'
  assert tv.model_kwargs(tensors) == {'num_classes': 10}


def test_architecture_of_other_files_is_empty():
  assert tv.architecture({'cls_token': np.zeros((1, 1, 8)),
                          'patch_embed.proj.weight': np.zeros((8, 3, 16, 16))}) == ''
  assert tv.architecture({}) == ''


def test_supports_post_activation_resnets_and_mobilenet_v2_only():
  for name in ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'mobilenet_v2'):
    assert tv.supports(name) and name in nets.REGISTRY
  for name in ('preact_resnet50', 'vit_b16', 'darknet53', 'yolov3_resnet18', 'resnet200'):
    assert not tv.supports(name)
  with pytest.raises(ValueError, match='pre-activation'):
    tv.to_variables({}, nets.build('preact_resnet18', num_classes=10), 'x')
  with pytest.raises(ValueError, match='not VisionTransformer'):
    tv.to_variables({}, nets.build('vit_ti16', num_classes=10), 'x')


# --- Reading files -------------------------------------------------------------------------

def test_read_unwraps_checkpoints_and_distributed_prefixes(tmp_path, resnet18_twin):
  state_dict = resnet18_twin.state_dict()
  expected = _numpy(state_dict)
  for i, obj in enumerate([{'model': state_dict, 'epoch': 3},
                           {'state_dict': {'module.' + k: v for k, v in state_dict.items()},
                            'optimizer': {'lr': 0.1}}]):
    path = str(tmp_path / f'checkpoint{i}.pth')
    torch.save(obj, path)
    got = tv.read(path)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
      assert got[key].dtype == np.float32
      np.testing.assert_array_equal(got[key], value)


def test_read_converts_half_precision_safetensors(tmp_path):
  weights = torch.randn(4, 3)
  path = str(tmp_path / 'half.safetensors')
  safetensors_torch.save_file({'a': weights.to(torch.bfloat16), 'b': weights.half()}, path)
  got = tv.read(path)
  assert got['a'].dtype == got['b'].dtype == np.float32
  np.testing.assert_array_equal(got['a'], weights.to(torch.bfloat16).float().numpy())
  np.testing.assert_array_equal(got['b'], weights.half().float().numpy())


def test_read_rejects_files_of_other_formats(tmp_path):
  with pytest.raises(FileNotFoundError):
    tv.read(str(tmp_path / 'absent.pth'))
  npz = str(tmp_path / 'vit.npz')
  np.savez(npz, **{'Transformer/encoder_norm/scale': np.ones(3, np.float32)})
  with pytest.raises(ValueError, match='NumPy .npz archive'):
    tv.read(npz)
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(np.random.default_rng(0).bytes(256))
  with pytest.raises(ValueError, match='neither a PyTorch'):
    tv.read(str(junk))
  not_a_state_dict = str(tmp_path / 'stats.pth')
  torch.save({'epoch': 3, 'accuracy': 0.7}, not_a_state_dict)
  with pytest.raises(ValueError, match="not a state_dict: 'epoch' is of type int"):
    tv.read(not_a_state_dict)
  module = str(tmp_path / 'module.pth')
  torch.save(torch.nn.Linear(2, 2), module)  # A whole pickled module: not weights only.
  with pytest.raises(ValueError, match=re.escape('save model.state_dict()')):
    tv.read(module)
  arbitrary_pickle = tmp_path / 'arbitrary.pt'
  arbitrary_pickle.write_bytes(pickle.dumps({'a': object()}, protocol=2))
  with pytest.raises(ValueError, match='weights-only'):
    tv.read(str(arbitrary_pickle))


def test_read_without_torch_says_what_to_install(tmp_path, monkeypatch, resnet18_twin):
  path = _write({'fc.bias': resnet18_twin.fc.bias.detach()}, tmp_path, 'pth')
  monkeypatch.setitem(__import__('sys').modules, 'torch', None)  # import torch fails.
  with pytest.raises(ImportError, match='CPU wheel.*safetensors'):
    tv.read(path)


# --- Mismatched weights ---------------------------------------------------------------------

def _mismatch(tensors, model):
  with pytest.raises(mapping.WeightMismatchError) as info:
    tv.to_variables(tensors, model, 'weights.pth')
  return str(info.value)


def test_removed_renamed_and_misshaped_tensors_are_listed(resnet18_twin, resnet18):
  tensors = _numpy(resnet18_twin.state_dict())
  del tensors['layer2.0.bn1.running_var']
  tensors['layer3.1.conv_2.weight'] = tensors.pop('layer3.1.conv2.weight')
  tensors['fc.weight'] = tensors['fc.weight'][:, :-1]
  message = _mismatch(tensors, resnet18)
  assert 'the file looks like resnet18' in message
  lines = {line.strip().split(' (for ')[0]: line for line in message.splitlines()}
  assert ('layer2.0.bn1.running_var (for batch_stats/stage2_block1/conv_bn0/bn/var); '
          'closest: ') in lines['layer2.0.bn1.running_var']
  assert 'layer2.1.bn1.running_var' in lines['layer2.0.bn1.running_var'].split('closest: ')[1]
  assert ('layer3.1.conv2.weight (for params/stage3_block2/conv_bn1/conv/kernel); '
          'closest: layer3.1.conv_2.weight') in message
  assert 'fc.weight [7, 511] -> params/head/kernel: converted [511, 7], model [512, 7]' in message
  assert '1 in the file but not in the model:\n    layer3.1.conv_2.weight' in message
  assert 'num_batches_tracked' not in message


def test_resnet50_weights_into_resnet18_say_what_the_file_is(resnet18):
  with torch.device('meta'):
    twin = torch_twins.TorchvisionResNet(50, NUM_CLASSES)
  message = _mismatch(_shapes_only(twin), resnet18)
  assert f'the file looks like resnet50 ({NUM_CLASSES} classes)' in message
  assert 'layer1.0.conv3.weight' in message  # In the file but not in the model.


def test_mobilenet_width_mismatch_says_the_files_width():
  with torch.device('meta'):
    twin = torch_twins.TorchvisionMobileNetV2(10, 0.5)
  message = _mismatch(_shapes_only(twin), nets.build('mobilenet_v2', num_classes=10))
  assert 'the file looks like mobilenet_v2 (width multiplier 0.5, 10 classes)' in message
  assert ('features.1.conv.0.0.weight [16, 1, 3, 3] -> params/block1_1/depthwise/conv/kernel: '
          'converted [3, 3, 1, 16], model [3, 3, 1, 32]') in message


def test_vit_state_dict_into_resnet_is_a_clear_error(resnet18):
  vit_like = {'cls_token': np.zeros((1, 1, 8), np.float32),
              'patch_embed.proj.weight': np.zeros((8, 3, 16, 16), np.float32),
              'blocks.0.attn.qkv.weight': np.zeros((24, 8), np.float32)}
  message = _mismatch(vit_like, resnet18)
  assert ("the file looks like neither a torchvision ResNet nor a MobileNetV2 (its first "
          "keys: ['cls_token', 'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight'])"
          in message)
  assert '100 missing in the file' in message  # All of resnet18's but its head's.


def test_features_only_models_leave_the_classifier_out(resnet18_twin):
  tensors = _numpy(resnet18_twin.state_dict())
  backbone = nets.build('resnet18', num_classes=NUM_CLASSES, features_only=True)
  variables = tv.to_variables(tensors, backbone, 'twin')
  assert 'head' not in variables['params']
  np.testing.assert_array_equal(variables['batch_stats']['stage4_block2']['conv_bn1']['bn']['var'],
                                tensors['layer4.1.bn2.running_var'])
  del tensors['layer4.1.bn2.running_var']  # Only the classifier is left out.
  assert 'layer4.1.bn2.running_var' in _mismatch(tensors, backbone)
