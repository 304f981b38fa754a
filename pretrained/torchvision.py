"""torchvision ImageNet classifiers (ResNet-18/34/50/101/152 and MobileNetV2, any width
multiplier) from their PyTorch `state_dict`s, saved as .pth / .pt or .safetensors.

Sources of the layouts: torchvision `models/resnet.py` (`conv1, bn1, layer{1-4}.{j}.
conv{1,2,3} / bn{1,2,3} / downsample.{0,1}, fc`) and `models/mobilenetv2.py`
(`features.0` the stem, `features.{1-17}.conv` the inverted residual blocks,
`features.18` the 1x1 conv to 1280, `classifier.1` the Linear layer), as listed by
`model.state_dict().keys()`.

Our models compute what torchvision's do with the same weights, which rests on:
  * BatchNorm epsilon 1e-5 (PyTorch's default, nets/layers.BN_EPSILON); BatchNorm2d
    weight -> scale, bias -> bias, running_mean -> mean, running_var -> var;
    `num_batches_tracked` only drives a momentum schedule PyTorch does not use by
    default, so it is known and not loaded;
  * convolutions padded symmetrically by k // 2 (nets/layers.Conv, not Flax's 'SAME',
    which pads stride-2 convolutions asymmetrically) and the 3x3/2 max-pool padded by 1;
  * ResNet v1.5: the stride of a bottleneck block sits on its 3x3 convolution;
  * MobileNetV2 channels rounded by the same `make_divisible`; ReLU6; dropout before the
    classifier (inactive at evaluation).
Pre-activation ResNets have no torchvision counterpart (`supports` is False for them).
Inputs must be normalised as torchvision's were trained with: RGB in [0, 1], minus mean
(0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225).

Layouts: PyTorch Conv2d kernels [out, in / groups, kh, kw] -> Flax [kh, kw, in / groups,
out] (a depthwise [C, 1, 3, 3] -> [3, 3, 1, C]); Linear [out, in] -> Dense [in, out].
"""

import os
import re
import struct
import zipfile
from typing import Mapping

import numpy as np

from nets import mobilenet_v2, resnet
from pretrained import mapping

DESCRIPTION = ('torchvision ResNet-18/34/50/101/152 and MobileNetV2 state_dicts '
               '(.pth / .pt via torch, or .safetensors)')

_RESNETS = {f'resnet{d}': d for d in resnet.DEPTHS}
_BN = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
# Common MobileNetV2 width multipliers, tried in this order when recognising a file.
_MOBILENET_WIDTHS = (1.0, 0.5, 0.75, 0.35, 1.3, 1.4, 0.25)


def supports(model_name: str) -> bool:
  """True for 'resnet18' ... 'resnet152' and 'mobilenet_v2' (not preact_resnet*)."""
  return model_name in _RESNETS or model_name == 'mobilenet_v2'


# --- Reading ---------------------------------------------------------------------------

def _sniff(path: str) -> str:
  """'torch', 'safetensors', or a ValueError naming what the file seems to be."""
  with open(path, 'rb') as f:
    head = f.read(16)
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
    if any(n.endswith('data.pkl') for n in names):
      return 'torch'  # torch.save since PyTorch 1.6: a zip with <name>/data.pkl.
    if names and all(n.endswith('.npy') for n in names):
      raise ValueError(f'{path} is a NumPy .npz archive, not a torchvision state_dict (an '
                       'original JAX ViT checkpoint is read by the vit format)')
    raise ValueError(f'{path} is a zip archive without a PyTorch data.pkl '
                     f'(members: {names[:5]})')
  if head[:1] == b'\x80':
    return 'torch'  # The legacy torch.save format: a bare pickle.
  if len(head) >= 9 and head[8:9] == b'{':
    header_size = struct.unpack('<Q', head[:8])[0]
    if 0 < header_size < os.path.getsize(path):
      return 'safetensors'
  if head[:4] == b'\x89HDF':
    raise ValueError(f'{path} is an HDF5 file (e.g. Keras weights), not a torchvision '
                     'state_dict')
  raise ValueError(f'{path} is neither a PyTorch (.pth / .pt) nor a .safetensors file '
                   f'(it starts with {head[:8]!r})')


