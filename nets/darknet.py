"""Darknet-53 (Redmon & Farhadi 2018, "YOLOv3: An Incremental Improvement", Sec. 2.4,
Table 1), the backbone of YOLOv3.

  conv 3x3 (32)
  5 stages, stage i: conv 3x3/2 (64 * 2^i) -> n_i residual blocks
    [conv 1x1 (c / 2) -> conv 3x3 (c)] + shortcut,  n = (1, 2, 8, 8, 4)
  global average pool -> fully connected (classifier only)

Every convolution is conv (no bias) -> BatchNorm -> LeakyReLU(0.1), as in darknet's
`darknet53.cfg`. Channel counts are `c * width` (at least 8), so a narrow Darknet-53
can be trained on a CPU; at width 1 with 1000 classes it has 41,609,928 parameters
(the layout of darknet's cfg; BatchNorm scale and bias counted as parameters, as
PyTorch counts them).

With `features_only`, the network returns the outputs of the last three stages, C3,
C4, C5 at strides 8, 16, 32 (256, 512, 1024 channels at width 1): the features the
YOLOv3 head reads (nets/yolo.py).
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import layers

STAGE_SIZES = (1, 2, 8, 8, 4)  # Residual blocks per stage (Table 1).
LEAKY_SLOPE = 0.1  # darknet's "leaky" activation.


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, LEAKY_SLOPE)


def channels(base: int, width: float) -> int:
  """`base * width` channels, rounded, at least 8."""
  return max(8, int(round(base * width)))


class DarknetBlock(nn.Module):
  """Residual block [1x1 conv (features / 2) -> 3x3 conv (features)] + x (Table 1)."""
  features: int
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(layers.ConvBN, activation=leaky_relu, axis_name=self.axis_name,
                             dtype=self.dtype)
    y = conv(self.features // 2, 1, name='conv1')(x, train=train)
    y = conv(self.features, 3, name='conv2')(y, train=train)
    return x + y


class Darknet53(nn.Module):
  """Darknet-53 classifier, or feature extractor with `features_only`.

  Attributes:
    num_classes: outputs of the classifier (unused with features_only).
    width: channel multiplier (1.0 in the paper).
    stage_sizes: residual blocks per stage (default (1, 2, 8, 8, 4)); five stages.
    features_only: return (C3, C4, C5) instead of logits.
    num_channels: input channels (checked).
    axis_name: pmap axis for synchronised BatchNorm; the pmap engine sets 'data'.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
  """
  num_classes: int = 1000
  width: float = 1.0
  stage_sizes: Sequence[int] = STAGE_SIZES
  features_only: bool = False
  num_channels: int = 3
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False):
    """images: [batch, height, width, num_channels] float -> logits [batch, num_classes]
    float32, or with features_only (C3, C4, C5), [batch, height / s, width / s, c_s] for
    s = 8, 16, 32 in `dtype`.

    Raises ValueError unless there are 5 stages, for a wrong channel count, or images
    smaller than 32 x 32 (the total stride).
    """
    if len(self.stage_sizes) != len(STAGE_SIZES):
      raise ValueError(f'Darknet-53 has {len(STAGE_SIZES)} stages; got stage_sizes '
                       f'{tuple(self.stage_sizes)}')
    layers.check_image(images, self.num_channels, 32, 'Darknet-53')
    conv = functools.partial(layers.ConvBN, activation=leaky_relu, axis_name=self.axis_name,
                             dtype=self.dtype)
    x = conv(channels(32, self.width), 3, name='stem')(images.astype(self.dtype), train=train)
    outputs = []
    for i, num_blocks in enumerate(self.stage_sizes):
      features = channels(64 * 2 ** i, self.width)
      x = conv(features, 3, 2, name=f'stage{i + 1}_down')(x, train=train)
      for j in range(num_blocks):
        x = DarknetBlock(features, self.axis_name, self.dtype,
                         name=f'stage{i + 1}_block{j + 1}')(x, train=train)
      outputs.append(x)
    if self.features_only:
      return tuple(outputs[-3:])
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(jnp.float32)
