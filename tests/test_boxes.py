"""Box geometry (tasks.boxes) and NMS (tasks.nms): the IoU family against hand-computed
values and identities, finite gradients on degenerate boxes, and every NMS method
against a plain NumPy/Python reference loop."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks import boxes, nms

A = [0.0, 0.0, 10.0, 10.0]
B = [5.0, 0.0, 15.0, 10.0]  # IoU(A, B) = 50 / 150 = 1/3.

@jax.jit
def ious(a, b):
  """{kind: iou(a, b, kind)} for every kind: jitted as one (one compilation per shape)."""
  return {kind: boxes.iou(a, b, kind) for kind in boxes.KINDS}


OPTIONS = ('method', 'iou_threshold', 'score_threshold', 'pre_nms_top_k', 'max_detections',
           'diou_beta', 'soft_sigma', 'class_aware')
jit_nms = jax.jit(nms.nms, static_argnames=OPTIONS)  # Shared cache across the tests.


# ---------------------------------------------------------------------- conversions


def test_conversions_by_hand_and_round_trip():
  xyxy = jnp.array([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 1.0, 1.0]])
  cxcywh = boxes.xyxy_to_cxcywh(xyxy)
  np.testing.assert_allclose(cxcywh, [[20, 40, 20, 40], [0.5, 0.5, 1, 1]])
  np.testing.assert_allclose(boxes.cxcywh_to_xyxy(cxcywh), xyxy)
  rng = np.random.default_rng(0)
  random = np.sort(rng.uniform(0, 300, (2, 16, 4)).reshape(2, 16, 2, 2), axis=2)
  random = random.transpose(0, 1, 3, 2).reshape(2, 16, 4)  # x0 < x1, y0 < y1.
  np.testing.assert_allclose(boxes.cxcywh_to_xyxy(boxes.xyxy_to_cxcywh(random)), random,
                             rtol=1e-6, atol=1e-4)
  # normalize: x / width, y / height.
  np.testing.assert_allclose(boxes.normalize(jnp.array([10.0, 20.0, 30.0, 40.0]), 100, 200),
                             [0.05, 0.2, 0.15, 0.4], rtol=1e-6)
  # Per-image sizes broadcast against boxes[..., 0]: [2, 1] for boxes [2, 16, 4].
  h, w = np.array([[300.0], [150.0]]), np.array([[400.0], [200.0]])
  normal = boxes.normalize(random, h, w)
  np.testing.assert_allclose(normal[1, :, 0], random[1, :, 0] / 200, rtol=1e-6)
  np.testing.assert_allclose(normal[1, :, 3], random[1, :, 3] / 150, rtol=1e-6)
  np.testing.assert_allclose(boxes.denormalize(normal, h, w), random, rtol=1e-6, atol=1e-4)


def test_area_clamps_degenerate_boxes():
  got = boxes.area(jnp.array([[0.0, 0.0, 4.0, 3.0], [2.0, 2.0, 2.0, 5.0],
                              [5.0, 5.0, 1.0, 1.0], [1.0, 1.0, 4.0, 0.0]]))
  np.testing.assert_allclose(got, [12.0, 0.0, 0.0, 0.0])
  assert got.dtype == jnp.float32


# ---------------------------------------------------------------------- IoU family


def test_iou_by_hand():
  got = ious(jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]),
             jnp.array([[5.0, 5.0, 15.0, 15.0], [3.0, 0.0, 5.0, 2.0], [0.0, 0.0, 4.0, 4.0]]))
  # Overlap 25, union 175; disjoint boxes 1 pixel apart; nested 4 in 16.
  np.testing.assert_allclose(got['iou'], [25 / 175, 0.0, 0.25], rtol=1e-6)
  # GIoU = IoU - |C \ (A u B)| / |C|: C = [0, 15]^2 (225 - 175) / 225; [0, 5] x [0, 2]
  # (10 - 8) / 10; C = B for nested boxes.
  np.testing.assert_allclose(got['giou'], [25 / 175 - 50 / 225, -0.2, 0.25], rtol=1e-6)


def test_identical_boxes_give_one():
  b = jnp.array([[0.0, 0.0, 10.0, 10.0], [3.5, 1.0, 40.0, 7.25]])
  for kind, value in ious(b, b).items():
    np.testing.assert_allclose(value, [1.0, 1.0], rtol=1e-6, err_msg=kind)
    np.testing.assert_allclose(boxes.iou_loss(b, b, kind), [0.0, 0.0], atol=1e-6,
                               err_msg=kind)


def test_giou_at_most_iou_and_negative_far_apart():
  rng = np.random.default_rng(1)
  a = rng.uniform(0, 50, (200, 4))
  b = rng.uniform(0, 50, (200, 4))
  a[:, 2:] = a[:, :2] + rng.uniform(0, 30, (200, 2))
  b[:, 2:] = b[:, :2] + rng.uniform(0, 30, (200, 2))
  b[0] = [1000.0, 1000.0, 1001.0, 1001.0]  # Far from a[0].
  got = ious(a, b)
  plain, giou = np.asarray(got['iou']), np.asarray(got['giou'])
  assert np.all(giou <= plain + 1e-7)
  assert np.any(giou < plain - 0.1)  # Not trivially equal.
  assert np.all(giou[plain == 0] < 0)  # Every disjoint pair.
  assert giou[0] < -0.99


def test_diou_penalty_by_hand():
  # Centres (5, 5) and (10, 5): rho^2 = 25; enclosing box [0, 15] x [0, 10]: c^2 = 325.
  a, b = jnp.array(A), jnp.array(B)
  got = ious(a, b)
  np.testing.assert_allclose(boxes.distance_penalty(a, b), 25 / 325, rtol=1e-6)
  np.testing.assert_allclose(got['iou'] - got['diou'], 25 / 325, rtol=1e-5)
  np.testing.assert_allclose(got['diou'], 1 / 3 - 25 / 325, rtol=1e-6)


def test_ciou_equals_diou_for_equal_aspect_ratios():
  a = jnp.array([[0.0, 0.0, 4.0, 2.0], [3.0, 3.0, 6.0, 9.0]])
  b = jnp.array([[1.0, 1.0, 9.0, 5.0], [0.0, 1.0, 2.0, 5.0]])  # w/h: 2 = 8/4, 1/2 = 2/4.
  got = ious(a, b)
  np.testing.assert_allclose(got['ciou'], got['diou'], atol=1e-6)
  assert np.all(np.asarray(got['diou']) < np.asarray(got['iou']) - 0.01)  # Penalty is on.


# pred (w 4, h 2), target (w 2, h 4): inter 4, union 12, IoU 1/3; centres (2, 1) and
# (2, 2): rho^2 = 1; enclosing [0, 4]^2: c^2 = 32.
PRED, TARGET = jnp.array([0.0, 0.0, 4.0, 2.0]), jnp.array([1.0, 0.0, 3.0, 4.0])


def test_ciou_by_hand():
  v = 4 / math.pi ** 2 * (math.atan(2 / 4) - math.atan(4 / 2)) ** 2
  alpha = v / ((1 - 1 / 3) + v)
  want = 1 / 3 - 1 / 32 - alpha * v  # 0.26833...
  np.testing.assert_allclose(ious(PRED, TARGET)['ciou'], want, rtol=1e-5)
  np.testing.assert_allclose(boxes.iou_loss(PRED, TARGET, 'ciou'), 1 - want, rtol=1e-5)


def test_ciou_alpha_is_constant_in_the_gradient():
  # d CIoU / d pred = d DIoU / d pred - alpha dv / d pred, with alpha held fixed.
  def v_of(p):
    return 4 / math.pi ** 2 * (jnp.arctan(2.0 / 4.0) - jnp.arctan(
        (p[2] - p[0]) / (p[3] - p[1]))) ** 2

  @jax.jit
  def grads(p):
    v = v_of(p)
    alpha = v / ((1 - 1 / 3) + v)
    want = jax.grad(lambda q: boxes.iou(q, TARGET, 'diou'))(p) - alpha * jax.grad(v_of)(p)
    return jax.grad(lambda q: boxes.iou(q, TARGET, 'ciou'))(p), want

  got, want = grads(PRED)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


DEGENERATE = [  # (pred, target)
    ([3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]),  # Zero-size pred.
    ([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]),  # Identical points: C has area 0.
    ([1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 5.0]),  # Identical zero-width boxes.
    ([1.0, 1.0, 5.0, 1.0], [0.0, 0.0, 3.0, 3.0]),  # Zero height: w / h = w / eps.
    ([0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]),  # Identical: IoU 1, v 0.
    ([5.0, 5.0, 2.0, 2.0], [0.0, 0.0, 3.0, 3.0]),  # Inverted pred.
]


def test_loss_values_and_gradients_finite_for_degenerate_boxes():
  pred = jnp.array([p for p, _ in DEGENERATE])
  target = jnp.array([t for _, t in DEGENERATE])

  # One backward pass through the sum of the four losses: a sum of gradients is finite
  # only if each one is (inf + finite = inf, inf - inf = NaN), at a quarter of the
  # compilation time.
  total = lambda p, t: sum(boxes.iou_loss(p, t, kind).sum() for kind in boxes.KINDS)
  losses = jax.jit(lambda p, t: {kind: boxes.iou_loss(p, t, kind) for kind in boxes.KINDS})
  for kind, loss in losses(pred, target).items():
    assert np.all(np.isfinite(loss)), (kind, loss)
  for name, grad in zip(('pred', 'target'), jax.jit(jax.grad(total, (0, 1)))(pred, target)):
    assert np.all(np.isfinite(grad)), (name, grad)


def test_pairwise_equals_elementwise():
  rng = np.random.default_rng(2)
  a = rng.uniform(0, 20, (5, 4)).astype(np.float32)
  b = rng.uniform(0, 20, (7, 4)).astype(np.float32)
  a[:, 2:] += a[:, :2]
  b[:, 2:] += b[:, :2]
  pairwise = jax.jit(lambda a, b: {k: boxes.pairwise_iou(a, b, k) for k in boxes.KINDS})
  # Elementwise on the flattened grid: pair (i, j) at row 7 i + j.
  elementwise = ious(np.repeat(a, 7, axis=0), np.tile(b, (5, 1)))
  for kind, got in pairwise(a, b).items():
    assert got.shape == (5, 7)
    np.testing.assert_allclose(got, elementwise[kind].reshape(5, 7), rtol=1e-6, atol=1e-7,
                               err_msg=kind)
  assert np.ptp(np.asarray(elementwise['iou'])) > 0.1  # Some pairs overlap.


def test_unknown_kind():
  with pytest.raises(ValueError, match="'ciou'"):
    boxes.iou(jnp.array(A), jnp.array(B), 'eiou')


# ---------------------------------------------------------------------- NMS reference


def _ref_iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


def _ref_distance_ratio(a, b):
  rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + (
      (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
  c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
  return rho2 / c2


def reference_nms(box, score, cls, *, method, iou_threshold=0.5, score_threshold=0.001,
                  pre_nms_top_k=1000, max_detections=100, diou_beta=1.0, soft_sigma=0.5,
                  class_aware=True):
  """Straightforward loops in float64: returns [(input index, score)] in selection order."""
  box = [[float(x) for x in row] for row in box]
  order = sorted(range(len(score)), key=lambda i: -float(score[i]))
  order = [i for i in order if score[i] >= score_threshold][:pre_nms_top_k]
  remaining = {i: float(score[i]) for i in order}
  kept = []
  while remaining and len(kept) < max_detections:
    best = max(remaining, key=lambda i: remaining[i])
    kept.append((best, remaining.pop(best)))
    for i in list(remaining):
      if class_aware and cls[i] != cls[best]:
        continue
      overlap = _ref_iou(box[best], box[i])
      if method == 'greedy':
        drop = overlap > iou_threshold
      elif method == 'diou':
        drop = overlap - _ref_distance_ratio(box[best], box[i]) ** diou_beta > iou_threshold
      else:
        if method == 'soft_linear' and overlap >= iou_threshold:
          remaining[i] *= 1.0 - overlap
        elif method == 'soft_gaussian':
          remaining[i] *= math.exp(-overlap ** 2 / soft_sigma)
        drop = remaining[i] < score_threshold
      if drop:
        del remaining[i]
  return kept


def random_candidates(seed, n=48, num_classes=3):
  """Clusters of overlapping boxes, like a detector's raw output."""
  rng = np.random.default_rng(seed)
  centres = rng.uniform(20, 80, (4, 2))[rng.integers(0, 4, n)] + rng.normal(0, 4, (n, 2))
  sizes = rng.uniform(8, 30, (n, 2))
  box = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
  score = rng.uniform(0, 1, n)
  score[:4] = 0.0005  # Below the default score_threshold.
  return (box.astype(np.float32), score.astype(np.float32),
          rng.integers(0, num_classes, n).astype(np.int32))


