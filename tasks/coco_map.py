"""COCO-style detection metrics: AP@[.5:.95], AP50, AP75, AP by object size, AR.

The definitions are those of the COCO detection evaluation (Lin et al. 2014, "Microsoft
COCO: Common Objects in Context"; cocodataset.org/#detection-eval), computed by
faster-coco-eval's `COCOeval_faster`, a C++ port of pycocotools' COCOeval with the same
matching and accumulation:

- Per image and class, detections in decreasing score order are matched greedily to the
  unmatched ground truth box of highest IoU >= t (IoU exactly t matches), for the ten
  thresholds t = .50, .55, ..., .95.
- Per class and threshold, precision is made monotone (the maximum precision at any
  higher recall) and read at the 101 recall points 0, .01, ..., 1 (0 past the highest
  recall reached): AP is the mean of these 101 values. AP is then averaged over the
  classes that have ground truth (and over the thresholds for AP@[.5:.95]).
- AP50_11pt: AP50 with the 11-point interpolation of PASCAL VOC 2007 (Everingham et al.
  2010, Secs. 4.1-4.2; the VOC devkit until 2010 changed it, and the number YOLO, SSD and
  Faster R-CNN papers report as "VOC 2007 test mAP"): the monotone precision read at the
  recall points 0, .1, ..., 1 (11 of COCO's 101), averaged over them and the classes.
  The matching stays COCO's (above): the VOC devkit differs in counting a detection
  whose best-overlapping box is already taken as a false positive (COCO tries the next
  unmatched box) and in requiring IoU > .5 (COCO >= .5), so on VOC this number can
  differ slightly from the devkit's.
- AR1 / AR10 / AR100: the recall with the top 1 / 10 / 100 detections per image *and
  class* (pycocotools' cut), averaged over thresholds and classes.
- AP_small / AP_medium / AP_large: ground truth of area < 32^2, 32^2..96^2, > 96^2 pixels^2
  (box w * h, in the pixels of the evaluated images: a model evaluated at 416x416 and one
  at 64x64 put the same objects in different ranges); other ground truth is ignored and
  unmatched detections outside the range are not counted.

Undefined values are NaN where COCO reports -1 (as tasks.confusion does for a class
without pixels): a class without ground truth boxes is left out of every mean (its
detections count nowhere) and its 'AP50/<name>' is NaN; an area range without ground
truth gives NaN; an evaluation without any ground truth box gives NaN for every metric.
NaN rather than 0.0, so that "nothing to measure" is not read as "detected nothing".

Difficult boxes (PASCAL VOC, Everingham et al. 2010, and its devkit's evaluation) are
neither ground truth nor false-positive sources: a detection matched to one counts
neither as a true nor as a false positive, and any number of detections may match the
same difficult box. In COCO's evaluator that is the handling of crowd boxes (`iscrowd`:
ignored, matched any number of times, tried only when no regular box matches).
faster-coco-eval (like pycocotools) overwrites any 'ignore' field of the ground truth
with `iscrowd` before matching, so difficult boxes are passed as crowd boxes. COCO
measures a crowd box's overlap by the intersection over the *detection's* area (a small
detection inside a crowd region is ignored); VOC uses the plain IoU against difficult
boxes. `difficult_overlap` picks which: 'iou' (default, VOC's rule) or 'iod' (COCO's rule
for crowd boxes, e.g. TFDS coco is_crowd passed as 'difficult'). One difference from VOC
remains: VOC gives a detection to the box of highest overlap, difficult or not, while
COCO tries the regular boxes first.

At most `max_detections` detections per image are kept (the highest scores), as the
COCO detection challenge requires of its submissions.

Cost: 5000 images x 100 detections, 20 classes took 10-14 s on this 2-core CPU, about
2 s of it building the annotation dicts here and the rest in faster-coco-eval.
"""

from typing import Sequence

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as coco_mask

DIFFICULT_OVERLAPS = ('iou', 'iod')
AREA_RANGES = ('small', 'medium', 'large')


def _quiet(*args, **kwargs):
  del args, kwargs


class _PlainIoUEval(COCOeval_faster):
  """COCOeval_faster with plain IoU against crowd (here: difficult) boxes.

  Only the overlap changes: the matcher still reads 'ignore' (set from iscrowd) and the
  crowd flag (a crowd box may take several detections). The detections are ordered and
  cut as COCOeval's computeIoU does (stable sort by decreasing score, maxDets[-1]), so
  the rows line up with the C++ matcher's.
  """

  def computeIoU(self, imgId, catId):  # pylint: disable=invalid-name
    gt = self.gt_dataset.get(imgId, catId)
    dt = self.dt_dataset.get(imgId, catId)
    if not gt or not dt:
      return []
    order = np.argsort([-d['score'] for d in dt], kind='mergesort')[:self.params.maxDets[-1]]
    return coco_mask.iou([dt[i]['bbox'] for i in order], [g['bbox'] for g in gt],
                         [0] * len(gt))


