"""The YOLOv3 detector (Redmon & Farhadi 2018, "YOLOv3: An Incremental Improvement",
Sec. 2.1-2.3): a backbone's C3, C4, C5 features (strides 8, 16, 32), a top-down neck
and one prediction per anchor at every cell of the three scales.

Neck and heads, as in darknet's `yolov3.cfg` (c = 512 * neck_width):
  C5 -> conv set (1x1 c, 3x3 2c, 1x1 c, 3x3 2c, 1x1 c) = R5 -> 3x3 2c -> 1x1 out  (stride 32)
  R5 -> 1x1 c/2 -> 2x nearest upsample -> concat C4 -> conv set (c/2) = R4 -> head  (16)
  R4 -> 1x1 c/4 -> 2x nearest upsample -> concat C3 -> conv set (c/4) -> head       (8)
Every convolution is conv -> BatchNorm -> LeakyReLU(0.1) except the prediction 1x1,
which is linear with a bias. With Darknet-53 at width 1 and 80 classes this is the
61,949,149-parameter YOLOv3 of darknet (and of ultralytics' yolov3.yaml).

Each prediction is (t_x, t_y, t_w, t_h, t_o, class logits...): Sec. 2.1 decodes
  b_xy = (sigmoid(t_xy) + c_xy) * stride,   b_wh = anchor_wh * exp(t_wh)
(`decode_boxes`); objectness sigmoid(t_o) (Sec. 2.1) and independent class sigmoids
(Sec. 2.2, multi-label).

The backbone is any of BACKBONES: Darknet-53 (the paper's), ResNets and MobileNetV2,
with a channel multiplier, so a small detector trains on a CPU.
"""

import functools
import math
from typing import Any, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import darknet, layers, mobilenet_v2, resnet

STRIDES = (8, 16, 32)
# Backbone name -> constructor(width multiplier, **kwargs) of a features_only module.
BACKBONES = {
    'darknet53': lambda width, **kw: darknet.Darknet53(width=width, features_only=True, **kw),
    **{f'resnet{d}': (lambda width, d=d, **kw: resnet.ResNet(
        num_classes=0, depth=d, width=darknet.channels(64, width), features_only=True, **kw))
       for d in resnet.DEPTHS},
    'mobilenet_v2': lambda width, **kw: mobilenet_v2.MobileNetV2(
        num_classes=0, width_multiplier=width, features_only=True, **kw),
}
OBJECTNESS_PRIOR = 0.01  # Initial sigmoid(t_o): few cells hold objects (see YOLOv3.__call__).
MAX_LOG_SCALE = 6.0  # exp(t_wh) is clipped at e^6 ~ 403x the anchor, so no inf in a loss.


def upsample(x: jax.Array) -> jax.Array:
  """2x nearest-neighbour upsampling (darknet's `upsample` layer): [b, h, w, c] -> [b, 2h, 2w, c]."""
  return einops.repeat(x, 'b h w c -> b (h 2) (w 2) c')


