"""Non-maximum suppression with a fixed output size, jit-able and vmap-able.

Methods (METHODS), each a loop of max_detections selections: take the remaining box
with the highest (current) score, then update the other remaining boxes against it
(M the selected box, b_i another box, only of M's class when class_aware):

  'greedy'         hard NMS: drop b_i if IoU(M, b_i) > iou_threshold.
  'diou'           DIoU-NMS (Zheng et al. 2020, "Distance-IoU Loss", AAAI, Sec.
                   "Non-Maximum Suppression using DIoU", Eq. 12): drop b_i if
                   IoU - (rho^2 / c^2)^beta > iou_threshold, rho the distance between
                   the centres, c the diagonal of the enclosing box, beta = diou_beta.
                   (Eq. 12 writes >= eps; > keeps the same convention as 'greedy', and
                   the two differ only at exact equality.)
  'soft_linear'    Soft-NMS (Bodla et al. 2017, "Soft-NMS", ICCV, Eq. 2):
                   s_i *= 1 - IoU(M, b_i) when IoU >= iou_threshold (N_t).
  'soft_gaussian'  Soft-NMS (same paper, Eq. 3): s_i *= exp(-IoU(M, b_i)^2 / sigma),
                   sigma = soft_sigma.

A box is a candidate while its (for Soft-NMS decayed) score is >= score_threshold;
one that falls below is dropped. Before the loop, only the pre_nms_top_k highest
scores at or above score_threshold are kept (jax.lax.top_k). The loop is a
jax.lax.while_loop of at most max_detections steps of O(k) work each.

Output: a dict of fixed-size arrays, rows in the order of selection (descending score
for 'greedy' and 'diou'; descending decayed score at the time of selection for
Soft-NMS):

  'boxes': [max_detections, 4] float32 xyxy, 'scores': [max_detections] float32 (the
  decayed score for Soft-NMS), 'classes': [max_detections] int32, 'valid':
  [max_detections] bool.

Padding rows (fewer survivors than max_detections) have valid False, score 0, box
(0, 0, 0, 0) and class 0: zeros, so that they are safe to gather with; test `valid`,
not the class.

The options are Python values checked before tracing; under jax.jit pass them through
functools.partial (or static_argnames), e.g.
jax.jit(functools.partial(nms.nms, method='diou', max_detections=100)).
"""

import functools

import jax
import jax.numpy as jnp

from tasks import boxes as box_ops

METHODS = ('greedy', 'diou', 'soft_linear', 'soft_gaussian')


def _check_options(method, iou_threshold, score_threshold, pre_nms_top_k,
                   max_detections, diou_beta, soft_sigma):
  if method not in METHODS:
    raise ValueError(f'Unknown NMS method {method!r}; valid: {list(METHODS)}')
  for name, value in (('iou_threshold', iou_threshold),
                      ('score_threshold', score_threshold), ('diou_beta', diou_beta)):
    if value < 0:
      raise ValueError(f'{name} must be >= 0; got {value}')
  if soft_sigma <= 0:
    raise ValueError(f'soft_sigma must be > 0; got {soft_sigma}')
  for name, value in (('max_detections', max_detections), ('pre_nms_top_k', pre_nms_top_k)):
    if int(value) != value or value < 1:
      raise ValueError(f'{name} must be an integer >= 1; got {value}')


def _padding(max_detections: int) -> dict:
  return {'boxes': jnp.zeros((max_detections, 4), jnp.float32),
          'scores': jnp.zeros((max_detections,), jnp.float32),
          'classes': jnp.zeros((max_detections,), jnp.int32),
          'valid': jnp.zeros((max_detections,), bool)}


def nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array, *,
        method: str = 'greedy', iou_threshold: float = 0.5,
        score_threshold: float = 0.001, pre_nms_top_k: int = 1000,
        max_detections: int = 100, diou_beta: float = 1.0, soft_sigma: float = 0.5,
        class_aware: bool = True) -> dict:
  """NMS of one image's candidates (methods, output and padding: module docstring).

  Args:
    boxes: [n, 4] float32 xyxy.
    scores: [n] float32.
    classes: [n] int32.
    method: one of METHODS.
    iou_threshold: >= 0; the suppression threshold ('greedy', 'diou') or N_t
      ('soft_linear'); unused by 'soft_gaussian'.
    score_threshold: >= 0; boxes with a (decayed) score below it are dropped.
    pre_nms_top_k: >= 1; only the k = min(pre_nms_top_k, n) highest scores at or
      above score_threshold enter the loop.
    max_detections: >= 1; the number of output rows.
    diou_beta: >= 0, the exponent of the DIoU-NMS distance term.
    soft_sigma: > 0, the Gaussian Soft-NMS sigma.
    class_aware: True: only boxes of the same class suppress (or decay) each other;
      False: all boxes together, whatever their classes.

  Returns:
    {'boxes': [max_detections, 4] float32, 'scores': [max_detections] float32,
     'classes': [max_detections] int32, 'valid': [max_detections] bool}.

  Raises ValueError (before tracing) for an unknown method, a negative threshold,
  max_detections or pre_nms_top_k < 1, soft_sigma <= 0, or mismatched shapes.
  """
  _check_options(method, iou_threshold, score_threshold, pre_nms_top_k, max_detections,
                 diou_beta, soft_sigma)
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  classes = jnp.asarray(classes, jnp.int32)
  n = boxes.shape[0] if boxes.ndim else -1
  if boxes.shape != (n, 4) or scores.shape != (n,) or classes.shape != (n,):
    raise ValueError('nms needs boxes [n, 4], scores [n] and classes [n]; got '
                     f'{boxes.shape}, {scores.shape}, {classes.shape}')
  if n == 0:
    return _padding(max_detections)

  k = min(int(pre_nms_top_k), n)
  # Below-threshold scores become -inf so that top_k prefers every passing box.
  top_scores, top_index = jax.lax.top_k(
      jnp.where(scores >= score_threshold, scores, -jnp.inf), k)
  cand_boxes = boxes[top_index]
  cand_classes = classes[top_index]
  alive = top_scores >= score_threshold
  current = jnp.where(alive, top_scores, 0.0)  # Finite: decays never meet -inf * 0.

  def cond(state):
    i, alive, *_ = state
    return (i < max_detections) & alive.any()

  def body(state):
    i, alive, current, out_index, out_score = state
    j = jnp.argmax(jnp.where(alive, current, -jnp.inf))
    out_index = out_index.at[i].set(j)
    out_score = out_score.at[i].set(current[j])
    overlap = box_ops.iou(cand_boxes[j], cand_boxes)  # (k,)
    affected = cand_classes == cand_classes[j] if class_aware else jnp.ones(k, bool)
    if method == 'greedy':
      alive = alive & ~(affected & (overlap > iou_threshold))
    elif method == 'diou':
      penalty = box_ops.distance_penalty(cand_boxes[j], cand_boxes) ** diou_beta
      alive = alive & ~(affected & (overlap - penalty > iou_threshold))
    else:
      if method == 'soft_linear':
        decay = jnp.where(overlap >= iou_threshold, 1.0 - overlap, 1.0)
      else:
        decay = jnp.exp(-overlap ** 2 / soft_sigma)
      current = jnp.where(affected, current * decay, current)
      alive = alive & (current >= score_threshold)
    alive = alive.at[j].set(False)
    return i + 1, alive, current, out_index, out_score

  state = (jnp.int32(0), alive, current, jnp.zeros(max_detections, jnp.int32),
           jnp.zeros(max_detections, jnp.float32))
  count, _, _, out_index, out_score = jax.lax.while_loop(cond, body, state)
  valid = jnp.arange(max_detections) < count
  return {'boxes': jnp.where(valid[:, None], cand_boxes[out_index], 0.0),
          'scores': jnp.where(valid, out_score, 0.0),
          'classes': jnp.where(valid, cand_classes[out_index], 0),
          'valid': valid}


def batched_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array,
                **options) -> dict:
  """`nms` over a batch of images (jax.vmap): boxes [b, n, 4] float32, scores [b, n]
  float32, classes [b, n] int32, the same keyword options -> the dict of `nms` with a
  leading batch axis ([b, max_detections, ...])."""
  check_options(**options)
  return jax.vmap(functools.partial(nms, **options))(boxes, scores, classes)


_DEFAULTS = dict(nms.__kwdefaults__)


def check_options(**options) -> None:
  """The checks `nms` runs before tracing, for configs: raises ValueError for a name
  that is not an option of `nms` (listing the valid ones) or an invalid value.
  Options left out take nms's defaults."""
  unknown = sorted(set(options) - set(_DEFAULTS))
  if unknown:
    raise ValueError(f'Unknown NMS option(s) {unknown}; valid: {sorted(_DEFAULTS)}')
  o = dict(_DEFAULTS, **options)
  _check_options(o['method'], o['iou_threshold'], o['score_threshold'], o['pre_nms_top_k'],
                 o['max_detections'], o['diou_beta'], o['soft_sigma'])
