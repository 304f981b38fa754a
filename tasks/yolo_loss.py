"""YOLOv3 targets and loss (Redmon & Farhadi 2018, "YOLOv3: An Incremental
Improvement", Sec. 2.1-2.3), with the box term selectable among the original and the
IoU family (Rezatofighi et al. 2019 GIoU; Zheng et al. 2020 DIoU / CIoU).

Assignment (Sec. 2.1): each ground-truth box goes to the one anchor, over all scales,
whose shape best matches it (IoU of the two boxes sharing a centre), at the cell of
that scale that holds the box's centre. With assign_threshold t > 0 it also goes to
every other anchor whose shape IoU with it exceeds t (YOLOv4, Bochkovskiy et al. 2020,
Sec. 3.4, "using multiple anchors for a single ground truth", t = 0.213 in its cfg):
more positives per box, so the heads learn from more predictions per step. When two
boxes claim the same (cell, anchor) the later box in the list keeps it (a
deterministic scatter-max of box indices).

Objectness (Sec. 2.1): binary cross entropy, target 1 at assigned predictions and 0
elsewhere, except that a prediction whose decoded box overlaps any ground truth with
IoU > ignore_threshold (0.5 in the paper) and is not assigned is ignored.
Classes, at assigned predictions only, `class_loss`:
  'sigmoid' (YOLOv3, Sec. 2.2): independent binary cross entropies, multi-label (one
    box may carry several classes, as in Open Images);
  'softmax' (YOLOv2, Redmon & Farhadi 2017, "YOLO9000", Sec. 2): softmax cross entropy
    over the classes, for datasets whose classes exclude each other (VOC, COCO,
    Fashion-MNIST): the classes compete for each box.
Box (at assigned predictions only), `box_loss`:
  'original': YOLOv3's darknet loss: binary cross entropy between sigmoid(t_xy) and the
    centre's offset in its cell, squared error between t_wh and log(box / anchor), both
    scaled by 2 - w h / (W H), which weighs small boxes up;
  'iou', 'giou', 'diou', 'ciou': 1 - the chosen IoU between the decoded and the
    ground-truth box (tasks.boxes).
The per-image loss is box_weight * box + obj_weight * objectness + cls_weight * class,
each summed over the image's predictions (darknet sums rather than averages).

Ground truth enters padded: boxes [max_boxes, 4] with a mask, so one compilation
serves every batch and an image without boxes is a valid input (all objectness
targets 0).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from nets import yolo
from tasks import boxes as boxes_lib

BOX_LOSSES = ('original',) + tuple(boxes_lib.KINDS)
CLASS_LOSSES = ('sigmoid', 'softmax')


def shape_iou(wh: jax.Array, anchors: jax.Array) -> jax.Array:
  """IoU of boxes and anchors aligned at a common centre: wh [n, 2], anchors [k, 2]
  (widths, heights in pixels) -> [n, k] float32."""
  inter = (jnp.minimum(wh[:, None, 0], anchors[None, :, 0]) *
           jnp.minimum(wh[:, None, 1], anchors[None, :, 1]))
  union = wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter
  return inter / jnp.maximum(union, 1e-9)


def assign(gt_boxes: jax.Array, gt_mask: jax.Array, anchors: jax.Array,
           grid_shapes, strides, assign_threshold: float = 0.0) -> tuple[jax.Array, ...]:
  """YOLOv3 target assignment of one image.

  gt_boxes: [m, 4] float32 xyxy pixels; gt_mask: [m] (1 real, 0 padding).
  anchors: [num_scales * A, 2] float32 (w, h) in pixels, A per scale, scale order as
    `strides` (smallest stride first).
  grid_shapes: ((h_s, w_s), ...) per scale; strides: (8, 16, 32).
  assign_threshold: 0 for YOLOv3's single best anchor; t > 0 adds every anchor of shape
    IoU > t (YOLOv4).
  Returns per scale an int32 [h_s, w_s, A] map: the index of the box assigned to each
  (cell, anchor), -1 where none.
  """
  num_scales = len(strides)
  per_scale = anchors.shape[0] // num_scales
  wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
  centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
  overlap = shape_iou(wh, anchors)  # [m, num_scales * A]
  matched = jax.nn.one_hot(jnp.argmax(overlap, axis=1), anchors.shape[0], dtype=bool)
  if assign_threshold > 0:
    matched |= overlap > assign_threshold
  matched &= gt_mask[:, None] > 0
  index = jnp.arange(gt_boxes.shape[0], dtype=jnp.int32)
  maps = []
  for s, ((h, w), stride) in enumerate(zip(grid_shapes, strides)):
    col = jnp.clip(jnp.floor(centre[:, 0] / stride).astype(jnp.int32), 0, w - 1)
    row = jnp.clip(jnp.floor(centre[:, 1] / stride).astype(jnp.int32), 0, h - 1)
    scale_map = jnp.full((h, w, per_scale), -1, jnp.int32)
    for a in range(per_scale):
      scale_map = scale_map.at[row, col, a].max(jnp.where(matched[:, s * per_scale + a], index,
                                                          -1))
    maps.append(scale_map)
  return tuple(maps)


@dataclasses.dataclass(frozen=True)
class YoloLoss:
  """The YOLOv3 loss of a batch.

  anchors: [num_scales * A, 2] (w, h) in input pixels, smallest stride's first.
  strides: the scales' strides (nets.yolo.STRIDES).
  box_loss: one of BOX_LOSSES. ignore_threshold, assign_threshold: see the module
    docstring.
  box_weight, obj_weight, cls_weight: the terms' weights.
  class_loss: one of CLASS_LOSSES (module docstring); `class_probabilities` matches it.
  """
  anchors: tuple
  strides: tuple = yolo.STRIDES
  box_loss: str = 'ciou'
  ignore_threshold: float = 0.5
  box_weight: float = 1.0
  obj_weight: float = 1.0
  cls_weight: float = 1.0
  assign_threshold: float = 0.0
  class_loss: str = 'sigmoid'

  def __post_init__(self):
    if self.box_loss not in BOX_LOSSES:
      raise ValueError(f'box_loss={self.box_loss!r} is not valid; choose one of '
                       f'{list(BOX_LOSSES)}')
    if self.class_loss not in CLASS_LOSSES:
      raise ValueError(f'class_loss={self.class_loss!r} is not valid; choose one of '
                       f'{list(CLASS_LOSSES)}')

  def class_probabilities(self, class_logits: jax.Array) -> jax.Array:
    """[..., C] logits t_c -> [..., C] class probabilities: sigmoid(t_c) each, or the
    softmax over the classes (`class_loss`)."""
    if self.class_loss == 'softmax':
      return jax.nn.softmax(class_logits, axis=-1)
    return jax.nn.sigmoid(class_logits)

  def __call__(self, outputs, gt_boxes: jax.Array, gt_classes: jax.Array, gt_mask: jax.Array,
               image_size: tuple[int, int]) -> dict:
    """outputs: per scale [b, h_s, w_s, A, 5 + C] float32 raw predictions (nets.yolo).
    gt_boxes: [b, m, 4] float32 xyxy pixels; gt_classes: [b, m] int32; gt_mask: [b, m].
    image_size: (H, W) of the inputs in pixels.
    Returns {'loss', 'box', 'objectness', 'class'}: each [b] float32 per image (loss =
    the weighted sum of the three terms).
    """
    terms = jax.vmap(lambda o, b, c, m: self._image(o, b, c, m, image_size))(
        tuple(outputs), gt_boxes, gt_classes, gt_mask)
    terms['loss'] = (self.box_weight * terms['box'] + self.obj_weight * terms['objectness'] +
                     self.cls_weight * terms['class'])
    return terms

  def _image(self, outputs, gt_boxes, gt_classes, gt_mask, image_size) -> dict:
    anchors = jnp.asarray(self.anchors, jnp.float32)
    per_scale = anchors.shape[0] // len(self.strides)
    num_classes = outputs[0].shape[-1] - 5
    maps = assign(gt_boxes, gt_mask, anchors, [o.shape[:2] for o in outputs], self.strides,
                  self.assign_threshold)
    box = objectness = cls = jnp.zeros((), jnp.float32)
    for s, (raw, index, stride) in enumerate(zip(outputs, maps, self.strides)):
      scale_anchors = anchors[s * per_scale:(s + 1) * per_scale]
      positive = index >= 0
      target = gt_boxes[jnp.maximum(index, 0)]  # [h, w, A, 4]
      predicted = yolo.decode_boxes(raw, scale_anchors, stride)
      overlap = boxes_lib.pairwise_iou(predicted.reshape(-1, 4), gt_boxes)
      best = jnp.max(jnp.where(gt_mask[None, :] > 0, overlap, 0.0), axis=1).reshape(index.shape)
      negative = ~positive & (jax.lax.stop_gradient(best) <= self.ignore_threshold)
      obj_logit = raw[..., 4]
      objectness += (jnp.sum(optax.sigmoid_binary_cross_entropy(obj_logit, 1.0) * positive) +
                     jnp.sum(optax.sigmoid_binary_cross_entropy(obj_logit, 0.0) * negative))
      labels = jax.nn.one_hot(gt_classes[jnp.maximum(index, 0)], num_classes)
      if self.class_loss == 'softmax':
        cls += jnp.sum(optax.softmax_cross_entropy(raw[..., 5:], labels) * positive)
      else:
        cls += jnp.sum(optax.sigmoid_binary_cross_entropy(raw[..., 5:], labels) *
                       positive[..., None])
      box += jnp.sum(self._box(raw, predicted, target, scale_anchors, stride, image_size) *
                     positive)
    return {'box': box, 'objectness': objectness, 'class': cls}

  def _box(self, raw, predicted, target, anchors, stride, image_size) -> jax.Array:
    """[h, w, A] box loss of every prediction against the box assigned to it."""
    if self.box_loss != 'original':
      return boxes_lib.iou_loss(predicted, target, self.box_loss)
    h, w = raw.shape[:2]
    cells = jnp.stack(jnp.meshgrid(jnp.arange(w), jnp.arange(h)), axis=-1)[:, :, None, :]
    wh = jnp.maximum(target[..., 2:] - target[..., :2], 1e-3)
    offset = (target[..., :2] + target[..., 2:]) / 2 / stride - cells
    log_scale = jnp.log(wh / anchors)
    weight = 2.0 - wh[..., 0] * wh[..., 1] / (image_size[0] * image_size[1])
    xy = optax.sigmoid_binary_cross_entropy(raw[..., :2], jnp.clip(offset, 0.0, 1.0)).sum(-1)
    size = jnp.square(raw[..., 2:4] - log_scale).sum(-1)
    return weight * (xy + size)
