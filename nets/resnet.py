"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition") and the
full pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual
Networks", Fig. 4(e), "ResNet v2").

Layout of the reference implementations (torchvision `resnet*`), so the parameter
counts at 224x224 with 1000 classes are theirs: ResNet-18 11,689,512; -34 21,797,672;
-50 25,557,032; -101 44,549,160; -152 60,192,808.

  stem  'imagenet': 7x7/2 conv (64) -> BN -> ReLU -> 3x3/2 max-pool  (Table 1, conv1)
        'cifar':    3x3/1 conv (64) -> BN -> ReLU   (for 32x32 inputs; the ImageNet body
                    with a 3x3/1 stem, as common CIFAR ResNet-18 code does, not the
                    16-channel, 3-stage nets of Sec. 4.2)
  4 stages of residual blocks, widths w, 2w, 4w, 8w (w = `width`, 64 in the paper);
  the first block of stages 2-4 downsamples by 2 with a 1x1/2 projection shortcut
  (option B, Sec. 3.3) -> global average pool -> fully connected.

Bottleneck blocks (ResNet-50/101/152) are "v1.5": the stride sits on the 3x3
convolution, not on the first 1x1 (torchvision; Goyal et al. 2017 use the same).

Pre-activation blocks order each branch BN -> ReLU -> conv; a projection shortcut
takes the pre-activated input; the stem has no BN/ReLU after its convolution (the
first block pre-activates it) and a final BN -> ReLU precedes the pooling.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import layers

# Blocks per stage (He et al. 2016, Table 1) and block type.
DEPTHS = {
    18: ((2, 2, 2, 2), 'basic'),
    34: ((3, 4, 6, 3), 'basic'),
    50: ((3, 4, 6, 3), 'bottleneck'),
    101: ((3, 4, 23, 3), 'bottleneck'),
    152: ((3, 8, 36, 3), 'bottleneck'),
}
EXPANSION = {'basic': 1, 'bottleneck': 4}   # Block output channels / block width.
STEMS = ('imagenet', 'cifar')


