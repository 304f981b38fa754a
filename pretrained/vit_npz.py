"""The original JAX ViT checkpoints (.npz) -> nets.vit.VisionTransformer.

An .npz checkpoint is a flat archive whose keys join the Flax parameter path with '/'
(vit_jax/checkpoint.py `load` rebuilds the tree by splitting on '/'). Two namings are
read; both were checked against the model code of their repositories and against
timm's reader of the same files (timm/models/vision_transformer.py `_load_weights`):

google-research/vision_transformer (vit_jax/models_vit.py; the paper's checkpoints
and the AugReg ones, gs://vit_models/...), possibly under 'opt/target/' (files saved
with a flax.optim optimizer):
  embedding/{kernel [P, P, C, D], bias [D]}          the patch embedding, HWIO as ours
  cls [1, 1, D]                                      the class token ('token' only)
  Transformer/posembed_input/pos_embedding [1, 1 + N, D]   added after the class token
      is prepended, so entry 0 is the class token's position (-> our cls_pos_embedding)
      and the rest the N = grid^2 patch positions (-> pos_embedding); [1, N, D] for
      classifier 'gap'
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_1/
      {query, key, value}/{kernel [D, H, D/H], bias [H, D/H]}, out/{kernel [H, D/H, D],
      bias [D]}, LayerNorm_2, MlpBlock_3/Dense_{0,1}   (Flax auto-names count every
      submodule of the block, hence 0 / 1 / 2 / 3)
  Transformer/encoder_norm/{scale, bias}, head/{kernel [D, classes], bias}
  pre_logits/{kernel, bias}   optional: the tanh representation layer of the
      ImageNet-21k checkpoints. The original fine-tuning code drops it whenever
      `representation_size` is None (vit_jax/checkpoint.py `load_pretrained`, the
      "drop-head variant"), and this model has no such layer, so it is skipped with a
      warning. The head is still loaded but was trained on tanh(pre_logits(x)), so its
      logits are not the checkpoint's: replace or fine-tune it.

google-research/big_vision (big_vision/models/vit.py), possibly under 'params/' (or
'params/img/', the image tower of a two-tower model; other trees such as the
optimizer state or a text tower are skipped):
  embedding, cls, head, Transformer/encoder_norm as above;
  pos_embedding [1, N, D] at the top level (older files: Transformer/pos_embedding):
      added BEFORE the class token is concatenated, so the class token has no position
      embedding. Our model adds cls_pos_embedding to the class token; it is generated
      as zeros, which computes exactly what big_vision computes. (A [1, 1 + N, D] table,
      big_vision's old "combined cls+posemb", is split as above.)
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_0,
      LayerNorm_1, MlpBlock_0   (per-type auto-names); or, for `scan=True` models,
      one Transformer/encoderblock/... whose arrays carry a leading depth axis.
  pool_type 'tok' (class token) and 'gap' map to our classifier 'token' and 'gap'.

Not representable, with a clear error: a MAP head (MAPHead_0, attention pooling), a
ResNet-stem hybrid (conv_root, R50+ViT), a file without learned position embeddings
(big_vision posemb='sincos2d'), and a checkpoint whose pooling differs from the
model's `classifier` (build the model with the one model_kwargs gives).

The model is the Flax original's (same LayerNorm epsilon 1e-6, tanh-approximate GELU:
approximate_gelu=True), so an imported checkpoint computes what it computed in JAX.
`describe`, `grid_and_class_position`, `check_model` and `expected_for` are shared with
pretrained/timm_vit.py.
"""

import dataclasses
import math
import os
import zipfile
from typing import Optional

from absl import logging
import numpy as np

import nets
from nets import vit
from pretrained import mapping

DESCRIPTION = ('original JAX ViT checkpoints (.npz): google-research/vision_transformer and '
               'big_vision naming')

_PREFIXES = ('', 'opt/target/', 'params/', 'params/img/')
_REGISTRY_PATCHES = (4, 8, 14, 16, 32)  # nets.REGISTRY has vit_<variant><patch> for these.


