"""timm VisionTransformer state_dicts (.pth / .pt or .safetensors) -> nets.vit.VisionTransformer.

The layout is timm's `timm/models/vision_transformer.py` (`VisionTransformer`, `Block`,
`Attention`; `timm/layers/patch_embed.py` `PatchEmbed`; `timm/layers/mlp.py` `Mlp`), as
listed by `model.state_dict()` of e.g. vit_base_patch16_224:
  patch_embed.proj.{weight [D, C, P, P], bias}   a Conv2d, OIHW -> our HWIO
  cls_token [1, 1, D]
  pos_embed [1, 1 + N, D]   added after the class token is prepended: entry 0 -> our
      cls_pos_embedding, the N = grid^2 others -> pos_embedding; [1, N, D] with
      no_embed_class=True (the class token gets no position: cls_pos_embedding = 0)
      or without a class token (class_token=False, global_pool='avg')
  blocks.{i}.norm1, attn.qkv.{weight [3D, D], bias [3D]}   one Linear for q, k and v
      stacked on the output axis, each output index h * D/H + d of head h (timm reshapes
      to [B, N, 3, H, D/H]) -> our query/key/value kernel [D, H, D/H], bias [H, D/H]
      (a qkv_bias=False model has no bias: zeros are exactly that)
  blocks.{i}.attn.proj.{weight [D, D], bias}   -> our attention/out kernel [H, D/H, D]
  blocks.{i}.norm2, mlp.fc1, mlp.fc2   -> ln_mlp, mlp/Dense_0, mlp/Dense_1
  norm, head   -> encoder_norm, head (token pooling reads norm's class-token output)
The LayerNorms (weight -> scale) use epsilon 1e-6 in timm's ViT, as Flax's default;
attention scales q by head_dim ** -0.5 as ours does. timm's MLP uses the exact (erf)
GELU, so model_kwargs sets approximate_gelu=False: with it the imported model computes
what timm computes.

Not representable, with a clear error: register tokens (reg_token), a distillation
token (DeiT dist_token), average pooling with a LayerNorm after the pooling (fc_norm),
attention pooling (attn_pool), a LayerNorm before the blocks (norm_pre, CLIP), layer
scale (ls1 / ls2), q/k normalisation, hybrid backbones (patch_embed.backbone). A
'pre_logits' layer (old timm checkpoints) is skipped with a warning, as timm's own
checkpoint_filter_fn drops it.

The num_heads of a fused qkv projection is not stored in the file: it is the model's
(the named variants vit_ti/s/b/l have timm's head counts). Nor is the pooling: a file
with a cls_token loads as class-token pooling ('token'), one without as 'gap'. A timm
model built with a class token *and* global_pool='avg', fc_norm=False (rare: timm adds
fc_norm to average pooling by default, and that is refused above) has the same tensors
as a token-pooling one, so it loads without error into a model whose head reads the
class token instead of the patch-token mean: check such an import's accuracy.

Files are read by pretrained.torchvision.read (torch.load weights_only=True, or
safetensors; a 'state_dict' / 'model' wrapper and a 'module.' prefix are removed).
"""

import re

from absl import logging
import numpy as np

from pretrained import mapping, torchvision, vit_npz

DESCRIPTION = 'timm VisionTransformer state_dicts (.pth / .pt via torch, or .safetensors)'

# Keys of timm ViT features the model does not have -> what they are.
_UNSUPPORTED = (
    (r'reg_token$', 'register tokens (reg_token)'),
    (r'dist_token$', 'a distillation token (DeiT dist_token / head_dist)'),
    (r'fc_norm\.', "a LayerNorm after average pooling (fc_norm; ours pools after 'norm')"),
    (r'attn_pool\.', 'attention pooling (attn_pool, a MAP head)'),
    (r'norm_pre\.', 'a LayerNorm before the blocks (norm_pre)'),
    (r'blocks\.\d+\.ls[12]\.', 'layer scale (ls1 / ls2)'),
    (r'blocks\.\d+\.attn\.[qk]_norm\.', 'q / k normalisation (qk_norm)'),
    (r'patch_embed\.backbone\.', 'a hybrid CNN backbone (patch_embed.backbone)'),
)


def supports(model_name: str) -> bool:
  """True for the ViT registry names (vit_<variant><patch>, vit_custom)."""
  return vit_npz.supports(model_name)


def _what_else(tensors) -> str:
  if 'conv_proj.weight' in tensors or any(k.startswith('encoder.layers.') for k in tensors):
    return 'a torchvision ViT state_dict'
  if any('embeddings.patch_embeddings' in k for k in tensors):
    return 'a Hugging Face transformers ViT state_dict'
  if 'conv1.weight' in tensors or 'features.0.0.weight' in tensors:
    return 'a CNN (torchvision ResNet / MobileNetV2?) state_dict: read it with ' \
           'pretrained.torchvision'
  return 'an unknown state_dict'


