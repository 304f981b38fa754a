"""YOLOv3: published parameter counts, box decoding, anchor assignment and the ignore
mask on hand-made cases, finite loss gradients for every box loss, and the same loss and
update on 8 devices (jit and pmap) as on 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets import yolo
from tasks import yolo_loss

ANCHORS = ((8, 8), (12, 12), (16, 8), (24, 24), (32, 16), (16, 32), (48, 48), (64, 32), (32, 64))
GRIDS = ((8, 8), (4, 4), (2, 2))  # A 64x64 input at strides 8, 16, 32.


def _num_params(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def test_parameter_counts_are_darknets():
  # darknet's darknet53.cfg (1000 classes) and yolov3.cfg (80 classes, 416x416); the
  # latter is also ultralytics' yolov3.yaml count.
  assert _num_params(nets.build('darknet53', num_classes=1000), (1, 256, 256, 3)) == 41_609_928
  assert _num_params(nets.build('yolov3', num_classes=80), (1, 416, 416, 3)) == 61_949_149


def test_outputs_per_scale_and_bad_input():
  model = nets.build('yolov3_resnet18', num_classes=3, width=0.125, neck_width=0.0625,
                     num_channels=1)
  x = jnp.zeros((2, 96, 64, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  outputs = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert [o.shape for o in outputs] == [(2, 12, 8, 3, 8), (2, 6, 4, 3, 8), (2, 3, 2, 3, 8)]
  with pytest.raises(ValueError, match='multiples of 32'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 64, 1))))
  with pytest.raises(ValueError, match='Unknown YOLOv3 backbone'):
    jax.eval_shape(lambda: nets.build('yolov3', num_classes=3, backbone='vgg').init(
        jax.random.key(0), x))


def test_decoding_inverts_encoding():
  anchors = np.array(ANCHORS[:3], np.float32)
  stride, (h, w) = 8, GRIDS[0]
  rng = np.random.default_rng(0)
  raw = np.zeros((h, w, 3, 4), np.float32)
  expected = np.zeros((h, w, 3, 4), np.float32)
  for row, col, a in [(0, 0, 0), (3, 5, 1), (7, 7, 2)]:
    offset = rng.uniform(0.05, 0.95, 2)
    size = anchors[a] * rng.uniform(0.5, 2.0, 2)
    centre = (np.array([col, row]) + offset) * stride
    expected[row, col, a] = np.concatenate([centre - size / 2, centre + size / 2])
    raw[row, col, a] = np.concatenate([np.log(offset / (1 - offset)), np.log(size / anchors[a])])
  decoded = np.asarray(yolo.decode_boxes(jnp.asarray(raw), anchors, stride))
  for row, col, a in [(0, 0, 0), (3, 5, 1), (7, 7, 2)]:
    np.testing.assert_allclose(decoded[row, col, a], expected[row, col, a], atol=1e-4)


def _iou(a, b):
  inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0])) *
           max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _assign(boxes, mask=None, threshold=0.0):
  boxes = jnp.asarray(boxes, jnp.float32)
  mask = jnp.ones(len(boxes)) if mask is None else jnp.asarray(mask, jnp.float32)
  maps = yolo_loss.assign(boxes, mask, jnp.asarray(ANCHORS, jnp.float32), GRIDS, yolo.STRIDES,
                          threshold)
  return [np.asarray(m) for m in maps]


def _positives(maps):
  return sorted((s, *map(int, idx), int(m[tuple(idx)])) for s, m in enumerate(maps)
                for idx in np.argwhere(m >= 0))


def test_assignment_on_hand_made_cases():
  # A box centred on a cell border (x = y = 16) goes to the cell starting there.
  assert _positives(_assign([[12, 12, 20, 20]])) == [(0, 2, 2, 0, 0)]
  # Two boxes in one cell with different best anchors (8x8 and 12x12): both assigned.
  assert _positives(_assign([[16, 16, 24, 24], [15, 15, 27, 27]])) == [(0, 2, 2, 0, 0),
                                                                       (0, 2, 2, 1, 1)]
  # Two boxes claiming the same (cell, anchor): the later box keeps it.
  assert _positives(_assign([[16, 16, 24, 24], [17, 17, 25, 25]])) == [(0, 2, 2, 0, 1)]
  # A 48x48 box matches the first anchor of the stride-32 scale, and nothing elsewhere;
  # a tall 16x32 box the third anchor of stride 16.
  assert _positives(_assign([[16, 16, 64, 64], [40, 0, 56, 32]])) == [(1, 1, 3, 2, 1),
                                                                     (2, 1, 1, 0, 0)]
  # Padding boxes are never assigned.
  assert _positives(_assign([[12, 12, 20, 20], [40, 0, 56, 32]], mask=[0, 1])) == [
      (1, 1, 3, 2, 1)]
  # YOLOv4's multiple anchors: a 12x12 box has shape IoU 1 with (12, 12), 96/176 = 0.545
  # with (16, 8), 64/144 = 0.444 with (8, 8) and 0.25 with (24, 24); t = 0.4 takes the
  # first three, t = 0.5 the first two.
  box = [[10, 10, 22, 22]]
  assert _positives(_assign(box, threshold=0.4)) == [(0, 2, 2, a, 0) for a in (0, 1, 2)]
  assert _positives(_assign(box, threshold=0.5)) == [(0, 2, 2, a, 0) for a in (1, 2)]


def test_objectness_ignores_unassigned_predictions_that_overlap_a_box():
  """With all-zero predictions every objectness BCE is log 2; the loss counts assigned
  and negative predictions and skips the ignored ones, which an independent NumPy loop
  over the decoded anchor boxes finds."""
  gt = np.array([[8, 8, 40, 36], [30, 20, 62, 60]], np.float32)
  loss = yolo_loss.YoloLoss(ANCHORS, ignore_threshold=0.5)
  outputs = tuple(jnp.zeros((1, h, w, 3, 5 + 2)) for h, w in GRIDS)
  terms = jax.jit(lambda o: loss(o, jnp.asarray(gt)[None], jnp.zeros((1, 2), jnp.int32),
                                 jnp.ones((1, 2)), (64, 64)))(outputs)
  maps = _assign(gt)
  counted = 0
  for s, ((h, w), stride) in enumerate(zip(GRIDS, yolo.STRIDES)):
    for row in range(h):
      for col in range(w):
        for a in range(3):
          aw, ah = ANCHORS[3 * s + a]
          cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
          box = np.array([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
          best = max(_iou(box, g) for g in gt)
          counted += maps[s][row, col, a] >= 0 or best <= 0.5
  total = 3 * sum(h * w for h, w in GRIDS)
  assert counted < total  # The case has ignored predictions.
  np.testing.assert_allclose(terms['objectness'][0], counted * np.log(2), rtol=1e-5)
  # Two positives, two classes each: class BCE = 2 * 2 * log 2.
  np.testing.assert_allclose(terms['class'][0], 4 * np.log(2), rtol=1e-5)


def test_softmax_class_loss_and_class_probabilities_by_hand():
  """YOLOv2's softmax cross entropy: with zero logits over 2 classes each of the two
  positives costs log 2 (the sigmoid loss above: 2 log 2 each); probabilities by hand."""
  gt = np.array([[8, 8, 40, 36], [30, 20, 62, 60]], np.float32)
  loss = yolo_loss.YoloLoss(ANCHORS, class_loss='softmax')
  outputs = tuple(jnp.zeros((1, h, w, 3, 5 + 2)) for h, w in GRIDS)
  terms = loss(outputs, jnp.asarray(gt)[None], jnp.asarray([[0, 1]], jnp.int32),
               jnp.ones((1, 2)), (64, 64))
  np.testing.assert_allclose(terms['class'][0], 2 * np.log(2), rtol=1e-5)
  # A confident right class costs little, the same confidence in the wrong one a lot.
  logits = [jnp.zeros((1, h, w, 3, 7)).at[..., 5].set(4.0) for h, w in GRIDS]
  for gt_class, expected in ((0, np.log1p(np.exp(-4.0))), (1, np.log1p(np.exp(4.0)))):
    terms = loss(tuple(logits), jnp.asarray(gt)[None], jnp.full((1, 2), gt_class, jnp.int32),
                 jnp.ones((1, 2)), (64, 64))
    np.testing.assert_allclose(terms['class'][0], 2 * expected, rtol=1e-5)
  t = jnp.asarray([1.0, 2.0, -1.0])
  e = np.exp([1.0, 2.0, -1.0])
  np.testing.assert_allclose(loss.class_probabilities(t), e / e.sum(), rtol=1e-6)
  np.testing.assert_allclose(yolo_loss.YoloLoss(ANCHORS).class_probabilities(t),
                             1 / (1 + 1 / e), rtol=1e-6)
  with pytest.raises(ValueError, match=r"class_loss='logistic' is not valid.*'softmax'"):
    yolo_loss.YoloLoss(ANCHORS, class_loss='logistic')


@pytest.mark.parametrize('box_loss', yolo_loss.BOX_LOSSES)
def test_every_box_loss_has_finite_gradients_with_degenerate_and_no_boxes(box_loss):
  loss = yolo_loss.YoloLoss(ANCHORS, box_loss=box_loss)
  rng = np.random.default_rng(0)
  outputs = tuple(jnp.asarray(rng.normal(0, 3, (2, h, w, 3, 7)), jnp.float32) for h, w in GRIDS)
  gt = jnp.asarray([[[10, 10, 10, 10], [5, 5, 30, 9]], [[0, 0, 0, 0], [0, 0, 0, 0]]],
                   jnp.float32)  # A zero-size box; the second image has none.
  mask = jnp.asarray([[1, 1], [0, 0]], jnp.float32)
  fn = lambda o: loss(o, gt, jnp.zeros((2, 2), jnp.int32), mask, (64, 64))['loss'].sum()
  value, grads = jax.jit(jax.value_and_grad(fn))(outputs)
  assert np.isfinite(value)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_unknown_box_loss_lists_the_choices():
  with pytest.raises(ValueError, match="choose one of .*'ciou'"):
    yolo_loss.YoloLoss(ANCHORS, box_loss='l1')