def supports(model_name: str) -> bool:
  """True for the ViT registry names (vit_<variant><patch>, vit_custom)."""
  return model_name.startswith('vit_') and model_name in nets.REGISTRY


def _what_file(path: str) -> str:
  """A guess at what a file that is not an .npz archive is, from its first bytes."""
  with open(path, 'rb') as f:
    head = f.read(9)
  if head.startswith(b'\x93NUMPY'):
    return 'a single .npy array, not an .npz archive of named arrays'
  if head[:1] == b'\x80':
    return 'a Python pickle (a legacy torch.save file?)'
  if len(head) == 9 and head[8:9] == b'{':
    return 'a safetensors file (read it with pretrained.timm_vit)'
  if not head:
    return 'an empty file'
  return 'neither an .npz nor a PyTorch or safetensors file'


def _as_float32(array: np.ndarray) -> np.ndarray:
  if array.dtype.kind == 'V' and array.dtype.itemsize == 2:
    # bfloat16 saved by numpy comes back as raw 2-byte voids.
    import ml_dtypes  # pylint: disable=import-outside-toplevel  (a jax dependency)
    array = array.view(ml_dtypes.bfloat16)
  return np.asarray(array, np.float32)


def read(path: str) -> dict[str, np.ndarray]:
  """The arrays of an .npz checkpoint by their '/'-joined names, float32 numpy.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not an .npz archive (the message says what it seems to be), or an .npz
      without a ViT patch embedding ('embedding/kernel' under one of the prefixes '',
      'opt/target/', 'params/', 'params/img/').
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path} is not an .npz archive: it looks like {_what_file(path)}')
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
  if any(n.endswith('data.pkl') for n in names):
    raise ValueError(f'{path} is a PyTorch checkpoint (torch.save zip), not an .npz '
                     f'archive; read it with pretrained.timm_vit (timm ViT) or '
                     f'pretrained.torchvision')
  with np.load(path, allow_pickle=False) as npz:
    arrays = {k: npz[k] for k in npz.files}
  # Non-numeric entries (e.g. a string of training metadata) are no weights.
  tensors = {k: _as_float32(v) for k, v in arrays.items() if v.dtype.kind not in 'SUO'}
  if _prefix(tensors) is None:
    shown = ', '.join(sorted(tensors)[:8]) + (', ...' if len(tensors) > 8 else '')
    raise ValueError(f'{path} is an .npz archive but not a ViT checkpoint: no '
                     f"'embedding/kernel' (with any of the prefixes {list(_PREFIXES[1:])}); "
                     f'its keys: {shown or "none"}')
  return tensors


def _prefix(tensors) -> Optional[str]:
  for prefix in _PREFIXES:
    if prefix + 'embedding/kernel' in tensors:
      return prefix
  return None


def grid_and_class_position(length: int) -> tuple[Optional[int], bool]:
  """A position table of `length` entries -> (grid side, has a class-token entry first);
  (None, False) if neither length nor length - 1 is a square."""
  for has_cls, n in ((False, length), (True, length - 1)):
    side = math.isqrt(max(n, 0))
    if n > 0 and side * side == n:
      return side, has_cls
  return None, False


def describe(hidden: int, depth: int, mlp_dim: int, num_heads: Optional[int], patch: int,
             grid: Optional[int], num_classes: Optional[int],
             notes: tuple[str, ...] = ()) -> str:
  """A ViT with these sizes as its registry name plus details, e.g. 'vit_b16 at 224x224
  (21843 classes)' or 'vit_custom (hidden 64, 2 layers, mlp 256, 4 heads, patch 4) at
  32x32 (10 classes)', then `notes`. num_heads None (not stored, e.g. timm's fused qkv)
  matches a variant by the other sizes."""
  name = 'vit_custom'
  for variant, sizes in vit.VARIANTS.items():
    if ((sizes['hidden_size'], sizes['num_layers'], sizes['mlp_dim']) == (hidden, depth, mlp_dim)
        and num_heads in (None, sizes['num_heads']) and patch in _REGISTRY_PATCHES):
      name = f'vit_{variant}{patch}'
  text = name
  if name == 'vit_custom':
    heads = f'{num_heads} heads' if num_heads else 'heads not stored'
    text += f' (hidden {hidden}, {depth} layers, mlp {mlp_dim}, {heads}, patch {patch})'
  if grid:
    text += f' at {grid * patch}x{grid * patch}'
  text += f' ({num_classes} classes)' if num_classes else ' (no classification head)'
  return text + ''.join(f', {n}' for n in notes)


@dataclasses.dataclass
class _Layout:
  """Where a checkpoint keeps what, and what it looks like."""
  prefix: str
  scanned: bool          # One Transformer/encoderblock with a leading depth axis.
  depth: int
  sub: dict              # Our block submodule -> its auto-name in the file.
  pos_key: Optional[str]
  grid: Optional[int]
  has_cls_position: bool
  classifier: str        # 'token' or 'gap'.
  hidden: int
  patch: int
  channels: int
  mlp_dim: int
  num_heads: int
  num_classes: Optional[int]
  pre_logits: bool
  problems: list         # Why nets.vit.VisionTransformer cannot hold it; [] if it can.


def _layout(tensors) -> _Layout:
  """Raises ValueError if `tensors` are not a ViT .npz checkpoint."""
  p = _prefix(tensors)
  if p is None:
    raise ValueError("not a ViT .npz checkpoint: no 'embedding/kernel'")
  kernel = tensors[p + 'embedding/kernel']
  if kernel.ndim != 4:
    raise ValueError(f'{p}embedding/kernel has shape {list(kernel.shape)}, expected '
                     f'[patch, patch, channels, hidden]')
  scanned = p + 'Transformer/encoderblock/LayerNorm_0/scale' in tensors
  if scanned:
    block = p + 'Transformer/encoderblock/'
    depth = int(tensors[block + 'LayerNorm_0/scale'].shape[0])
  else:
    block = p + 'Transformer/encoderblock_0/'
    depth = 0
    while f'{p}Transformer/encoderblock_{depth}/LayerNorm_0/scale' in tensors:
      depth += 1
  # vision_transformer numbers all submodules of a block, big_vision each type apart.
  original = block + 'MultiHeadDotProductAttention_1/query/kernel' in tensors
  sub = ({'ln_attention': 'LayerNorm_0', 'attention': 'MultiHeadDotProductAttention_1',
          'ln_mlp': 'LayerNorm_2', 'mlp': 'MlpBlock_3'} if original else
         {'ln_attention': 'LayerNorm_0', 'attention': 'MultiHeadDotProductAttention_0',
          'ln_mlp': 'LayerNorm_1', 'mlp': 'MlpBlock_0'})
  query = tensors.get(f'{block}{sub["attention"]}/query/kernel')
  dense0 = tensors.get(f'{block}{sub["mlp"]}/Dense_0/kernel')
  num_heads = int(query.shape[-2]) if query is not None and query.ndim >= 3 else 0
  mlp_dim = int(dense0.shape[-1]) if dense0 is not None else 0

  pos_key = next((p + k for k in ('Transformer/posembed_input/pos_embedding',
                                  'Transformer/pos_embedding', 'pos_embedding')
                  if p + k in tensors), None)
  grid, has_cls_position = (None, False)
  if pos_key is not None:
    grid, has_cls_position = grid_and_class_position(int(tensors[pos_key].shape[1]))
  classifier = 'token' if p + 'cls' in tensors else 'gap'
  head = tensors.get(p + 'head/bias')

  problems = []
  if any(k.startswith(p + 'MAPHead_0/') for k in tensors):
    problems.append('it pools with a MAP head (MAPHead_0: attention pooling, big_vision '
                    "pool_type='map'); the model pools with the class token or the mean")
  if p + 'conv_root/kernel' in tensors:
    problems.append('it is a ResNet-stem hybrid (conv_root, e.g. R50+ViT-B/16); the model '
                    'embeds raw patches')
  if pos_key is None:
    problems.append('it has no learned position embeddings (big_vision '
                    "posemb='sincos2d'?); the model learns them")
  elif grid is None:
    problems.append(f'{pos_key} has {tensors[pos_key].shape[1]} entries: not a square grid '
                    'with or without a class-token entry')
  elif has_cls_position and classifier == 'gap':
    problems.append(f'{pos_key} has a class-token entry but the file has no class token '
                    f"('{p}cls')")
  if kernel.shape[0] != kernel.shape[1]:
    problems.append(f'its patches are not square ({kernel.shape[0]}x{kernel.shape[1]})')
  return _Layout(prefix=p, scanned=scanned, depth=depth, sub=sub, pos_key=pos_key, grid=grid,
                 has_cls_position=has_cls_position, classifier=classifier,
                 hidden=int(kernel.shape[-1]), patch=int(kernel.shape[0]),
                 channels=int(kernel.shape[2]), mlp_dim=mlp_dim, num_heads=num_heads,
                 num_classes=int(head.shape[-1]) if head is not None else None,
                 pre_logits=p + 'pre_logits/kernel' in tensors, problems=problems)


def _notes(layout: _Layout) -> tuple[str, ...]:
  notes = ['big_vision naming' if layout.sub['attention'].endswith('_0')
           else 'vision_transformer naming']
  if layout.scanned:
    notes.append('scanned blocks')
  if layout.classifier == 'gap':
    notes.append('global average pooling')
  if layout.pre_logits:
    notes.append('a pre_logits representation layer (not loaded)')
  if layout.problems:
    notes.append('not loadable: ' + '; '.join(layout.problems))
  return tuple(notes)


def architecture(tensors) -> str:
  """What the checkpoint looks like, e.g. 'vit_b16 at 224x224 (21843 classes),
  vision_transformer naming, a pre_logits representation layer (not loaded)';
  '' if it is not a ViT .npz checkpoint."""
  try:
    layout = _layout(tensors)
  except ValueError:
    return ''
  return describe(layout.hidden, layout.depth, layout.mlp_dim, layout.num_heads, layout.patch,
                  layout.grid, layout.num_classes, _notes(layout))


def model_kwargs(tensors) -> dict:
  """The VisionTransformer fields the checkpoint fixes besides its sizes: num_classes (if
  it has a head), image_size (grid * patch, if it has learned position embeddings),
  num_channels, classifier ('token' or 'gap') and approximate_gelu=True (the Flax
  original's GELU). The sizes (patch, width, depth, MLP, heads) are the model name's
  (vit_b16, ...; `architecture` names the one the file has) or, for vit_custom, the
  caller's: a field given twice would clash with a named variant's.

  Raises ValueError if `tensors` are not a ViT .npz checkpoint.
  """
  layout = _layout(tensors)
  kwargs = {'num_channels': layout.channels, 'classifier': layout.classifier,
            'approximate_gelu': True}
  if layout.num_classes:
    kwargs['num_classes'] = layout.num_classes
  if layout.grid:
    kwargs['image_size'] = layout.grid * layout.patch
  return kwargs


def check_model(model, layout_classifier: str, looks_like: str, source: str) -> None:
  """Raises ValueError unless `model` is a VisionTransformer with the file's pooling."""
  if not isinstance(model, vit.VisionTransformer):
    raise ValueError(f'{source} holds a ViT ({looks_like}); the model is a '
                     f'{type(model).__name__}')
  if model.classifier != layout_classifier:
    kind = 'a class token' if layout_classifier == 'token' else 'no class token'
    raise mapping.WeightMismatchError(
        f'{source} does not fit the model:\n  the file looks like {looks_like}\n  it has '
        f"{kind} (classifier={layout_classifier!r}) but the model has classifier="
        f"{model.classifier!r}; build it with classifier={layout_classifier!r}")


def expected_for(model) -> dict:
  """The variables of a VisionTransformer at its own resolution (shapes only)."""
  side = max(model.image_size // model.patch_size, 1) * model.patch_size
  return mapping.expected_variables(model, np.zeros((1, side, side, model.num_channels),
                                                    np.float32))


def to_variables(tensors, model, source: str) -> dict:
  """{'params': ...} for `model` (a nets.vit.VisionTransformer) from a ViT .npz
  checkpoint, float32 numpy in the structure of `model.init`.

  Everything keeps its layout (Flax to Flax) except the position table, which is
  split into cls_pos_embedding [1, 1, D] and pos_embedding [1, N, D] (a table without
  a class-token entry gives cls_pos_embedding = 0, see the module docstring), and the
  blocks of a scanned checkpoint, which are sliced off the leading depth axis.
  Keys outside the checkpoint's prefix (optimizer state, another tower) are skipped;
  pre_logits is skipped with a warning.

  Raises:
    ValueError: `model` is not a VisionTransformer, or `tensors` are not a ViT .npz
      checkpoint.
    mapping.WeightMismatchError: a checkpoint the model cannot represent (MAP head,
      hybrid, other pooling than model.classifier), or missing, extra or mis-shaped
      tensors (all listed, with what the file looks like).
  """
  layout = _layout(tensors)
  looks_like = architecture(tensors)
  if layout.problems:
    raise mapping.WeightMismatchError(
        f'{source} cannot be loaded into nets.vit.VisionTransformer:\n  the file looks like '
        f'{looks_like}\n  ' + '\n  '.join(layout.problems))
  check_model(model, layout.classifier, looks_like, source)
  p = layout.prefix
  outside = sum(not k.startswith(p) for k in tensors)
  if outside:
    logging.info('%s: skipping %d arrays outside %r (optimizer state, other towers)',
                 source, outside, p)
  if layout.pre_logits:
    logging.warning(
        '%s: skipping %spre_logits (the tanh representation layer of the pre-training '
        'head), as the original fine-tuning code does with representation_size=None; the '
        "model has no such layer, so the loaded head is applied to features it wasn't "
        'trained on: replace or fine-tune it', source, p)
  depth = model.num_layers

  def block_key(i: int, name: str):
    if not layout.scanned:
      return f'{p}Transformer/encoderblock_{i}/{name}', mapping.identity
    # A file of another depth keeps the whole stack, so the mismatch is reported.
    return (f'{p}Transformer/encoderblock/{name}',
            lambda x: x[i] if x.shape[0] == depth else x)

  def rule(collection, path):
    del collection  # A ViT has 'params' only.
    top = {('patch_embedding', 'kernel'): 'embedding/kernel',
           ('patch_embedding', 'bias'): 'embedding/bias', ('cls_token',): 'cls',
           ('encoder_norm', 'scale'): 'Transformer/encoder_norm/scale',
           ('encoder_norm', 'bias'): 'Transformer/encoder_norm/bias',
           ('head', 'kernel'): 'head/kernel', ('head', 'bias'): 'head/bias'}
    if path in top:
      return p + top[path], mapping.identity
    if path == ('pos_embedding',):
      return layout.pos_key, (lambda x: x[:, 1:]) if layout.has_cls_position else mapping.identity
    if path == ('cls_pos_embedding',):
      if layout.has_cls_position:
        return layout.pos_key, lambda x: x[:, :1]
      return layout.pos_key, lambda x: np.zeros((1, 1, x.shape[-1]), np.float32)
    if path[0].startswith('encoder_block_') and len(path) >= 3:
      i = int(path[0][len('encoder_block_'):])
      return block_key(i, '/'.join((layout.sub.get(path[1], path[1]),) + path[2:]))
    return f'<no rule for {"/".join(path)}>', mapping.identity

  def ignore(key: str) -> bool:
    return not key.startswith(p) or key.startswith(p + 'pre_logits/')

  return mapping.convert(tensors, expected_for(model), rule, source=source, ignore=ignore,
                         looks_like=looks_like)