def _xywh(boxes: np.ndarray) -> np.ndarray:
  """[n, 4] xyxy pixel-edge -> [n, 4] float64 COCO (x, y, width, height)."""
  boxes = boxes.astype(np.float64)
  return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _check_boxes(boxes, what: str, index: int) -> np.ndarray:
  boxes = np.asarray(boxes, np.float32)
  if boxes.size == 0:
    boxes = boxes.reshape(0, 4)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f'{what}[{index}]["boxes"] must be [n, 4] (x0, y0, x1, y1), '
                     f'got shape {boxes.shape}')
  if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
    raise ValueError(f'{what}[{index}]["boxes"] must be finite with x1 >= x0 and y1 >= y0')
  return boxes


def _check_classes(classes, n: int, num_classes: int, what: str, index: int) -> np.ndarray:
  classes = np.asarray(classes).reshape(-1)
  if classes.shape[0] != n:
    raise ValueError(f'{what}[{index}] has {n} boxes but {classes.shape[0]} classes')
  if n and (classes.min() < 0 or classes.max() >= num_classes):
    raise ValueError(f'{what}[{index}]["classes"] must be in [0, {num_classes}), got '
                     f'values in [{classes.min()}, {classes.max()}]')
  return classes.astype(np.int64)


def _image_ids(counts: Sequence[int]) -> np.ndarray:
  """COCO image ids 1..N repeated per box (ids start at 1: 0 means 'none' to COCO tools)."""
  return np.repeat(np.arange(1, len(counts) + 1), counts)


def _annotations(boxes: list, classes: list, **fields) -> list:
  """COCO annotation dicts of per-image boxes [n_i, 4] and classes [n_i] (0-based), with
  per-box `fields` (name -> per-image arrays), numbered from 1 in image order."""
  image_ids = _image_ids([len(b) for b in boxes])
  if not len(image_ids):
    return []
  xywh = _xywh(np.concatenate(boxes))
  columns = {name: np.concatenate(values).tolist() for name, values in fields.items()}
  return [{'id': k + 1, 'image_id': image, 'category_id': c + 1, 'bbox': box,
           'area': box[2] * box[3], **{name: column[k] for name, column in columns.items()}}
          for k, (image, c, box) in enumerate(zip(image_ids.tolist(),
                                                  np.concatenate(classes).tolist(),
                                                  xywh.tolist()))]


def _ground_truth_annotations(ground_truth, num_classes: int) -> list:
  boxes, classes, difficult = [], [], []
  for i, g in enumerate(ground_truth):
    b = _check_boxes(g['boxes'], 'ground_truth', i)
    boxes.append(b)
    classes.append(_check_classes(g['classes'], len(b), num_classes, 'ground_truth', i))
    d = np.asarray(g.get('difficult', np.zeros(len(b), bool)), bool).reshape(-1)
    if d.shape[0] != len(b):
      raise ValueError(f'ground_truth[{i}] has {len(b)} boxes but {d.shape[0]} difficult flags')
    difficult.append(d)
  return _annotations(boxes, classes, iscrowd=[d.astype(np.int64) for d in difficult])


def _detection_annotations(detections, num_classes: int, max_detections: int) -> list:
  boxes, scores, classes = [], [], []
  for i, d in enumerate(detections):
    b = _check_boxes(d['boxes'], 'detections', i)
    s = np.asarray(d['scores'], np.float64).reshape(-1)
    if s.shape[0] != len(b):
      raise ValueError(f'detections[{i}] has {len(b)} boxes but {s.shape[0]} scores')
    c = _check_classes(d['classes'], len(b), num_classes, 'detections', i)
    if len(b) > max_detections:
      # The top max_detections scores, kept in their original order: COCO's stable sorts
      # then break score ties as they would have without the cut.
      keep = np.sort(np.argsort(-s, kind='stable')[:max_detections])
      b, s, c = b[keep], s[keep], c[keep]
    boxes.append(b)
    scores.append(s)
    classes.append(c)
  return _annotations(boxes, classes, score=scores,
                      iscrowd=[np.zeros(len(b), np.int64) for b in boxes])


def _mean_defined(values: np.ndarray) -> float:
  """The mean of the entries COCO defines (> -1; -1 marks "no ground truth"), else NaN."""
  defined = values[values > -1]
  return float(defined.mean()) if defined.size else float('nan')