def _load_torch(path: str) -> Mapping:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f'Reading {path} needs PyTorch: install the CPU wheel (pip install torch '
        '--index-url https://download.pytorch.org/whl/cpu) or convert the file to '
        '.safetensors elsewhere (safetensors.torch.save_file(state_dict, ...))') from e
  try:
    # weights_only: tensors and plain containers only, no arbitrary code from the pickle.
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path} could not be read as a weights-only PyTorch file ({e}); a '
                     'whole pickled nn.Module cannot be loaded safely: save '
                     'model.state_dict() instead') from e
  if isinstance(obj, Mapping):
    for wrapper in ('state_dict', 'model'):  # Training-script checkpoints.
      if isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f'{path} holds {type(obj).__name__}, not a non-empty state_dict')
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f'{path} is not a state_dict: {key!r} is of type {type(value).__name__}, '
                       f'not a tensor (top-level keys: {list(obj)[:10]})')
    out[key] = value.detach().to(torch.float32).numpy()
  return out


def _load_safetensors(path: str) -> Mapping:
  try:
    import ml_dtypes  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    # (registers numpy's bfloat16, which bf16 files need)
    from safetensors import numpy as safetensors_numpy  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f'Reading {path} needs the safetensors package: pip install '
                      'safetensors') from e
  return safetensors_numpy.load_file(path)


