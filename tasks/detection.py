"""Object detection with YOLOv3 (a task plug-in, see tasks/__init__.py): the YOLOv3 loss
with a selectable box term (tasks.yolo_loss), decoding and jit-able NMS
(tasks.nms), and COCO-style AP over the whole eval split (tasks.coco_map).

Batches (data/detection.py): {'image': [b, H, W, c] float32, 'boxes': [b, max_boxes,
4] float32 xyxy in input pixels, 'classes': [b, max_boxes] int32, 'box_mask':
[b, max_boxes] float32 (1 real box, 0 padding), 'dropped': [b] float32 boxes the
augmentation or max_boxes dropped}; eval batches add 'mask' [b] and 'index' [b].

Predictions (`predict`): per image the max_detections best boxes after NMS, in input
pixels: {'boxes': [b, D, 4], 'scores': [b, D], 'classes': [b, D] int32, 'valid': [b, D]
bool}. Scores are objectness x class probability for every (box, class) pair
(YOLOv3 Sec. 2.2: classes are independent sigmoids, so one box may carry several; with
loss.class_loss='softmax' the probabilities are a softmax over the classes).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import nets
from nets import yolo
from tasks import common, nms, yolo_loss
from tasks import evaluators as evaluators_lib


@dataclasses.dataclass(frozen=True)
class DetectionTask(common.Task):
  """YOLOv3 training and inference.

  loss_fn: tasks.yolo_loss.YoloLoss (holds the anchors).
  nms_options: keyword arguments of tasks.nms.batched_nms (method, iou_threshold,
    score_threshold, pre_nms_top_k, max_detections, diou_beta, soft_sigma).
  flip: horizontal-flip test-time augmentation in `predict` (see there).
  """
  loss_fn: yolo_loss.YoloLoss
  nms_options: dict
  flip: bool = False

  def apply(self, model, variables, batch, *, train: bool, rngs=None, mutable=False):
    """Raw predictions per scale, each [b, h_s, w_s, A, 5 + C] float32 (and the updated
    collections when `mutable` is a non-empty list)."""
    return model.apply(variables, batch['image'], train=train, rngs=rngs, mutable=mutable)

  def weights(self, batch) -> jax.Array:
    """[b] float32: 1 for real images, 0 for eval padding."""
    return batch.get('mask', jnp.ones(batch['image'].shape[:1], jnp.float32))

  def _terms(self, outputs, batch) -> dict:
    return self.loss_fn(outputs, batch['boxes'], batch['classes'], batch['box_mask'],
                        batch['image'].shape[1:3])

  def loss(self, outputs, batch) -> jax.Array:
    """Per-image YOLOv3 loss [b] float32."""
    return self._terms(outputs, batch)['loss']

  def metrics(self, outputs, batch) -> dict:
    """Per-image means (sum, count) of the loss, its three terms, the boxes per image
    and the boxes dropped per image (augmentation, max_boxes)."""
    w = self.weights(batch)
    terms = self._terms(outputs, batch)
    per_image = {'loss': terms['loss'], 'box_loss': terms['box'],
                 'objectness_loss': terms['objectness'], 'class_loss': terms['class'],
                 'boxes': batch['box_mask'].sum(axis=1),
                 'dropped_boxes': batch.get('dropped', jnp.zeros_like(w))}
    return {name: common.metric((value * w).sum(), w.sum()) for name, value in per_image.items()}

  def candidates(self, outputs) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Every (prediction, class) pair of all scales: boxes [b, n * C, 4] (clipped to
    the image later by NMS users), scores [b, n * C] = sigmoid(t_o) p(c) with p(c) the
    loss's class probabilities (sigmoid(t_c), or the softmax over the classes),
    classes [b, n * C] int32."""
    anchors = jnp.asarray(self.loss_fn.anchors, jnp.float32)
    per_scale = anchors.shape[0] // len(self.loss_fn.strides)
    boxes, scores = [], []
    for s, (raw, stride) in enumerate(zip(outputs, self.loss_fn.strides)):
      b = raw.shape[0]
      decoded = yolo.decode_boxes(raw, anchors[s * per_scale:(s + 1) * per_scale], stride)
      boxes.append(decoded.reshape(b, -1, 4))
      scores.append((jax.nn.sigmoid(raw[..., 4:5]) *
                     self.loss_fn.class_probabilities(raw[..., 5:])).reshape(
                         b, -1, raw.shape[-1] - 5))
    boxes, scores = jnp.concatenate(boxes, axis=1), jnp.concatenate(scores, axis=1)
    num_classes = scores.shape[-1]
    classes = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), scores.shape)
    boxes = jnp.repeat(boxes, num_classes, axis=1)
    return boxes, scores.reshape(scores.shape[0], -1), classes.reshape(scores.shape[0], -1)

  def predict(self, model, variables, batch) -> dict:
    """Detections after NMS (see the module docstring), boxes clipped to the image.

    With `flip`, the candidates of the mirror image, mirrored back (x0, x1 -> w - x1,
    w - x0), join the image's own before one NMS over both (test-time augmentation as
    ultralytics' YOLOv5 `--augment` merges its views), for twice the forward passes
    and candidates. A detection's mirrored twin is then suppressed like any duplicate:
    removed by greedy and DIoU-NMS, kept with a decayed score by Soft-NMS.
    """
    boxes, scores, classes = self.candidates(self.apply(model, variables, batch, train=False))
    h, w = batch['image'].shape[1:3]
    if self.flip:
      m_boxes, m_scores, m_classes = self.candidates(
          self.apply(model, variables, common.mirrored(batch), train=False))
      m_boxes = jnp.stack([w - m_boxes[..., 2], m_boxes[..., 1], w - m_boxes[..., 0],
                           m_boxes[..., 3]], axis=-1)
      boxes = jnp.concatenate([boxes, m_boxes], axis=1)
      scores = jnp.concatenate([scores, m_scores], axis=1)
      classes = jnp.concatenate([classes, m_classes], axis=1)
    boxes = jnp.clip(boxes, 0.0, jnp.asarray([w, h, w, h], jnp.float32))
    return nms.batched_nms(boxes, scores, classes, **self.nms_options)