class YOLOv3(nn.Module):
  """YOLOv3: backbone C3-C5 -> top-down neck -> three prediction heads.

  Attributes:
    num_classes: object classes (no background class; objectness is separate).
    backbone: a key of BACKBONES.
    width: the backbone's channel multiplier.
    neck_width: multiplier of the neck's channels (512, 256, 128 at 1).
    num_anchors: anchors per scale (3 in the paper).
    num_channels: input channels.
    axis_name: pmap axis for synchronised BatchNorm; the pmap engine sets 'data'.
    dtype: compute dtype; parameters, BatchNorm statistics and outputs stay float32.
  """
  num_classes: int
  backbone: str = 'darknet53'
  width: float = 1.0
  neck_width: float = 1.0
  num_anchors: int = 3
  num_channels: int = 3
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> tuple[jax.Array, ...]:
    """images: [batch, height, width, num_channels] float, height and width multiples of
    32 -> raw predictions per scale (strides 8, 16, 32), each [batch, height / s,
    width / s, num_anchors, 5 + num_classes] float32.

    Raises ValueError for an unknown backbone (valid names listed) or a side that is
    not a multiple of 32.
    """
    if self.backbone not in BACKBONES:
      raise ValueError(f'Unknown YOLOv3 backbone {self.backbone!r}; valid: {sorted(BACKBONES)}')
    if images.ndim != 4 or images.shape[1] % 32 or images.shape[2] % 32:
      raise ValueError(f'YOLOv3 needs images [batch, height, width, channels] with height and '
                       f'width multiples of 32 (its total stride); got {tuple(images.shape)}')
    c3, c4, c5 = BACKBONES[self.backbone](self.width, num_channels=self.num_channels,
                                          axis_name=self.axis_name, dtype=self.dtype,
                                          name='backbone')(images, train=train)
    conv = functools.partial(layers.ConvBN, activation=darknet.leaky_relu,
                             axis_name=self.axis_name, dtype=self.dtype)
    outputs = []
    x = c5
    for i, skip in enumerate((None, c4, c3)):
      c = darknet.channels(512 // 2 ** i, self.neck_width)
      if skip is not None:
        x = upsample(conv(c, 1, name=f'lateral{i}')(x, train=train))
        x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      for j, (features, kernel) in enumerate([(c, 1), (2 * c, 3)] * 2 + [(c, 1)]):
        x = conv(features, kernel, name=f'set{i}_conv{j}')(x, train=train)
      y = conv(2 * c, 3, name=f'head{i}_conv')(x, train=train)
      outputs.append(self._predict(y, f'head{i}_out'))
    return tuple(outputs[::-1])

  def _predict(self, x: jax.Array, name: str) -> jax.Array:
    """The linear 1x1 prediction conv -> [b, h, w, num_anchors, 5 + num_classes] float32.

    The objectness bias starts at logit(OBJECTNESS_PRIOR), so that the many empty cells
    do not dominate the first steps' loss (the prior init of Lin et al. 2017, "Focal
    Loss for Dense Object Detection", Sec. 4.1, used by YOLO implementations since).
    """
    per_anchor = 5 + self.num_classes
    prior = math.log(OBJECTNESS_PRIOR / (1 - OBJECTNESS_PRIOR))

    def bias_init(key, shape, dtype=jnp.float32):
      del key
      return jnp.zeros(shape, dtype).reshape(self.num_anchors, per_anchor).at[:, 4].set(
          prior).reshape(shape)

    y = nn.Conv(self.num_anchors * per_anchor, (1, 1), dtype=self.dtype, bias_init=bias_init,
                name=name)(x)
    return einops.rearrange(y.astype(jnp.float32), 'b h w (a k) -> b h w a k', a=self.num_anchors)


def decode_boxes(raw: jax.Array, anchors: jax.Array, stride: int) -> jax.Array:
  """YOLOv3 Sec. 2.1 box decoding of one scale.

  raw: [..., h, w, num_anchors, >= 4] float32 predictions (t_x, t_y, t_w, t_h first).
  anchors: [num_anchors, 2] float32 anchor (width, height) in input pixels.
  stride: the scale's stride in pixels.
  Returns [..., h, w, num_anchors, 4] float32 boxes (x0, y0, x1, y1) in input pixels,
  pixel-edge coordinates: b_xy = (sigmoid(t_xy) + (col, row)) * stride, b_wh =
  anchor * exp(min(t_wh, MAX_LOG_SCALE)).
  """
  h, w = raw.shape[-4:-2]
  cells = jnp.stack(jnp.meshgrid(jnp.arange(w), jnp.arange(h)), axis=-1)[:, :, None, :]
  centre = (jax.nn.sigmoid(raw[..., :2]) + cells) * stride
  size = jnp.asarray(anchors, jnp.float32) * jnp.exp(jnp.minimum(raw[..., 2:4], MAX_LOG_SCALE))
  return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def yolov3(backbone: str = 'darknet53', **overrides) -> YOLOv3:
  """YOLOv3 with the given backbone and `overrides` on top."""
  return YOLOv3(backbone=backbone, **overrides)