def read(path: str) -> dict[str, np.ndarray]:
  """The tensors of a torchvision state_dict file, by their PyTorch names.

  Args:
    path: a torch.save file (.pth / .pt; a dict of tensors, or a checkpoint dict with the
      state_dict under 'state_dict' or 'model'; torch is imported only for these) or a
      .safetensors file. The format is recognised from the contents, not the suffix.
  Returns:
    {name: float32 numpy array} (integer tensors such as num_batches_tracked converted
    too); a 'module.' prefix on every key (DistributedDataParallel) is removed.
  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a PyTorch state_dict / safetensors file (the message says
      what it seems to be).
    ImportError: torch (for .pth) or safetensors is not installed.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No weight file {path}')
  loaded = _load_torch(path) if _sniff(path) == 'torch' else _load_safetensors(path)
  tensors = {key: np.array(value, np.float32) for key, value in loaded.items()}
  if tensors and all(key.startswith('module.') for key in tensors):
    tensors = {key[len('module.'):]: value for key, value in tensors.items()}
  return tensors


# --- Recognising -----------------------------------------------------------------------

def _resnet_layout(tensors) -> tuple:
  """(blocks per layer, 'basic' | 'bottleneck') of a torchvision ResNet state_dict."""
  blocks = []
  for i in range(1, 5):
    found = {int(m.group(1)) for k in tensors if (m := re.match(rf'layer{i}\.(\d+)\.', k))}
    blocks.append(max(found) + 1 if found else 0)
  kind = 'bottleneck' if 'layer1.0.conv3.weight' in tensors else 'basic'
  return tuple(blocks), kind


def _mobilenet_channels(width: float) -> list[int]:
  """Stem, every row's output and the last conv's channels of MobileNetV2 at `width`."""
  make = mobilenet_v2.make_divisible
  return ([make(32 * width)] + [make(c * width) for _, c, _, _ in
                                 mobilenet_v2.INVERTED_RESIDUAL_SETTING]
          + [make(1280 * max(1.0, width))])


def _mobilenet_block_indices() -> dict[str, tuple[int, int]]:
  """Our block name 'block{row}_{repeat}' -> (torchvision features index, expansion t)."""
  out, index = {}, 1
  for row, (t, _, n, _) in enumerate(mobilenet_v2.INVERTED_RESIDUAL_SETTING):
    for j in range(n):
      out[f'block{row + 1}_{j + 1}'] = (index, t)
      index += 1
  return out


_MOBILENET_BLOCKS = _mobilenet_block_indices()
_MOBILENET_LAST = 1 + len(_MOBILENET_BLOCKS)  # features.18


def _mobilenet_width(tensors) -> float:
  """The width multiplier whose channel counts the file has (stem channels / 32 if none
  of the common ones fits)."""
  keys = ['features.0.0.weight', f'features.{_MOBILENET_LAST}.0.weight']
  for row, (*_, n, _) in enumerate(mobilenet_v2.INVERTED_RESIDUAL_SETTING):
    keys.insert(-1, _mobilenet_rule('params', (f'block{row + 1}_{n}', 'project', 'conv',
                                               'kernel'))[0])
  found = [tensors[k].shape[0] if k in tensors else None for k in keys]
  for width in _MOBILENET_WIDTHS:
    if found == _mobilenet_channels(width):
      return width
  return found[0] / 32


def architecture(tensors: Mapping[str, np.ndarray]) -> str:
  """What the tensors look like: e.g. 'resnet50 (1000 classes)', 'mobilenet_v2 (width
  multiplier 0.5, 10 classes)', a description of a torchvision ResNet variant that
  nets/ has no counterpart for, or '' if not a torchvision ResNet / MobileNetV2."""
  if 'conv1.weight' in tensors and 'layer1.0.conv1.weight' in tensors:
    blocks, kind = _resnet_layout(tensors)
    classes = (f'{tensors["fc.weight"].shape[0]} classes' if 'fc.weight' in tensors
               else 'no classifier')
    depths = [d for d, layout in resnet.DEPTHS.items() if layout == (blocks, kind)]
    if not depths:
      return f'a ResNet with {kind} blocks {list(blocks)} ({classes})'
    depth = depths[0]
    stem, branch = tensors['conv1.weight'].shape, tensors['layer1.0.conv1.weight'].shape
    conv2 = tensors['layer1.0.conv2.weight'].shape if 'layer1.0.conv2.weight' in tensors else None
    if conv2 is not None and conv2[1] != conv2[0]:  # Grouped 3x3 convolutions.
      return (f'torchvision resnext{depth}_{conv2[0] // conv2[1]}x{conv2[1]}d (no ResNeXt in '
              f'nets/; {classes})')
    if kind == 'bottleneck' and branch[0] != stem[0]:  # Wider bottlenecks, same outputs.
      return (f'torchvision wide_resnet{depth}_{branch[0] // stem[0]} (no wide ResNet in '
              f'nets/; {classes})')
    stem_note = ('' if stem[0] == 64 and stem[2] == 7
                 else f'{stem[2]}x{stem[3]} stem conv with {stem[0]} channels, ')
    return f'resnet{depth} ({stem_note}{classes})'
  if 'features.0.0.weight' in tensors and 'features.1.conv.0.0.weight' in tensors:
    classes = (f'{tensors["classifier.1.weight"].shape[0]} classes'
               if 'classifier.1.weight' in tensors else 'no classifier')
    if f'features.{_MOBILENET_LAST}.0.weight' not in tensors:
      return f'a MobileNet other than torchvision mobilenet_v2 ({classes})'
    return f'mobilenet_v2 (width multiplier {_mobilenet_width(tensors)}, {classes})'
  return ''


def model_kwargs(tensors: Mapping[str, np.ndarray]) -> dict:
  """{'num_classes': n} from the classifier's weight; {} without one. The depth / width
  multiplier is the model name's / config's to choose; a different one in the file
  shows up as a WeightMismatchError that says what the file looks like."""
  for key in ('fc.weight', 'classifier.1.weight'):
    if key in tensors:
      return {'num_classes': int(tensors[key].shape[0])}
  return {}


# --- Converting ------------------------------------------------------------------------

def _bn_or_conv(prefix_conv: str, prefix_bn: str, path: tuple) -> tuple:
  """A ConvBN's ('conv', 'kernel') or ('bn', stat) -> torchvision key and transform."""
  if path[0] == 'conv':
    return f'{prefix_conv}.weight', mapping.oihw_to_hwio
  return f'{prefix_bn}.{_BN[path[1]]}', mapping.identity


def _head(path: tuple, linear: str) -> tuple:
  if path[1] == 'kernel':
    return f'{linear}.weight', mapping.linear_to_dense
  return f'{linear}.bias', mapping.identity


