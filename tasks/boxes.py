"""Box geometry for detection: conversions, areas and the IoU family, as metrics and
as losses.

Boxes are float32 [..., 4] in xyxy pixel-edge coordinates (x0, y0, x1, y1) with x1, y1
exclusive: width = x1 - x0 pixels; a pixel (row r, col c) covers [c, c+1) x [r, r+1).
cxcywh is (centre x, centre y, width, height) in the same units. Everything is
jax.numpy, jit-able and differentiable; widths and heights are clamped at 0, so a
degenerate box (x1 <= x0 or y1 <= y0) has area 0.

The IoU family (`iou`, `pairwise_iou`, `iou_loss`), with A = a and B = b:

  'iou'   |A n B| / |A u B|.
  'giou'  IoU - |C \\ (A u B)| / |C|, C the smallest enclosing box (Rezatofighi et al.
          2019, "Generalized Intersection over Union", CVPR, Alg. 1). In (-1, 1].
  'diou'  IoU - rho^2(b, b_gt) / c^2, rho the distance between the box centres and c
          the diagonal of C (Zheng et al. 2020, "Distance-IoU Loss", AAAI, Eq. 6).
  'ciou'  DIoU - alpha v, v = 4 / pi^2 (arctan(w_gt / h_gt) - arctan(w / h))^2,
          alpha = v / ((1 - IoU) + v) (same paper, Eq. 8-11).

All four are symmetric in value; b plays the ground truth b_gt of the papers (pass the
target as b). The loss is 1 - value (`iou_loss`).

Degenerate inputs (zero width or height, identical points, a zero-area enclosing box)
give finite values and finite gradients: every division adds eps to a non-negative
denominator, the aspect ratios are w / (h + eps), and nothing takes a square root
(the DIoU term uses squared distances directly).
"""

import math

import jax
import jax.numpy as jnp

KINDS = ('iou', 'giou', 'diou', 'ciou')


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _check_boxes(boxes: jax.Array, name: str = 'boxes') -> None:
  if boxes.ndim < 1 or boxes.shape[-1] != 4:
    raise ValueError(f'{name} must have shape [..., 4]; got {boxes.shape}')


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f'Unknown IoU kind {kind!r}; valid: {list(KINDS)}')


def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """[..., 4] (x0, y0, x1, y1) -> [..., 4] float32 (cx, cy, w, h); w, h not clamped."""
  boxes = _f32(boxes)
  _check_boxes(boxes)
  x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """[..., 4] (cx, cy, w, h) -> [..., 4] float32 (x0, y0, x1, y1)."""
  boxes = _f32(boxes)
  _check_boxes(boxes)
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def normalize(boxes: jax.Array, height, width) -> jax.Array:
  """Pixel boxes [..., 4] -> fractions of the image [..., 4] float32.

  x / width, y / height: a box covering the whole image becomes (0, 0, 1, 1).
  height, width: Python numbers or arrays broadcastable against boxes[..., 0] (e.g.
  [b, 1] for boxes [b, n, 4] of b images of different sizes).
  """
  boxes = _f32(boxes)
  _check_boxes(boxes)
  h, w = _f32(height), _f32(width)
  x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([x0 / w, y0 / h, x1 / w, y1 / h], axis=-1)


def denormalize(boxes: jax.Array, height, width) -> jax.Array:
  """Fractions of the image [..., 4] -> pixel boxes [..., 4] float32 (inverse of
  `normalize`; same height, width broadcasting)."""
  boxes = _f32(boxes)
  _check_boxes(boxes)
  h, w = _f32(height), _f32(width)
  x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([x0 * w, y0 * h, x1 * w, y1 * h], axis=-1)


def _width_height(boxes: jax.Array):
  """Widths and heights [...] clamped at 0 (degenerate boxes have zero extent)."""
  x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
  return jnp.maximum(x1 - x0, 0.0), jnp.maximum(y1 - y0, 0.0)


def area(boxes: jax.Array) -> jax.Array:
  """[..., 4] xyxy -> [...] float32 areas, 0 for degenerate boxes (x1 <= x0 or y1 <= y0)."""
  boxes = _f32(boxes)
  _check_boxes(boxes)
  w, h = _width_height(boxes)
  return w * h