def read(path: str) -> dict[str, np.ndarray]:
  """The tensors of a timm ViT state_dict file, by their timm names, float32 numpy.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not a PyTorch / safetensors state_dict, or one without a timm ViT patch
      embedding (the message says what it seems to be).
    ImportError: torch (for .pth / .pt) or safetensors is not installed.
  """
  tensors = torchvision.read(path)
  if 'patch_embed.proj.weight' not in tensors:
    shown = ', '.join(sorted(tensors)[:6]) + (', ...' if len(tensors) > 6 else '')
    raise ValueError(f"{path} is not a timm VisionTransformer state_dict (no "
                     f"'patch_embed.proj.weight'): it looks like {_what_else(tensors)}; "
                     f'its keys: {shown}')
  return tensors


def _layout(tensors) -> dict:
  """Sizes and features of a timm ViT state_dict; raises ValueError if it is not one."""
  if 'patch_embed.proj.weight' not in tensors:
    raise ValueError("not a timm ViT state_dict: no 'patch_embed.proj.weight'")
  proj = tensors['patch_embed.proj.weight']  # [D, C, P, P]
  depth = 0
  while f'blocks.{depth}.norm1.weight' in tensors:
    depth += 1
  fc1 = tensors.get('blocks.0.mlp.fc1.weight')
  pos = tensors.get('pos_embed')
  grid, has_cls_position = (None, False)
  if pos is not None:
    grid, has_cls_position = vit_npz.grid_and_class_position(int(pos.shape[1]))
  classifier = 'token' if 'cls_token' in tensors else 'gap'
  problems = []
  for pattern, what in _UNSUPPORTED:
    if any(re.match(pattern, k) for k in tensors):
      problems.append(what)
  if pos is None:
    problems.append('no learned position embeddings (pos_embed)')
  elif grid is None:
    problems.append(f'pos_embed has {pos.shape[1]} entries: not a square grid with or '
                    'without a class-token entry')
  elif has_cls_position and classifier == 'gap':
    problems.append('pos_embed has a class-token entry but there is no cls_token')
  if proj.shape[2] != proj.shape[3]:
    problems.append(f'non-square patches ({proj.shape[2]}x{proj.shape[3]})')
  head = tensors.get('head.weight')
  return dict(hidden=int(proj.shape[0]), channels=int(proj.shape[1]), patch=int(proj.shape[2]),
              depth=depth, mlp_dim=int(fc1.shape[0]) if fc1 is not None else 0, grid=grid,
              has_cls_position=has_cls_position, classifier=classifier,
              num_classes=int(head.shape[0]) if head is not None else None,
              pre_logits=any(k.startswith('pre_logits.') for k in tensors), problems=problems)


def architecture(tensors) -> str:
  """What the state_dict looks like, e.g. 'vit_b16 at 224x224 (1000 classes)'; '' if it
  is not a timm ViT."""
  try:
    lay = _layout(tensors)
  except ValueError:
    return ''
  notes = []
  if lay['classifier'] == 'gap':
    notes.append('global average pooling')
  if lay['pre_logits']:
    notes.append('a pre_logits layer (not loaded)')
  if lay['problems']:
    notes.append('not loadable: ' + '; '.join(lay['problems']))
  return vit_npz.describe(lay['hidden'], lay['depth'], lay['mlp_dim'], None, lay['patch'],
                          lay['grid'], lay['num_classes'], tuple(notes))


def model_kwargs(tensors) -> dict:
  """The VisionTransformer fields the state_dict fixes besides its sizes: num_classes (if
  it has a head), image_size (grid * patch), num_channels, classifier ('token' or 'gap')
  and approximate_gelu=False (timm's exact GELU). The sizes are the model name's or, for
  vit_custom, the caller's (see pretrained.vit_npz.model_kwargs); num_heads is not in
  the file at all.

  Raises ValueError if `tensors` are not a timm ViT state_dict.
  """
  lay = _layout(tensors)
  kwargs = {'num_channels': lay['channels'], 'classifier': lay['classifier'],
            'approximate_gelu': False}
  if lay['num_classes']:
    kwargs['num_classes'] = lay['num_classes']
  if lay['grid']:
    kwargs['image_size'] = lay['grid'] * lay['patch']
  return kwargs