def _resnet_rule(collection: str, path: tuple) -> tuple:
  """Our ResNet variable -> torchvision key (see the module docstring)."""
  top = path[0]
  if top == 'stem':
    return _bn_or_conv('conv1', 'bn1', path[1:])
  if top == 'head':
    return _head(path, 'fc')
  m = re.fullmatch(r'stage(\d+)_block(\d+)', top)
  if m is None:
    return f'<no torchvision name for {"/".join(path)}>', mapping.identity
  block = f'layer{m.group(1)}.{int(m.group(2)) - 1}'
  if path[1] == 'projection':
    return _bn_or_conv(f'{block}.downsample.0', f'{block}.downsample.1', path[2:])
  k = int(path[1][len('conv_bn'):]) + 1
  return _bn_or_conv(f'{block}.conv{k}', f'{block}.bn{k}', path[2:])


def _mobilenet_rule(collection: str, path: tuple) -> tuple:
  """Our MobileNetV2 variable -> torchvision key (see the module docstring)."""
  top = path[0]
  if top == 'stem':
    return _bn_or_conv('features.0.0', 'features.0.1', path[1:])
  if top == 'head_conv':
    return _bn_or_conv(f'features.{_MOBILENET_LAST}.0', f'features.{_MOBILENET_LAST}.1',
                       path[1:])
  if top == 'head':
    return _head(path, 'classifier.1')
  if top not in _MOBILENET_BLOCKS:
    return f'<no torchvision name for {"/".join(path)}>', mapping.identity
  index, t = _MOBILENET_BLOCKS[top]
  conv = f'features.{index}.conv'
  first = 0 if t == 1 else 1  # Blocks with t = 1 have no expansion conv.
  if path[1] == 'expand':  # Conv2dNormActivation: .0 conv, .1 BN.
    return _bn_or_conv(f'{conv}.0.0', f'{conv}.0.1', path[2:])
  if path[1] == 'depthwise':
    return _bn_or_conv(f'{conv}.{first}.0', f'{conv}.{first}.1', path[2:])
  # The linear projection: a bare Conv2d and BatchNorm2d in the block's Sequential.
  return _bn_or_conv(f'{conv}.{first + 1}', f'{conv}.{first + 2}', path[2:])


def to_variables(tensors: Mapping[str, np.ndarray], model, source: str) -> dict:
  """The variables of `model` (a post-activation nets.resnet.ResNet or a nets.mobilenet_v2.
  MobileNetV2, any stem, num_classes and MobileNetV2 width) from torchvision `tensors`.

  With `features_only` the model has no classifier: the file's classifier (fc /
  features.18 and classifier.1) is then deliberately not loaded.

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays matching
    `model.init`'s variables, e.g. params stem/conv/kernel [7, 7, 3, 64].
  Raises:
    ValueError: a model this format cannot fill (a pre-activation ResNet, another family).
    mapping.WeightMismatchError: missing, extra or mis-shaped tensors (the message also
      says what the file looks like).
  """
  headless = bool(getattr(model, 'features_only', False))
  if isinstance(model, resnet.ResNet):
    if model.preact:
      raise ValueError('torchvision has no pre-activation ResNet; its weights fit the '
                       'post-activation resnet18 ... resnet152 only')
    rule = _resnet_rule
    head = lambda key: key.startswith('fc.')
  elif isinstance(model, mobilenet_v2.MobileNetV2):
    rule = _mobilenet_rule
    head = lambda key: key.startswith((f'features.{_MOBILENET_LAST}.', 'classifier.'))
  else:
    raise ValueError(f'The torchvision format fills ResNet and MobileNetV2 models, not '
                     f'{type(model).__name__}')
  images = np.zeros((1, 224, 224, model.num_channels), np.float32)
  expected = mapping.expected_variables(model, images)
  ignore = lambda key: key.endswith('num_batches_tracked') or (headless and head(key))
  looks_like = architecture(tensors) or (
      f'neither a torchvision ResNet nor a MobileNetV2 (its first keys: {list(tensors)[:3]})')
  return mapping.convert(tensors, expected, rule, source=source, ignore=ignore,
                         looks_like=looks_like)
