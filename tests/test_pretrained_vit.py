"""ViT weight import: timm state_dicts (pretrained.timm_vit) and the original JAX .npz
checkpoints (pretrained.vit_npz), against a timm-layout torch.nn twin with random weights.

The .npz files are written here from the twin's tensors by a mapping of this test's own
(timm -> vision_transformer / big_vision naming, the inverse direction of the importers),
so both importers are checked against torch's logits and against each other.
"""

import jax
import numpy as np
import pytest

import nets
import pretrained
from pretrained import convert, mapping, timm_vit, vit_npz

torch = pytest.importorskip('torch')
from benchmarks import torch_twins  # noqa: E402  pylint: disable=wrong-import-position

HIDDEN, DEPTH, HEADS, MLP, PATCH, SIZE, CLASSES = 32, 2, 4, 128, 4, 16, 10
TINY = ('vit_custom (hidden 32, 2 layers, mlp 128, {heads}, patch 4) at 16x16 (10 classes)')
_APPLY = {}


def _twin(**kwargs):
  return torch_twins.timm_vision_transformer(
      img_size=SIZE, patch_size=PATCH, num_classes=CLASSES, embed_dim=HIDDEN, depth=DEPTH,
      num_heads=HEADS, **kwargs)


def _state_dict(twin) -> dict:
  return {k: v.detach().numpy().copy() for k, v in twin.state_dict().items()}