def _check_against_reference(out, candidates, **options):
  box, score, cls = candidates
  want = reference_nms(box, score, cls, **options)
  count = len(want)
  valid = np.asarray(out['valid'])
  assert valid.tolist() == [True] * count + [False] * (len(valid) - count)
  np.testing.assert_array_equal(out['boxes'][:count], box[[i for i, _ in want]])
  np.testing.assert_allclose(out['scores'][:count], [s for _, s in want], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out['classes'][:count], cls[[i for i, _ in want]])
  # Padding rows: zeros.
  np.testing.assert_array_equal(out['boxes'][count:], 0)
  np.testing.assert_array_equal(out['scores'][count:], 0)
  np.testing.assert_array_equal(out['classes'][count:], 0)
  return count


@pytest.mark.parametrize('class_aware', [True, False])
@pytest.mark.parametrize('method', nms.METHODS)
def test_nms_matches_reference(method, class_aware):
  # max_detections 64 > the 40 that enter: every survivor is returned, then padding.
  options = dict(method=method, class_aware=class_aware, iou_threshold=0.45,
                 score_threshold=0.05, pre_nms_top_k=40, max_detections=64,
                 diou_beta=0.8 if method == 'diou' else 1.0, soft_sigma=0.5)
  fn = functools.partial(jit_nms, **options)
  for seed in range(3):
    candidates = random_candidates(seed)
    count = _check_against_reference(fn(*candidates), candidates, **options)
    # Not the trivial answer (the 40 top scores unchanged): boxes were suppressed or
    # scores decayed.
    kept = reference_nms(*candidates, **options)
    assert count < 40 or any(s != candidates[1][i] for i, s in kept)