class ResidualBlock(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1 -> 3x3 -> 1x1, x4 expansion) residual block.

  Attributes:
    width: channels of the 3x3 convolution(s); the output has width * EXPANSION[kind].
    kind: 'basic' or 'bottleneck'.
    strides: stride of the (first, for basic) 3x3 convolution.
    preact: full pre-activation ordering (BN -> ReLU -> conv) without a final ReLU.
    zero_init_last: start the branch at zero: last BN scale = 0 (post-activation) or
      last conv kernel = 0 (pre-activation), so each block starts as the identity.
    axis_name: pmap axis for synchronised BatchNorm (None under jit).
  """
  width: int
  kind: str = 'basic'
  strides: int = 1
  preact: bool = False
  zero_init_last: bool = False
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x: [batch, h, w, c_in] -> [batch, h / strides, w / strides, width * expansion]."""
    out_features = self.width * EXPANSION[self.kind]
    if self.kind == 'basic':  # (features, kernel, stride) of each convolution.
      convs = [(self.width, 3, self.strides), (out_features, 3, 1)]
    else:
      convs = [(self.width, 1, 1), (self.width, 3, self.strides), (out_features, 1, 1)]
    needs_projection = self.strides != 1 or x.shape[-1] != out_features
    norm = functools.partial(layers.batch_norm, train=train, axis_name=self.axis_name,
                             dtype=self.dtype)

    if self.preact:
      y = nn.relu(norm(name='bn0')(x))
      shortcut = layers.Conv(out_features, 1, self.strides, dtype=self.dtype,
                             name='projection')(y) if needs_projection else x
      for i, (features, kernel, strides) in enumerate(convs):
        if i > 0:
          y = nn.relu(norm(name=f'bn{i}')(y))
        last = i == len(convs) - 1
        init = nn.initializers.zeros if (last and self.zero_init_last) else layers.conv_kernel_init
        y = layers.Conv(features, kernel, strides, kernel_init=init, dtype=self.dtype,
                        name=f'conv{i}')(y)
      return y + shortcut

    y = x
    for i, (features, kernel, strides) in enumerate(convs):
      last = i == len(convs) - 1
      y = layers.ConvBN(features, kernel, strides, activation=None if last else nn.relu,
                        zero_init_scale=last and self.zero_init_last, axis_name=self.axis_name,
                        dtype=self.dtype, name=f'conv_bn{i}')(y, train=train)
    shortcut = x
    if needs_projection:
      shortcut = layers.ConvBN(out_features, 1, self.strides, activation=None,
                               axis_name=self.axis_name, dtype=self.dtype,
                               name='projection')(x, train=train)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet / pre-activation ResNet classifier.

  Attributes:
    num_classes: outputs of the final fully connected layer.
    depth: 18, 34, 50, 101 or 152 (see DEPTHS), unless `stage_sizes` is given.
    stage_sizes: blocks per stage (overrides the depth's); `block` then picks the kind.
    block: 'basic' or 'bottleneck' with `stage_sizes` ('' = the depth's).
    width: channels of the first stage (64 in the paper); stage i has width * 2^i.
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool, total stride 32) or 'cifar'
      (3x3/1 conv, total stride 8).
    preact: full pre-activation blocks (ResNet v2).
    features_only: return feature maps instead of logits: the last `num_features` of
      (C1, C2, C3, C4, C5), C1 the stem's output before its max-pool and C2..C5 the
      stages' (strides 2, 4, 8, 16, 32 with the ImageNet stem); the default 3 gives C3,
      C4, C5 for the YOLOv3 head, 5 gives all levels for a UNet++ encoder.
    num_features: how many feature levels `features_only` returns, 1..stages + 1.
    zero_init_last: zero-initialise the last BN scale (last conv in v2) of every block.
    num_channels: input channels (checked).
    axis_name: pmap axis for synchronised BatchNorm; the pmap engine sets 'data'.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
  """
  num_classes: int
  depth: int = 50
  stage_sizes: Optional[Sequence[int]] = None
  block: str = ''
  width: int = 64
  stem: str = 'imagenet'
  preact: bool = False
  features_only: bool = False
  num_features: int = 3
  zero_init_last: bool = False
  num_channels: int = 3
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """images: [batch, height, width, num_channels] float -> logits [batch, num_classes]
    float32, or with features_only the last `num_features` feature levels (C3, C4, C5
    by default), each [batch, h_i, w_i, c_i] in `dtype`.

    Raises ValueError for an unknown depth/stem/block, a wrong channel count, images
    smaller than the total stride (32 for the ImageNet stem, 8 for the CIFAR stem), or
    num_features outside 1..stages + 1.
    """
    if self.stem not in STEMS:
      raise ValueError(f'Unknown stem {self.stem!r}; valid: {list(STEMS)}')
    if self.stage_sizes is None and self.depth not in DEPTHS:
      raise ValueError(f'Unknown ResNet depth {self.depth}; valid: {sorted(DEPTHS)}')
    stage_sizes, kind = DEPTHS.get(self.depth, (None, None))
    stage_sizes = tuple(stage_sizes if self.stage_sizes is None else self.stage_sizes)
    kind = self.block or kind
    if kind not in EXPANSION:
      raise ValueError(f'Unknown block {kind!r}; valid: {list(EXPANSION)}')
    # The ImageNet stem downsamples 4x, every stage after the first 2x.
    total_stride = (4 if self.stem == 'imagenet' else 1) * 2 ** max(len(stage_sizes) - 1, 0)
    name = 'ResNet' if self.stage_sizes is not None else f'ResNet-{self.depth}'
    layers.check_image(images, self.num_channels, total_stride, name,
                       " or the 3x3/1 stem (stem='cifar')" if self.stem == 'imagenet' else '')

    if self.features_only and not 1 <= self.num_features <= len(stage_sizes) + 1:
      raise ValueError(f'{name}: num_features must be in 1..{len(stage_sizes) + 1} (the stem '
                       f'and {len(stage_sizes)} stages), got {self.num_features}')

    x = images.astype(self.dtype)
    kernel, stride = (7, 2) if self.stem == 'imagenet' else (3, 1)
    if self.preact:
      x = layers.Conv(self.width, kernel, stride, dtype=self.dtype, name='stem_conv')(x)
    else:
      x = layers.ConvBN(self.width, kernel, stride, axis_name=self.axis_name,
                        dtype=self.dtype, name='stem')(x, train=train)
    outputs = [x]   # C1
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    for i, num_blocks in enumerate(stage_sizes):
      for j in range(num_blocks):
        x = ResidualBlock(self.width * 2 ** i, kind, strides=2 if i > 0 and j == 0 else 1,
                          preact=self.preact, zero_init_last=self.zero_init_last,
                          axis_name=self.axis_name, dtype=self.dtype,
                          name=f'stage{i + 1}_block{j + 1}')(x, train=train)
      outputs.append(x)
    if self.preact:
      x = outputs[-1] = nn.relu(layers.batch_norm(train=train, axis_name=self.axis_name,
                                                  dtype=self.dtype, name='final_bn')(x))
    if self.features_only:
      return tuple(outputs[-self.num_features:])
    x = x.mean(axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32)


def resnet(depth: int, preact: bool = False, **overrides) -> ResNet:
  """ResNet-`depth` (pre-activation when `preact`) with `overrides` on top."""
  return ResNet(depth=depth, preact=preact, **overrides)