def _torch_logits(twin, images):
  with torch.no_grad():
    return twin(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _logits(model, variables, images):
  if model not in _APPLY:
    _APPLY[model] = jax.jit(model.apply)
  return np.asarray(_APPLY[model](variables, images))


def _model(**kwargs):
  """A vit_custom of the twin's sizes (model_kwargs leave them to the caller) unless
  overridden."""
  sizes = dict(patch_size=PATCH, hidden_size=HIDDEN, num_layers=DEPTH, mlp_dim=MLP,
               num_heads=HEADS)
  return nets.build('vit_custom', **{**sizes, **kwargs})


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def twin():
  return _twin()


@pytest.fixture(scope='module')
def timm_variables(twin):
  """The reference import: the twin's state_dict through timm_vit (checked below)."""
  sd = _state_dict(twin)
  return timm_vit.to_variables(sd, _model(**timm_vit.model_kwargs(sd)), 'twin')


def _max_error(a, b) -> float:
  return float(np.max(np.abs(a - b)))


def _assert_trees_equal(a, b):
  """Nested dicts of arrays (or two arrays) equal exactly, with the same structure."""
  if not isinstance(a, dict):
    np.testing.assert_array_equal(a, b)
    return
  flat_a, flat_b = mapping.flatten(a), mapping.flatten(b)
  assert sorted(flat_a) == sorted(flat_b)
  for path, value in flat_a.items():
    np.testing.assert_array_equal(value, flat_b[path], err_msg='/'.join(path))


# --- Writing .npz checkpoints from timm tensors (this test's own mapping) ---------------

def _original_npz(sd: dict, prefix: str = '') -> dict:
  return torch_twins.vit_npz_from_timm(sd, HEADS, prefix)


def _big_vision_npz(sd: dict, scanned: bool) -> dict:
  return torch_twins.big_vision_npz_from_timm(sd, HEADS, scanned)


def _random_original_npz(hidden, depth, mlp, heads, patch, grid, classes, seed=0) -> dict:
  """Random arrays with the shapes of a vision_transformer-naming checkpoint."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.standard_normal(shape, np.float32)
  out = {'embedding/kernel': r(patch, patch, 3, hidden), 'embedding/bias': r(hidden),
         'cls': r(1, 1, hidden),
         'Transformer/posembed_input/pos_embedding': r(1, 1 + grid * grid, hidden),
         'Transformer/encoder_norm/scale': r(hidden), 'Transformer/encoder_norm/bias': r(hidden),
         'head/kernel': r(hidden, classes), 'head/bias': r(classes)}
  for i in range(depth):
    b = f'Transformer/encoderblock_{i}/'
    for ln in ('LayerNorm_0', 'LayerNorm_2'):
      out[f'{b}{ln}/scale'], out[f'{b}{ln}/bias'] = r(hidden), r(hidden)
    for name in ('query', 'key', 'value'):
      out[f'{b}MultiHeadDotProductAttention_1/{name}/kernel'] = r(hidden, heads, hidden // heads)
      out[f'{b}MultiHeadDotProductAttention_1/{name}/bias'] = r(heads, hidden // heads)
    out[f'{b}MultiHeadDotProductAttention_1/out/kernel'] = r(heads, hidden // heads, hidden)
    out[f'{b}MultiHeadDotProductAttention_1/out/bias'] = r(hidden)
    for j, (fan_in, fan_out) in enumerate(((hidden, mlp), (mlp, hidden))):
      out[f'{b}MlpBlock_3/Dense_{j}/kernel'] = r(fan_in, fan_out)
      out[f'{b}MlpBlock_3/Dense_{j}/bias'] = r(fan_out)
  return out


def _save_npz(path, tensors) -> str:
  np.savez(path, **tensors)
  return str(path)


# --- timm state_dicts ------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['pth', 'pth_wrapped_ddp', 'safetensors'])
def test_timm_file_imports_to_torch_logits(tmp_path, twin, images, kind):
  sd = twin.state_dict()
  if kind == 'pth':
    path = str(tmp_path / 'vit.pth')
    torch.save(sd, path)
  elif kind == 'pth_wrapped_ddp':  # A training checkpoint of a DistributedDataParallel model.
    path = str(tmp_path / 'checkpoint.pth.tar')
    torch.save({'epoch': 3, 'state_dict': {'module.' + k: v for k, v in sd.items()}}, path)
  else:
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    path = str(tmp_path / 'model.safetensors')
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
  tensors = timm_vit.read(path)
  assert sorted(tensors) == sorted(sd)
  assert timm_vit.architecture(tensors) == TINY.format(heads='heads not stored')
  kwargs = timm_vit.model_kwargs(tensors)
  assert kwargs == dict(num_classes=CLASSES, image_size=SIZE, num_channels=3, classifier='token',
                        approximate_gelu=False)
  model = _model(**kwargs)
  variables = timm_vit.to_variables(tensors, model, path)
  expected = _torch_logits(twin, images)
  error = _max_error(_logits(model, variables, images), expected)
  print(f'timm {kind}: max |logit error| {error:.2e} (logits up to {np.abs(expected).max():.1f})')
  assert error < 1e-4


def test_a_file_without_a_classifier_converts_and_loads_under_a_new_head(tmp_path, twin,
                                                                        timm_variables):
  # A backbone saved without its head (timm num_classes=0, DINO/MAE-style files).
  sd = {k: v for k, v in twin.state_dict().items() if not k.startswith('head.')}
  path = str(tmp_path / 'backbone.pth')
  torch.save(sd, path)
  sizes = dict(patch_size=PATCH, hidden_size=HIDDEN, num_layers=DEPTH, mlp_dim=MLP,
               num_heads=HEADS)
  info = convert.convert('timm_vit', path, 'vit_custom', str(tmp_path / 'out'), sizes)
  assert 'num_classes' not in info['model_kwargs'] and '(no classification head)' in (
      info['architecture'])
  loaded, _ = pretrained.load(str(tmp_path / 'out'))
  assert 'head' not in loaded['params']
  fresh = jax.tree.map(np.asarray, jax.jit(_model(num_classes=5, image_size=SIZE).init)(
      jax.random.key(1), np.zeros((1, SIZE, SIZE, 3), np.float32)))
  merged, notes = pretrained.merge(fresh, loaded, 'backbone')
  assert notes == ['initialised params/head/bias: backbone has no head',
                   'initialised params/head/kernel: backbone has no head']
  np.testing.assert_array_equal(merged['params']['head']['kernel'],
                                fresh['params']['head']['kernel'])
  flat, reference = mapping.flatten(merged['params']), mapping.flatten(timm_variables['params'])
  for key, value in flat.items():
    if key[0] != 'head':
      np.testing.assert_array_equal(value, reference[key])
  # Half a head is not a headless file: the missing half is listed.
  with pytest.raises(mapping.WeightMismatchError, match=r'1 missing in the file:\n    head.bias'):
    timm_vit.to_variables({**sd, 'head.weight': np.zeros((CLASSES, HIDDEN), np.float32)},
                          _model(num_classes=CLASSES), 'half.pth')


def test_timm_import_needs_the_exact_gelu(twin, images, timm_variables):
  """With the default tanh GELU the same weights give other logits (so the flag
  matters and the parity above is not loose)."""
  kwargs = {**timm_vit.model_kwargs(_state_dict(twin)), 'approximate_gelu': True}
  error = _max_error(_logits(_model(**kwargs), timm_variables, images),
                     _torch_logits(twin, images))
  print(f'timm weights with the tanh GELU: max |logit difference| {error:.2e}')
  assert error > 1e-4


def test_timm_without_class_position_and_qkv_bias(images):
  """no_embed_class=True (pos_embed over the patches only, cls_pos_embedding = 0) and
  qkv_bias=False (zero biases)."""
  twin = _twin(no_embed_class=True, qkv_bias=False, seed=1)
  sd = _state_dict(twin)
  assert sd['pos_embed'].shape == (1, (SIZE // PATCH) ** 2, HIDDEN)
  model = _model(**timm_vit.model_kwargs(sd))
  variables = timm_vit.to_variables(sd, model, 'twin')
  params = variables['params']
  assert not params['cls_pos_embedding'].any()
  assert not params['encoder_block_0']['attention']['key']['bias'].any()
  assert _max_error(_logits(model, variables, images), _torch_logits(twin, images)) < 1e-4


def test_timm_average_pooling(images):
  twin = _twin(class_token=False, global_pool='avg', seed=2)
  sd = _state_dict(twin)
  kwargs = timm_vit.model_kwargs(sd)
  assert kwargs['classifier'] == 'gap'
  assert 'global average pooling' in timm_vit.architecture(sd)
  model = _model(**kwargs)
  variables = timm_vit.to_variables(sd, model, 'twin')
  expected = _torch_logits(twin, images)
  assert _max_error(_logits(model, variables, images), expected) < 1e-4
  # The same weights as a big_vision pool_type='gap' .npz.
  npz = _big_vision_npz(sd, scanned=False)
  assert vit_npz.model_kwargs(npz)['classifier'] == 'gap'
  _assert_trees_equal(vit_npz.to_variables(npz, model, 'npz'), variables)
  # Into a class-token model: says which classifier to build.
  with pytest.raises(mapping.WeightMismatchError, match="classifier='gap'"):
    timm_vit.to_variables(sd, _model(**{**kwargs, 'classifier': 'token'}), 'twin')


# --- .npz checkpoints ------------------------------------------------------------------

@pytest.mark.parametrize('prefix', ['', 'opt/target/'])
def test_original_npz_equals_timm_import(tmp_path, twin, images, timm_variables, prefix):
  tensors = _original_npz(_state_dict(twin), prefix)
  if prefix:  # A flax.optim checkpoint also holds the optimizer state: skipped.
    tensors['opt/state/step'] = np.array(1000, np.float32)
  path = _save_npz(tmp_path / 'ViT-tiny.npz', tensors)
  read = vit_npz.read(path)
  assert sorted(read) == sorted(tensors)
  assert vit_npz.architecture(read) == TINY.format(heads='4 heads') + ', vision_transformer naming'
  kwargs = vit_npz.model_kwargs(read)
  assert kwargs == dict(num_classes=CLASSES, image_size=SIZE, num_channels=3, classifier='token',
                        approximate_gelu=True)
  variables = vit_npz.to_variables(read, _model(**kwargs), path)
  _assert_trees_equal(variables, timm_variables)
  # The twin's exact GELU with approximate_gelu=False; the Flax original's tanh GELU (the
  # importer's default) against the twin with GELU(approximate='tanh').
  exact = _max_error(_logits(_model(**{**kwargs, 'approximate_gelu': False}), variables, images),
                     _torch_logits(twin, images))
  tanh_twin = _twin(gelu_approximate='tanh')
  tanh_twin.load_state_dict(twin.state_dict())
  tanh = _max_error(_logits(_model(**kwargs), variables, images), _torch_logits(tanh_twin, images))
  print(f'npz {prefix or "plain"}: max |logit error| exact GELU {exact:.2e}, tanh {tanh:.2e}')
  assert exact < 1e-4 and tanh < 1e-4


@pytest.mark.parametrize('scanned', [False, True])
def test_big_vision_npz(tmp_path, twin, images, timm_variables, scanned):
  sd = _state_dict(twin)
  path = _save_npz(tmp_path / 'bv.npz', _big_vision_npz(sd, scanned))
  tensors = vit_npz.read(path)
  looks_like = vit_npz.architecture(tensors)
  assert looks_like.startswith(TINY.format(heads='4 heads') + ', big_vision naming')
  assert ('scanned blocks' in looks_like) == scanned
  kwargs = {**vit_npz.model_kwargs(tensors), 'approximate_gelu': False}
  model = _model(**kwargs)
  variables = vit_npz.to_variables(tensors, model, path)
  params, reference = variables['params'], timm_variables['params']
  assert not params['cls_pos_embedding'].any()  # Generated: big_vision has no class position.
  np.testing.assert_array_equal(params['cls_token'], sd['cls_token'] + sd['pos_embed'][:, :1])
  for name in ('pos_embedding', 'patch_embedding', 'encoder_block_0', 'encoder_block_1', 'head'):
    _assert_trees_equal(params[name], reference[name])
  error = _max_error(_logits(model, variables, images), _torch_logits(twin, images))
  print(f'big_vision npz (scanned={scanned}): max |logit error| {error:.2e}')
  assert error < 1e-4


def test_pre_logits_is_dropped_with_a_warning(twin, timm_variables, caplog):
  tensors = _original_npz(_state_dict(twin))
  tensors['pre_logits/kernel'] = np.ones((HIDDEN, HIDDEN), np.float32)
  tensors['pre_logits/bias'] = np.ones((HIDDEN,), np.float32)
  assert 'pre_logits' in vit_npz.architecture(tensors)
  with caplog.at_level('WARNING'):
    variables = vit_npz.to_variables(tensors, _model(**vit_npz.model_kwargs(tensors)), 'i21k.npz')
  _assert_trees_equal(variables, timm_variables)
  assert any('pre_logits' in r.getMessage() and r.levelname == 'WARNING' for r in caplog.records)


# --- Mismatches ------------------------------------------------------------------------

def test_missing_extra_and_misshaped_tensors_are_all_listed(twin):
  sd = _state_dict(twin)
  del sd['blocks.1.mlp.fc2.bias']
  sd['blocks.0.attn.relative_position_bias_table'] = np.zeros((9, HEADS), np.float32)
  sd['head.weight'], sd['head.bias'] = np.zeros((11, HIDDEN)), np.zeros(11)
  with pytest.raises(mapping.WeightMismatchError) as error:
    timm_vit.to_variables(sd, _model(**timm_vit.model_kwargs(_state_dict(twin))), 'bad.pth')
  message = str(error.value)
  assert '1 missing in the file:\n    blocks.1.mlp.fc2.bias' in message
  assert 'in the file but not in the model:\n    blocks.0.attn.relative_position_bias_table' \
      in message
  assert 'head.weight [11, 32] -> params/head/kernel: converted [32, 11], model [32, 10]' in message
  assert 'the file looks like vit_custom (hidden 32, 2 layers, mlp 128' in message


def test_bigger_vit_npz_says_what_it_looks_like(tmp_path):
  path = _save_npz(tmp_path / 'Ti_16.npz', _random_original_npz(192, 12, 768, 3, 16, 14, 1000))
  tensors = vit_npz.read(path)
  assert vit_npz.architecture(tensors) == ('vit_ti16 at 224x224 (1000 classes), '
                                           'vision_transformer naming')
  assert vit_npz.model_kwargs(tensors) == dict(num_classes=1000, image_size=224, num_channels=3,
                                               classifier='token', approximate_gelu=True)
  tiny = _model(num_classes=CLASSES, image_size=SIZE)
  with pytest.raises(mapping.WeightMismatchError) as error:
    vit_npz.to_variables(tensors, tiny, path)
  message = str(error.value)
  assert 'the file looks like vit_ti16 at 224x224 (1000 classes)' in message
  assert '41 mis-shaped:' in message  # Every variable of the tiny model.
  assert 'cls [1, 1, 192] -> params/cls_token: converted [1, 1, 192], model [1, 1, 32]' in message
  # Blocks 2-11, 16 arrays each, are not in the model.
  assert '160 in the file but not in the model:\n    Transformer/encoderblock_10/' in message


def test_scanned_npz_of_another_depth_is_misshaped(twin):
  tensors = _big_vision_npz(_state_dict(twin), scanned=True)
  deeper = _model(**{**vit_npz.model_kwargs(tensors), 'num_layers': 3})
  with pytest.raises(mapping.WeightMismatchError,
                     match=r'encoderblock/LayerNorm_0/scale \[2, 32\] .*model \[32\]'):
    vit_npz.to_variables(tensors, deeper, 'bv.npz')


def test_unrepresentable_checkpoints_raise_clear_errors(twin):
  sd = _state_dict(twin)
  model = _model(**timm_vit.model_kwargs(sd))
  npz = _big_vision_npz(sd, scanned=False)
  npz['params/MAPHead_0/probe'] = np.zeros((1, 1, HIDDEN), np.float32)
  assert 'MAP head' in vit_npz.architecture(npz)
  with pytest.raises(mapping.WeightMismatchError, match='MAP head'):
    vit_npz.to_variables(npz, model, 'map.npz')
  with pytest.raises(mapping.WeightMismatchError, match='register tokens'):
    timm_vit.to_variables({**sd, 'reg_token': np.zeros((1, 4, HIDDEN))}, model, 'reg.pth')
  with pytest.raises(mapping.WeightMismatchError, match=r'layer scale'):
    timm_vit.to_variables({**sd, 'blocks.0.ls1.gamma': np.ones(HIDDEN)}, model, 'deit3.pth')
  with pytest.raises(ValueError, match='is a ResNet'):
    timm_vit.to_variables(sd, nets.build('resnet18', num_classes=10), 'x.pth')


def test_reading_files_of_the_wrong_kind(tmp_path, twin):
  with pytest.raises(FileNotFoundError):
    vit_npz.read(str(tmp_path / 'absent.npz'))
  with pytest.raises(FileNotFoundError):
    timm_vit.read(str(tmp_path / 'absent.pth'))
  pth = str(tmp_path / 'vit.pth')
  torch.save(twin.state_dict(), pth)
  with pytest.raises(ValueError, match='PyTorch checkpoint'):
    vit_npz.read(pth)
  npz = _save_npz(tmp_path / 'vit.npz', _original_npz(_state_dict(twin)))
  with pytest.raises(ValueError, match='.npz archive'):
    timm_vit.read(npz)
  resnet = str(tmp_path / 'resnet.pth')
  torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 512)}, resnet)
  with pytest.raises(ValueError, match='not a timm VisionTransformer.*torchvision ResNet'):
    timm_vit.read(resnet)
  other = _save_npz(tmp_path / 'other.npz', {'w': np.zeros(3)})
  with pytest.raises(ValueError, match='not a ViT checkpoint'):
    vit_npz.read(other)


def test_bfloat16_npz_is_read_as_float32(tmp_path, twin):
  """numpy stores bfloat16 (checkpoints saved in bf16) as raw 2-byte voids."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  tensors = _original_npz(_state_dict(twin))
  path = _save_npz(tmp_path / 'bf16.npz',
                   {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()})
  read = vit_npz.read(path)
  for key, value in tensors.items():
    assert read[key].dtype == np.float32
    np.testing.assert_array_equal(read[key], value.astype(ml_dtypes.bfloat16).astype(np.float32))
  assert 0 < _max_error(read['head/kernel'], tensors['head/kernel']) < 1e-2


def test_supports():
  for fmt in (vit_npz, timm_vit):
    assert fmt.supports('vit_b16') and fmt.supports('vit_custom')
    assert not fmt.supports('resnet50') and not fmt.supports('vit_b61')