def test_soft_nms_decay_by_hand():
  # A (0.9) and B (0.8) of one class, IoU 1/3; C (0.7) of another class overlaps both.
  box = jnp.array([A, B, [2.0, 0.0, 12.0, 10.0]])
  score = jnp.array([0.9, 0.8, 0.7])
  cls = jnp.array([0, 0, 1])
  lin = jit_nms(box, score, cls, method='soft_linear', iou_threshold=0.3, max_detections=4)
  np.testing.assert_allclose(lin['scores'], [0.9, 0.7, 0.8 * (1 - 1 / 3), 0.0], rtol=1e-6)
  np.testing.assert_array_equal(lin['classes'][:3], [0, 1, 0])
  np.testing.assert_array_equal(lin['valid'], [True, True, True, False])
  gauss = jit_nms(box, score, cls, method='soft_gaussian', soft_sigma=0.5, max_detections=4)
  np.testing.assert_allclose(gauss['scores'][:3], [0.9, 0.7, 0.8 * math.exp(-(1 / 9) / 0.5)],
                             rtol=1e-6)
  # Class-agnostic: A decays C (IoU 80 / 120 = 2/3) to 0.7 exp(-(4/9) / 0.5) = 0.288, below
  # B's 0.8 exp(-(1/9) / 0.5) = 0.641; then B (IoU with C = 70 / 130) decays C again.
  gauss = jit_nms(box, score, cls, method='soft_gaussian', soft_sigma=0.5, max_detections=4,
                  class_aware=False)
  c = 0.7 * math.exp(-(4 / 9) / 0.5) * math.exp(-(7 / 13) ** 2 / 0.5)
  np.testing.assert_allclose(gauss['scores'][:3], [0.9, 0.8 * math.exp(-(1 / 9) / 0.5), c],
                             rtol=1e-5)
  # A decayed score below score_threshold drops the box: B's 0.533 < 0.6.
  lin = jit_nms(box, score, cls, method='soft_linear', iou_threshold=0.3,
                score_threshold=0.6, max_detections=4)
  np.testing.assert_allclose(lin['scores'], [0.9, 0.7, 0.0, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(lin['valid'], [True, True, False, False])


def test_greedy_and_diou_nms_by_hand():
  # IoU(A, B) = 1/3 > 0.3, but IoU - rho^2 / c^2 = 1/3 - 25/325 = 0.256 < 0.3.
  box, score, cls = jnp.array([A, B]), jnp.array([0.9, 0.8]), jnp.array([0, 0])
  greedy = jit_nms(box, score, cls, method='greedy', iou_threshold=0.3, max_detections=3)
  np.testing.assert_array_equal(greedy['valid'], [True, False, False])
  diou = jit_nms(box, score, cls, method='diou', iou_threshold=0.3, max_detections=3)
  np.testing.assert_array_equal(diou['valid'], [True, True, False])
  np.testing.assert_allclose(diou['scores'], [0.9, 0.8, 0.0])
  # Other classes never suppress each other unless class_aware is False.
  other = jit_nms(box, score, jnp.array([0, 1]), iou_threshold=0.3, max_detections=3)
  np.testing.assert_array_equal(other['valid'], [True, True, False])
  agnostic = jit_nms(box, score, jnp.array([0, 1]), iou_threshold=0.3, max_detections=3,
                     class_aware=False)
  np.testing.assert_array_equal(agnostic['valid'], [True, False, False])


def test_fixed_output_size_and_padding():
  box, score, cls = random_candidates(5, n=6)
  out = jit_nms(box, score, cls, max_detections=10)
  assert out['boxes'].shape == (10, 4) and out['boxes'].dtype == jnp.float32
  assert out['scores'].shape == (10,) and out['scores'].dtype == jnp.float32
  assert out['classes'].shape == (10,) and out['classes'].dtype == jnp.int32
  assert out['valid'].shape == (10,) and out['valid'].dtype == jnp.bool_
  assert int(out['valid'].sum()) <= 6 - 4  # 4 of the 6 are below score_threshold.
  # No candidates at all.
  empty = nms.nms(jnp.zeros((0, 4)), jnp.zeros((0,)), jnp.zeros((0,), jnp.int32),
                  max_detections=3)
  assert empty['boxes'].shape == (3, 4) and not empty['valid'].any()
  # All below the threshold.
  low = jit_nms(box, np.full(6, 1e-4, np.float32), cls, max_detections=10)
  assert not low['valid'].any() and not low['scores'].any()


def test_batched_nms_equals_looping_and_truncates():
  cands = [random_candidates(seed) for seed in range(3)]
  box, score, cls = (np.stack(x) for x in zip(*cands))
  # max_detections 12 < the survivors: the output is truncated after 12 selections.
  options = dict(method='soft_gaussian', score_threshold=0.05, pre_nms_top_k=40,
                 max_detections=12)
  got = jax.jit(functools.partial(nms.batched_nms, **options))(box, score, cls)
  single = functools.partial(jit_nms, **options)
  for i, c in enumerate(cands):
    want = single(*c)
    for key in want:
      np.testing.assert_allclose(got[key][i], want[key], rtol=1e-6, err_msg=key)
    assert _check_against_reference(want, c, **options) == 12


def test_nms_rejects_bad_options():
  box, score, cls = random_candidates(0, n=4)
  with pytest.raises(ValueError, match='soft_gaussian'):
    nms.nms(box, score, cls, method='matrix')
  with pytest.raises(ValueError, match='iou_threshold'):
    nms.nms(box, score, cls, iou_threshold=-0.1)
  with pytest.raises(ValueError, match='score_threshold'):
    nms.batched_nms(box[None], score[None], cls[None], score_threshold=-1.0)
  with pytest.raises(ValueError, match='max_detections'):
    nms.nms(box, score, cls, max_detections=0)
  with pytest.raises(ValueError, match='shape|needs'):
    nms.nms(box, score[:3], cls)
  with pytest.raises(ValueError, match='soft_sigma'):
    nms.check_options(method='diou', soft_sigma=0.0)
  with pytest.raises(ValueError, match='class_aware'):  # Listed among the valid names.
    nms.check_options(iou_treshold=0.5)
  nms.check_options(method='soft_linear', iou_threshold=0.3, class_aware=False)
