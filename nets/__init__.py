"""Model registry: `nets.build(name, **overrides)` returns a linen Module.

A plain dict, so every name can be grepped; names follow `<family>_<variant>`.
"""

import difflib
import functools

import flax.linen as nn

from nets import darknet, mobilenet_v2, resnet, transformer, unet, vit, yolo

REGISTRY = {
    # ViT-<variant>/<patch>: Dosovitskiy et al. 2021, Table 1.
    **{f'vit_{v}{p}': functools.partial(vit.vit, v, p)
       for v in vit.VARIANTS for p in (4, 8, 14, 16, 32)},
    # A ViT with free hyper-parameters (hidden_size, num_layers, ... as overrides),
    # for small inputs such as 28x28 Fashion-MNIST or 32x32 CIFAR.
    'vit_custom': vit.VisionTransformer,
    # ResNet-<depth> (He et al. 2016) and its full pre-activation form (ResNet v2).
    **{f'resnet{d}': functools.partial(resnet.resnet, d) for d in resnet.DEPTHS},
    **{f'preact_resnet{d}': functools.partial(resnet.resnet, d, True) for d in resnet.DEPTHS},
    'mobilenet_v2': mobilenet_v2.MobileNetV2,  # Sandler et al. 2018.
    # Transformer encoder-decoder (Vaswani et al. 2017): transformer_base, _big, _g2p_*.
    **{f'transformer_{s}': functools.partial(transformer.transformer, s)
       for s in transformer.SIZES},
    # U-Net (Ronneberger et al. 2015) as the UNet++ papers' baseline ('same' padding, BN), and
    # UNet++ (Zhou et al. 2018 DLMIA; 2019 IEEE TMI) with deep supervision and pruning.
    'unet': unet.UNet,
    'unetpp': unet.UNetPlusPlus,
    # Darknet-53 (Redmon & Farhadi 2018, Table 1) and YOLOv3 (ibid., Sec. 2) on Darknet-53
    # or another backbone: yolov3_<backbone>, e.g. yolov3_mobilenet_v2, yolov3_resnet18.
    'darknet53': darknet.Darknet53,
    'yolov3': yolo.yolov3,
    **{f'yolov3_{b}': functools.partial(yolo.yolov3, b) for b in yolo.BACKBONES
       if b != 'darknet53'},
}


def build(name: str, **overrides) -> nn.Module:
  """Builds the model registered under `name` with keyword `overrides`.

  Raises:
    ValueError: unknown name (the message lists the valid names and close matches),
      or an override that is not a field of the model.
  """
  if name not in REGISTRY:
    close = difflib.get_close_matches(name, REGISTRY, n=3)
    hint = f' Did you mean {close}?' if close else ''
    raise ValueError(f'Unknown model {name!r}.{hint} Valid names: {sorted(REGISTRY)}')
  try:
    return REGISTRY[name](**overrides)
  except TypeError as e:
    raise ValueError(f'Bad options for model {name!r}: {e}') from e


def changes_computation(field: str) -> bool:
  """Whether model field `field` changes what trained weights compute, i.e. must be the
  same when weights are loaded or a run's checkpoint is predicted with. Not so:
  training-time regularisation (dropout, stochastic depth: inactive at inference),
  initialisation only (zero_init_last) and implementation choices (*_impl, e.g. the
  attention and depthwise cores, which compute the same values)."""
  return not (field.endswith('_impl') or 'dropout' in field or field.startswith('drop_path')
              or field == 'zero_init_last')