def _split_heads(x: np.ndarray, heads: int, axis: int) -> np.ndarray:
  """Splits `axis` of size H * d into [H, d]; unchanged if it does not divide (so the
  mismatch is reported as a mis-shaped tensor)."""
  if x.shape[axis] % heads:
    return x
  return x.reshape(x.shape[:axis] + (heads, x.shape[axis] // heads) + x.shape[axis + 1:])


def to_variables(tensors, model, source: str) -> dict:
  """{'params': ...} for `model` (a nets.vit.VisionTransformer) from a timm ViT
  state_dict, float32 numpy in the structure of `model.init`.

  Conversions: Conv2d OIHW -> HWIO, Linear [out, in] -> Dense [in, out], the fused qkv
  split into thirds and each output axis into [model.num_heads, D / H], proj's input
  axis likewise, pos_embed split into the class position and the grid (module
  docstring). Use the model with approximate_gelu=False (model_kwargs) to compute what
  timm computes.

  Raises:
    ValueError: `model` is not a VisionTransformer, or `tensors` are not a timm ViT.
    mapping.WeightMismatchError: a feature the model cannot represent (module
      docstring), other pooling than model.classifier, or missing, extra or mis-shaped
      tensors (all listed, with what the file looks like).
  """
  lay = _layout(tensors)
  looks_like = architecture(tensors)
  if lay['problems']:
    raise mapping.WeightMismatchError(
        f'{source} cannot be loaded into nets.vit.VisionTransformer:\n  the file looks like '
        f'{looks_like}\n  it has ' + '\n  it has '.join(lay['problems']))
  vit_npz.check_model(model, lay['classifier'], looks_like, source)
  if lay['pre_logits']:
    logging.warning('%s: skipping pre_logits (a representation layer the model does not '
                    'have; timm drops it too): the loaded head is applied to features it '
                    "wasn't trained on: replace or fine-tune it", source)
  heads = model.num_heads
  linear = {'ln_attention': 'norm1', 'ln_mlp': 'norm2', 'Dense_0': 'mlp.fc1',
            'Dense_1': 'mlp.fc2'}

  def norm(name, leaf):
    return f'{name}.{"weight" if leaf == "scale" else "bias"}', mapping.identity

  def dense(name, leaf):
    if leaf == 'kernel':
      return f'{name}.weight', mapping.linear_to_dense
    return f'{name}.bias', mapping.identity

  def attention(block, part, leaf):
    if part == 'out':
      if leaf == 'kernel':  # [D_out, H * d] -> [H, d, D_out].
        return f'{block}.attn.proj.weight', lambda w: _split_heads(w.T, heads, 0)
      return f'{block}.attn.proj.bias', mapping.identity
    k = ('query', 'key', 'value').index(part)
    third = lambda x: x[k * (x.shape[0] // 3):(k + 1) * (x.shape[0] // 3)]
    if leaf == 'kernel':  # Rows k D ... (k + 1) D of [3D, D] -> [D, H, d].
      return f'{block}.attn.qkv.weight', lambda w: _split_heads(third(w).T, heads, 1)
    if f'{block}.attn.qkv.bias' not in tensors:  # qkv_bias=False.
      return f'{block}.attn.qkv.weight', lambda w: _split_heads(
          np.zeros(w.shape[0] // 3, np.float32), heads, 0)
    return f'{block}.attn.qkv.bias', lambda b: _split_heads(third(b), heads, 0)

  def rule(collection, path):
    del collection  # A ViT has 'params' only.
    if path == ('patch_embedding', 'kernel'):
      return 'patch_embed.proj.weight', mapping.oihw_to_hwio
    if path == ('patch_embedding', 'bias'):
      return 'patch_embed.proj.bias', mapping.identity
    if path == ('cls_token',):
      return 'cls_token', mapping.identity
    if path == ('pos_embedding',):
      return 'pos_embed', (lambda x: x[:, 1:]) if lay['has_cls_position'] else mapping.identity
    if path == ('cls_pos_embedding',):
      if lay['has_cls_position']:
        return 'pos_embed', lambda x: x[:, :1]
      return 'pos_embed', lambda x: np.zeros((1, 1, x.shape[-1]), np.float32)
    if path[0] == 'encoder_norm':
      return norm('norm', path[1])
    if path[0] == 'head':
      return dense('head', path[1])
    if path[0].startswith('encoder_block_'):
      block = f'blocks.{path[0][len("encoder_block_"):]}'
      if path[1] in ('ln_attention', 'ln_mlp'):
        return norm(f'{block}.{linear[path[1]]}', path[2])
      if path[1] == 'mlp':
        return dense(f'{block}.{linear[path[2]]}', path[3])
      if path[1] == 'attention':
        return attention(block, path[2], path[3])
    return f'<no timm name for {"/".join(path)}>', mapping.identity

  return mapping.convert(tensors, vit_npz.expected_for(model), rule, source=source,
                         ignore=lambda key: key.startswith('pre_logits.'),
                         looks_like=looks_like)