def _terms(a: jax.Array, b: jax.Array, eps: float) -> dict:
  """The shared quantities of the IoU family for broadcast a, b [..., 4] float32."""
  ax0, ay0, ax1, ay1 = jnp.moveaxis(a, -1, 0)
  bx0, by0, bx1, by1 = jnp.moveaxis(b, -1, 0)
  aw, ah = _width_height(a)
  bw, bh = _width_height(b)
  inter = (jnp.maximum(jnp.minimum(ax1, bx1) - jnp.maximum(ax0, bx0), 0.0) *
           jnp.maximum(jnp.minimum(ay1, by1) - jnp.maximum(ay0, by0), 0.0))
  union = aw * ah + bw * bh - inter
  # Enclosing box C; clamped so that degenerate (inverted) boxes cannot make it negative.
  cw = jnp.maximum(jnp.maximum(ax1, bx1) - jnp.minimum(ax0, bx0), 0.0)
  ch = jnp.maximum(jnp.maximum(ay1, by1) - jnp.minimum(ay0, by0), 0.0)
  # Squared centre distance rho^2: ((ax0 + ax1) - (bx0 + bx1))^2 / 4 per axis.
  rho2 = ((ax0 + ax1 - bx0 - bx1) ** 2 + (ay0 + ay1 - by0 - by1) ** 2) / 4.0
  return {'inter': inter, 'union': union, 'iou': inter / (union + eps),
          'enclosing_area': cw * ch, 'c2': cw ** 2 + ch ** 2, 'rho2': rho2,
          'aw': aw, 'ah': ah, 'bw': bw, 'bh': bh}


def _prepare(a, b):
  a, b = _f32(a), _f32(b)
  _check_boxes(a, 'a')
  _check_boxes(b, 'b')
  return a, b


def distance_penalty(a: jax.Array, b: jax.Array, eps: float = 1e-7) -> jax.Array:
  """The DIoU penalty rho^2(a, b) / c^2 (Zheng et al. 2020, Eq. 6), broadcast a, b
  [..., 4] xyxy -> [...] float32 in [0, 1): the squared distance between the box
  centres over the squared diagonal of the smallest enclosing box (+ eps)."""
  a, b = _prepare(a, b)
  t = _terms(a, b, eps)
  return t['rho2'] / (t['c2'] + eps)


def iou(a: jax.Array, b: jax.Array, kind: str = 'iou', eps: float = 1e-7) -> jax.Array:
  """IoU, GIoU, DIoU or CIoU of broadcast boxes a, b [..., 4] xyxy -> [...] float32.

  Formulas and references: module docstring. b is the ground truth (target): the
  values are symmetric, but CIoU's names follow the paper's b_gt.

  CIoU: alpha is held constant in the gradient (jax.lax.stop_gradient), as in the
  authors' implementation. Unlike that implementation, the gradient of v is the exact
  one: the paper (remark on the gradient of v) and its code also drop the factor
  1 / (w^2 + h^2) from dv/dw and dv/dh, because it is large for w, h in [0, 1]; here
  it is kept, which for pixel-sized boxes damps v's gradient rather than inflating it.

  Raises ValueError for a kind not in KINDS.
  """
  _check_kind(kind)
  a, b = _prepare(a, b)
  t = _terms(a, b, eps)
  value = t['iou']
  if kind == 'giou':
    # |C \ (A u B)| / |C|; a zero-area C (both boxes collapse onto one line or point)
    # gives 0 / eps = 0.
    value = value - (t['enclosing_area'] - t['union']) / (t['enclosing_area'] + eps)
  elif kind in ('diou', 'ciou'):
    value = value - t['rho2'] / (t['c2'] + eps)
  if kind == 'ciou':
    v = (4.0 / math.pi ** 2) * (jnp.arctan(t['bw'] / (t['bh'] + eps)) -
                                jnp.arctan(t['aw'] / (t['ah'] + eps))) ** 2
    alpha = jax.lax.stop_gradient(v / ((1.0 - t['iou']) + v + eps))
    value = value - alpha * v
  return value


def pairwise_iou(a: jax.Array, b: jax.Array, kind: str = 'iou',
                 eps: float = 1e-7) -> jax.Array:
  """`iou` of every box of a [n, 4] with every box of b [m, 4] -> [n, m] float32."""
  a, b = _prepare(a, b)
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(f'pairwise_iou needs a [n, 4] and b [m, 4]; got {a.shape}, {b.shape}')
  return iou(a[:, None, :], b[None, :, :], kind, eps)


def iou_loss(pred: jax.Array, target: jax.Array, kind: str = 'iou',
             eps: float = 1e-7) -> jax.Array:
  """1 - iou(pred, target, kind): the IoU / GIoU / DIoU / CIoU loss, broadcast
  [..., 4] xyxy -> [...] float32 in [0, 2) (in [0, 1] for 'iou'). The gradient flows
  to both arguments; stop it on target if that is not a constant."""
  return 1.0 - iou(pred, target, kind, eps)
