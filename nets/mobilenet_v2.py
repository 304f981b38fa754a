"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks").

  stem: 3x3/2 conv (32) -> BN -> ReLU6
  inverted residual blocks per Table 2, rows (t, c, n, s): expansion t, output
    channels c, n repeats, stride s on the first repeat
  1x1 conv (1280) -> BN -> ReLU6 -> global average pool -> dropout 0.2 -> fully connected

Channel counts are `make_divisible(c * width_multiplier, 8)`; the last conv keeps 1280
channels for multipliers below 1 (Sec. 6.1). The layout is that of the reference
implementation (torchvision `mobilenet_v2`): 3,504,872 parameters at width 1.0 with
1000 classes.

The 'cifar' stem (for 28-32 pixel inputs) uses stride 1 in the stem convolution and in
the first 24-channel row, so the total stride is 8 instead of 32.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import layers

# Table 2 of the paper: (expansion t, channels c, repeats n, stride s).
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEMS = ('imagenet', 'cifar')
FEATURE_ROWS = (32, 96, 320)  # Rows whose outputs are C3, C4, C5 (last at stride 8, 16, 32).


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds `value` to the nearest multiple of `divisor` (at least `divisor`), never
  going more than 10 % below it (the rounding of the reference implementations)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


class InvertedResidual(nn.Module):
  """1x1 expansion -> 3x3 depthwise -> linear 1x1 projection (Sandler et al., Table 1).

  The expansion is skipped when expand_ratio == 1; the residual connection exists only
  when strides == 1 and the input and output channels are equal (Fig. 4(d)). The
  projection has no activation: the "linear bottleneck" of Sec. 3.2.

  Attributes:
    features: output channels.
    strides: stride of the depthwise convolution.
    expand_ratio: t, hidden channels = t * input channels.
    depthwise_impl: 'auto', 'xla' or 'shifted' (see nets.layers.Conv).
    axis_name: pmap axis for synchronised BatchNorm (None under jit).
  """
  features: int
  strides: int
  expand_ratio: int
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x: [batch, h, w, c_in] -> [batch, h / strides, w / strides, features]."""
    in_features = x.shape[-1]
    hidden = in_features * self.expand_ratio
    kwargs = dict(axis_name=self.axis_name, dtype=self.dtype)
    y = x
    if self.expand_ratio != 1:
      y = layers.ConvBN(hidden, 1, activation=jax.nn.relu6, name='expand', **kwargs)(y, train=train)
    y = layers.ConvBN(hidden, 3, self.strides, groups=hidden, activation=jax.nn.relu6,
                      depthwise_impl=self.depthwise_impl, name='depthwise', **kwargs)(y, train=train)
    y = layers.ConvBN(self.features, 1, activation=None, name='project', **kwargs)(y, train=train)
    if self.strides == 1 and in_features == self.features:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 classifier.

  Attributes:
    num_classes: outputs of the classifier.
    width_multiplier: alpha of Sec. 6.1, scales every channel count (except the last
      conv's 1280 when alpha < 1).
    stem: 'imagenet' (total stride 32) or 'cifar' (total stride 8, see module docstring).
    dropout_rate: dropout before the classifier (0.2 in the reference).
    depthwise_impl: 'auto', 'xla' or 'shifted' (see nets.layers.Conv).
    features_only: return the outputs of the 32-, 96- and 320-channel rows (C3, C4, C5;
      strides 8, 16, 32 with the ImageNet stem) instead of logits, e.g. for the YOLOv3
      head (no 1280-channel conv, no classifier).
    num_channels: input channels (checked).
    axis_name: pmap axis for synchronised BatchNorm; the pmap engine sets 'data'.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
  """
  num_classes: int
  width_multiplier: float = 1.0
  stem: str = 'imagenet'
  dropout_rate: float = 0.2
  depthwise_impl: str = 'auto'
  features_only: bool = False
  num_channels: int = 3
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """images: [batch, height, width, num_channels] float -> logits [batch, num_classes]
    float32, or with features_only (C3, C4, C5).

    Raises ValueError for an unknown stem, a wrong channel count or images smaller than
    the total stride.
    """
    if self.stem not in STEMS:
      raise ValueError(f'Unknown stem {self.stem!r}; valid: {list(STEMS)}')
    cifar = self.stem == 'cifar'
    layers.check_image(images, self.num_channels, 8 if cifar else 32, 'MobileNetV2',
                       '' if cifar else " or the stride-8 stem (stem='cifar')")
    alpha = self.width_multiplier
    kwargs = dict(axis_name=self.axis_name, dtype=self.dtype)

    x = layers.ConvBN(make_divisible(32 * alpha), 3, 1 if cifar else 2, activation=jax.nn.relu6,
                      name='stem', **kwargs)(images.astype(self.dtype), train=train)
    features = []
    for i, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
      if cifar and c == 24:
        s = 1
      for j in range(n):
        x = InvertedResidual(make_divisible(c * alpha), s if j == 0 else 1, t,
                             self.depthwise_impl, name=f'block{i + 1}_{j + 1}',
                             **kwargs)(x, train=train)
      if c in FEATURE_ROWS:
        features.append(x)
    if self.features_only:
      return tuple(features)
    x = layers.ConvBN(make_divisible(1280 * max(1.0, alpha)), 1, activation=jax.nn.relu6,
                      name='head_conv', **kwargs)(x, train=train)
    x = x.mean(axis=(1, 2))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      kernel_init=nn.initializers.normal(stddev=0.01), name='head')(x)
    return logits.astype(jnp.float32)
