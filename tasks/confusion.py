"""Exact segmentation metrics from a confusion matrix.

On device, `confusion_matrix` counts one batch; the caller sums the per-batch matrices
(across devices and batches) and the host turns the total into mean IoU, pixel
accuracy and Dice (`segmentation_metrics`). Counting first and dividing once at the end
gives the exact dataset-level metrics of PASCAL VOC and Cityscapes (intersections and
unions summed over the whole split), not a mean of per-batch ratios.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, predictions: jax.Array, weights: jax.Array,
                     num_classes: int, dtype=jnp.int32) -> jax.Array:
  """Pixel counts [num_classes, num_classes]: entry [t, p] sums `weights` over the pixels
  with true class t and predicted class p.

  labels, predictions: [batch, height, width] int32 class ids; weights: [batch, height,
  width] float32, 0 for padding and ignore-label pixels (whose labels may be out of
  range, e.g. 255: they are clipped into range and add 0). Jit-able; num_classes static.

  dtype int32 (default): weights are pixel counts (0 or 1; rounded to integers) and
  the matrix is exact up to 2^31 per entry, so per-batch matrices summed on device stay
  exact over a whole eval split (float32 sums stop being exact past 2^24 = 16.8M pixels,
  about 64 VOC images at 512x512). dtype float32 keeps fractional weights (exact for
  integer counts up to 2^24 per entry).

  Implementation: a scatter-add of the weights at index t * num_classes + p over the
  flattened pixels. On this CPU (jaxlib 0.10.2, 32x64x64 pixels) it took 0.2-0.3 ms
  for 2 and 21 classes against 1.3 and 8 ms for the one-hot einsum.
  """
  t = jnp.clip(labels, 0, num_classes - 1).reshape(-1)
  p = jnp.clip(predictions, 0, num_classes - 1).reshape(-1)
  w = weights.reshape(-1)
  w = jnp.round(w).astype(dtype) if jnp.issubdtype(dtype, jnp.integer) else w.astype(dtype)
  counts = jnp.zeros(num_classes * num_classes, dtype).at[t * num_classes + p].add(w)
  return counts.reshape(num_classes, num_classes)


def segmentation_metrics(matrix: np.ndarray, class_names=None) -> dict:
  """Mean IoU, pixel accuracy and Dice from a confusion matrix (host, NumPy).

  matrix: [num_classes, num_classes], entry [t, p] the number of pixels of true class
  t predicted as p (`confusion_matrix`, summed over the split). class_names: optional
  sequence of num_classes names for the per-class keys (default: the class index).

  Per class c: IoU_c = TP / (TP + FP + FN) (the PASCAL VOC "Jaccard index"), Dice_c =
  2 TP / (2 TP + FP + FN) (the F1 score). Returns floats:
    'miou': mean IoU over the classes with a nonzero union TP + FP + FN; classes absent
      from both the labels and the predictions are excluded (their IoU is undefined).
    'mean_dice': mean Dice over the same classes.
    'pixel_accuracy': trace / total.
    'iou/<name>', 'dice/<name>': per class; NaN for a class with a zero union.
  All NaN when the matrix is all zeros. Raises ValueError for a non-square matrix or
  a class_names of the wrong length.
  """
  matrix = np.asarray(matrix, np.float64)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise ValueError(f'Confusion matrix must be square [C, C]; got shape {matrix.shape}')
  num_classes = matrix.shape[0]
  names = list(range(num_classes)) if class_names is None else list(class_names)
  if len(names) != num_classes:
    raise ValueError(f'{len(names)} class names for {num_classes} classes')
  tp = np.diag(matrix)
  fp = matrix.sum(axis=0) - tp  # Predicted c, true class another.
  fn = matrix.sum(axis=1) - tp  # True c, predicted another.
  union = tp + fp + fn
  present = union > 0
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(present, tp / union, np.nan)
    dice = np.where(present, 2 * tp / (union + tp), np.nan)
    accuracy = tp.sum() / matrix.sum()
  nan = float('nan')
  out = {'miou': float(iou[present].mean()) if present.any() else nan,
         'mean_dice': float(dice[present].mean()) if present.any() else nan,
         'pixel_accuracy': float(accuracy)}
  for name, i, d in zip(names, iou, dice):
    out[f'iou/{name}'] = float(i)
    out[f'dice/{name}'] = float(d)
  return out