NMS_FIELDS = ('method', 'iou_threshold', 'score_threshold', 'pre_nms_top_k', 'max_detections',
              'diou_beta', 'soft_sigma')


def _loss(config) -> yolo_loss.YoloLoss:
  anchors = tuple(tuple(float(v) for v in a) for a in config.anchors)
  scales = len(yolo.STRIDES)
  if not anchors or len(anchors) % scales or any(len(a) != 2 or min(a) <= 0 for a in anchors):
    raise ValueError(f'config.anchors must be {scales} x A positive (width, height) pairs in '
                     f'input pixels, smallest stride first; got {config.anchors}')
  loss = config.loss
  return yolo_loss.YoloLoss(anchors, yolo.STRIDES, loss.box_loss, loss.ignore_threshold,
                            loss.box_weight, loss.obj_weight, loss.cls_weight,
                            loss.assign_threshold, loss.class_loss)


def _nms_options(config) -> dict:
  options = {name: config.nms[name] for name in NMS_FIELDS}
  nms.check_options(**options)
  return options


def check(config):
  """Checks the model, loss, anchors and NMS fields; returns the model built with
  placeholder sizes."""
  common.check_no_device_augment(config)
  loss = _loss(config)
  detectors = sorted(name for name in nets.REGISTRY if name.startswith('yolov3'))
  if config.model.name not in detectors:
    raise ValueError(f'config.model.name={config.model.name!r} is not a detector; valid: '
                     f'{detectors}')
  model = common.build_model(config, num_classes=2,
                             num_anchors=len(loss.anchors) // len(yolo.STRIDES))
  _nms_options(config)
  if config.data.image_size % 32:
    raise ValueError(f'config.data.image_size={config.data.image_size} must be a multiple of '
                     f'32 (the YOLOv3 total stride)')
  return model


def build_data(config):
  """data.detection.DetectionData: Fashion-MNIST scenes, NEON tree crowns, TFDS VOC/COCO."""
  from data import detection  # pylint: disable=import-outside-toplevel
  return detection.DetectionData(config)


def build_task(config, spec) -> DetectionTask:
  del spec
  return DetectionTask(_loss(config), _nms_options(config), flip=config.inference.flip)


def truths_and_detections(data, role: str, indices, detections) -> tuple[list, list]:
  """The ground truth of examples `indices` of split `role` and their valid detections
  (rows of `predict`'s output, numpy), both in the original images' pixels: the two
  lists tasks.coco_map.evaluate takes."""
  truths, predictions = [], []
  for i, index in enumerate(indices):
    truth, to_original = data.ground_truth(role, int(index))
    keep = detections['valid'][i]
    truths.append(truth)
    predictions.append({'boxes': to_original(detections['boxes'][i][keep]),
                        'scores': detections['scores'][i][keep],
                        'classes': detections['classes'][i][keep]})
  return truths, predictions


def evaluators(config, data, predict_fn, engine) -> list:
  """COCO-style AP / AR of the split's detections (gathered from all devices and
  processes) against its ground truth, in the original images' pixels."""
  from tasks import coco_map  # pylint: disable=import-outside-toplevel

  def score(role, indices, detections):
    truths, predictions = truths_and_detections(data, role, indices, detections)
    return coco_map.evaluate(truths, predictions, len(data.class_names),
                             class_names=[n.replace(' ', '_') for n in data.class_names],
                             max_detections=config.nms.max_detections,
                             difficult_overlap=data.difficult_overlap)

  return [evaluators_lib.GatherEvaluator(predict_fn, engine, score)]


def bench_inputs(config, image_size, batch_size, rng):
  """(DataSpec, host batch) of random images and a few random boxes for train.bench."""
  from data import pipeline  # pylint: disable=import-outside-toplevel
  spec = build_data(config).spec
  h, w, c = spec.init_args[0].shape[1:]
  if image_size:
    h = w = image_size
  num_classes, max_boxes = spec.model_kwargs['num_classes'], config.data.max_boxes
  # Two corners (x, y) per box, sorted per coordinate: (x0, y0), (x1, y1).
  corners = np.sort(rng.uniform(0, 1, (batch_size, max_boxes, 2, 2)), axis=2)
  boxes = corners.reshape(batch_size, max_boxes, 4) * [w, h, w, h]
  batch = {'image': rng.normal(size=(batch_size, h, w, c)).astype(np.float32),
           'boxes': boxes.astype(np.float32),
           'classes': rng.integers(0, num_classes, (batch_size, max_boxes)).astype(np.int32),
           'box_mask': (np.arange(max_boxes) < 4)[None].repeat(batch_size, 0).astype(np.float32),
           'dropped': np.zeros(batch_size, np.float32)}
  return pipeline.DataSpec(spec.model_kwargs, (np.zeros((1, h, w, c), np.float32),)), batch


PREDICT_INPUTS = ('image', 'out')


def predict_cli(config, data, predict_batch, inputs: dict) -> None:
  """Writes, for each --image, a PNG with the detections drawn (class and score) and
  prints them as tab-separated lines: image, class, score, x0, y0, x1, y1 (pixels of
  the original image)."""
  from data import detection  # pylint: disable=import-outside-toplevel
  from tasks import overlay  # pylint: disable=import-outside-toplevel
  for path in inputs.get('image', []):
    image, batch, to_original = detection.image_batch(config, data, path)
    found = jax.tree.map(lambda x: x[0], predict_batch(batch))
    keep = found['valid']
    boxes = to_original(found['boxes'][keep])
    out = overlay.output_path(path, inputs.get('out'), len(inputs['image']))
    overlay.save_detections(image, boxes, found['classes'][keep], found['scores'][keep],
                            data.class_names, out)
    for box, cls, score in zip(boxes, found['classes'][keep], found['scores'][keep]):
      print(f'{path}\t{data.class_names[cls]}\t{score:.3f}\t' +
            '\t'.join(f'{v:.1f}' for v in box))
    print(f'{path}\t{out}')