def evaluate(ground_truth: Sequence[dict], detections: Sequence[dict], num_classes: int,
             class_names: Sequence[str] | None = None, max_detections: int = 100,
             difficult_overlap: str = 'iou') -> dict:
  """COCO detection metrics of `detections` against `ground_truth` (module docstring).

  ground_truth: one dict per image: 'boxes' [n, 4] float32 (x0, y0, x1, y1) pixel-edge
    coordinates, 'classes' [n] int32 in [0, num_classes), optionally 'difficult' [n] bool
    (VOC difficult or COCO crowd boxes). n may be 0: the image still counts.
  detections: one dict per image, in the same order: 'boxes' [m, 4] float32 (same
    coordinates), 'scores' [m] float32, 'classes' [m] int32 in [0, num_classes).
  num_classes: the number of classes; class_names: optional, one per class, adds
    'AP50/<name>' per class.
  max_detections: detections kept per image (highest scores), >= 1; COCO's AP uses 100.
  difficult_overlap: 'iou' (VOC) or 'iod' (COCO crowd): the overlap with difficult boxes.

  Returns {name: float}: 'AP' (AP@[.5:.95]), 'AP50', 'AP75', 'AP50_11pt' (VOC 2007's
  11-point AP50), 'AP_small', 'AP_medium',
  'AP_large', 'AR1', 'AR10', f'AR{max_detections}' (COCO's 'AR100'; AR counts above
  max_detections are left out), and 'AP50/<name>' per class when class_names is given;
  NaN where undefined (no ground truth). Raises ValueError for lists of different
  lengths, classes out of range, malformed boxes or arguments.
  """
  if len(ground_truth) != len(detections):
    raise ValueError(f'ground_truth has {len(ground_truth)} images but detections has '
                     f'{len(detections)}; they must be the same images in the same order')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}')
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f'class_names has {len(class_names)} names for {num_classes} classes')
  if max_detections < 1:
    raise ValueError(f'max_detections must be >= 1, got {max_detections}')
  if difficult_overlap not in DIFFICULT_OVERLAPS:
    raise ValueError(f'difficult_overlap must be one of {DIFFICULT_OVERLAPS}, got '
                     f'{difficult_overlap!r}')

  gt_annotations = _ground_truth_annotations(ground_truth, num_classes)
  dt_annotations = _detection_annotations(detections, num_classes, max_detections)
  max_dets = sorted({m for m in (1, 10, max_detections) if m <= max_detections})
  ar_names = [f'AR{m}' for m in max_dets]
  names = ['AP', 'AP50', 'AP75', 'AP50_11pt'] + [f'AP_{a}' for a in AREA_RANGES] + ar_names
  per_class = [f'AP50/{n}' for n in class_names] if class_names is not None else []
  if not gt_annotations:  # COCO defines nothing (all -1); skip the library.
    return {name: float('nan') for name in names + per_class}

  # Images without boxes must be listed: their detections are false positives.
  images = [{'id': i} for i in range(1, len(ground_truth) + 1)]
  categories = [{'id': c + 1, 'name': str(c)} for c in range(num_classes)]
  coco_gt = COCO({'images': images, 'categories': categories, 'annotations': gt_annotations},
                 print_function=_quiet)
  coco_dt = COCO({'images': images, 'categories': categories, 'annotations': dt_annotations},
                 print_function=_quiet)
  evaluator_class = _PlainIoUEval if difficult_overlap == 'iou' else COCOeval_faster
  evaluator = evaluator_class(coco_gt, coco_dt, 'bbox', print_function=_quiet)
  evaluator.params.maxDets = max_dets
  evaluator.evaluate()
  evaluator.accumulate()

  # COCOeval.summarize's means, read from the accumulated arrays by position.
  p = evaluator.params
  precision = np.asarray(evaluator.eval['precision'])  # [T, R, K, A, M]
  recall = np.asarray(evaluator.eval['recall'])  # [T, K, A, M]
  iou = {t: int(np.argmin(np.abs(p.iouThrs - t))) for t in (0.5, 0.75)}
  area = {a: p.areaRngLbl.index(a) for a in ('all',) + AREA_RANGES}
  everything = precision[:, :, :, area['all'], -1]
  # VOC 2007's recall points 0, .1, ..., 1 are every tenth of COCO's 101 (0, .01, ..., 1).
  tenths = [int(np.argmin(np.abs(p.recThrs - r))) for r in np.linspace(0.0, 1.0, 11)]
  out = {'AP': _mean_defined(everything),
         'AP50': _mean_defined(everything[iou[0.5]]),
         'AP75': _mean_defined(everything[iou[0.75]]),
         'AP50_11pt': _mean_defined(everything[iou[0.5]][tenths])}
  for a in AREA_RANGES:
    out[f'AP_{a}'] = _mean_defined(precision[:, :, :, area[a], -1])
  for m, name in enumerate(ar_names):
    out[name] = _mean_defined(recall[:, :, area['all'], m])
  for k, name in enumerate(per_class):
    out[name] = _mean_defined(everything[iou[0.5], :, k])
  return out
