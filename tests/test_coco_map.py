"""COCO detection metrics (tasks.coco_map) and k-means anchors (data.anchors).

The evaluator against APs worked out by hand (COCO's 101-point interpolated AP) and
against an independent NumPy implementation of COCO's matching and AP on random
detections; difficult boxes, empty images, classes without ground truth, the per-image
detection cut and argument errors. The anchors: shape IoU by hand, recovery of known
cluster shapes, the empty-cluster path, determinism and the printed report.
"""

import ast
import math
import sys
import types

import ml_collections
import numpy as np
import pytest

import data
from data import anchors
from tasks import coco_map

F32 = np.float32
RECALLS = np.linspace(0.0, 1.0, 101)
THRESHOLDS = np.linspace(0.5, 0.95, 10)


def gt_image(boxes, classes, difficult=None):
  out = {'boxes': np.array(boxes, F32).reshape(-1, 4), 'classes': np.array(classes, np.int32)}
  if difficult is not None:
    out['difficult'] = np.array(difficult, bool)
  return out


def dt_image(boxes, scores, classes):
  return {'boxes': np.array(boxes, F32).reshape(-1, 4), 'scores': np.array(scores, F32),
          'classes': np.array(classes, np.int32)}


def assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-12), k


# Hand-made set, one class. Image 1: gt A = [0, 0, 10, 10], B = [20, 20, 30, 30]; image 2:
# gt C = [0, 0, 10, 10]. Detections by score: .9 on A (TP), .8 in empty space in image 2
# (FP), .7 on C (TP), .6 a duplicate on A (FP). Precision 1, 1/2, 2/3, 1/2 at recall 1/3,
# 1/3, 2/3, 2/3; made monotone: 1, 2/3, 2/3, 1/2. Recall points 0 .. .33 (34 of them) read
# precision 1, .34 .. .66 (33) read 2/3, .67 .. 1 read 0: AP = (34 + 33 * 2/3) / 101 =
# 56/101 at every IoU threshold (all matches are exact). VOC 2007's 11 points: 0 .. .3 (4)
# read 1, .4 .. .6 (3) read 2/3, .7 .. 1 read 0: AP50_11pt = (4 + 3 * 2/3) / 11 = 6/11.
HAND_GT = [gt_image([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0]),
           gt_image([[0, 0, 10, 10]], [0])]
HAND_DT = [dt_image([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.6], [0, 0]),
           dt_image([[50, 50, 60, 60], [0, 0, 10, 10]], [0.8, 0.7], [0, 0])]


def test_hand_made_ap():
  r = coco_map.evaluate(HAND_GT, HAND_DT, num_classes=1, class_names=['shirt'])
  for name in ('AP', 'AP50', 'AP75', 'AP50/shirt'):
    assert r[name] == pytest.approx(56 / 101, abs=1e-12), name
  assert r['AP50_11pt'] == pytest.approx(6 / 11, abs=1e-12)
  # One detection per image and class: image 1 keeps its TP, image 2 its FP.
  assert r['AR1'] == pytest.approx(1 / 3)
  assert r['AR10'] == pytest.approx(2 / 3) and r['AR100'] == pytest.approx(2 / 3)
  # Objects of 10x10 = 100 pixels^2 are all small.
  assert r['AP_small'] == pytest.approx(56 / 101)
  assert math.isnan(r['AP_medium']) and math.isnan(r['AP_large'])


def test_image_without_boxes_counts():
  # An image without gt nor detections changes nothing.
  base = coco_map.evaluate(HAND_GT, HAND_DT, 1)
  assert_same(coco_map.evaluate(HAND_GT + [gt_image([], [])], HAND_DT + [dt_image([], [], [])], 1),
              base)
  # An image without gt is still evaluated: its detection (.95) is a false positive.
  # Sequence FP, TP, FP, TP, FP: precision 0, 1/2, 1/3, 1/2, 2/5 at recall 0, 1/3, 1/3, 2/3,
  # 2/3; monotone: 1/2 up to recall 2/3 (67 recall points), 0 after: AP = 67 / 2 / 101.
  r = coco_map.evaluate(HAND_GT + [gt_image([], [])],
                        HAND_DT + [dt_image([[0, 0, 10, 10]], [0.95], [0])], 1)
  assert r['AP50'] == pytest.approx(33.5 / 101, abs=1e-12)


def test_exact_detections_give_one():
  gt = [gt_image([[0, 0, 10, 10], [5, 5, 60, 40]], [0, 1]), gt_image([[3, 4, 200, 150]], [2]),
        gt_image([], [])]
  dt = [dt_image(g['boxes'], np.linspace(0.9, 0.5, len(g['boxes'])), g['classes']) for g in gt]
  r = coco_map.evaluate(gt, dt, 3)
  for name in ('AP', 'AP50', 'AP75', 'AR1', 'AR10', 'AR100'):
    assert r[name] == pytest.approx(1.0), name


@pytest.mark.parametrize('height, expected', [
    (10.0, 1.0),   # IoU 1: matched at all 10 thresholds.
    (7.2, 0.5),    # IoU .72: matched at .50, .55, .60, .65, .70.
    (7.0, 0.5),    # IoU exactly .70 matches at .70 (COCO: IoU >= threshold).
    (6.9, 0.4),    # IoU .69: .50 .. .65.
    (4.9, 0.0),    # IoU .49: never matched.
])
def test_iou_between_thresholds(height, expected):
  gt = [gt_image([[0, 0, 10, 10]], [0])]
  dt = [dt_image([[0, 0, 10, height]], [0.9], [0])]
  r = coco_map.evaluate(gt, dt, 1)
  # One gt, one detection: AP is 1 at the thresholds where it matches, 0 elsewhere.
  assert r['AP'] == pytest.approx(expected, abs=1e-12)
  assert r['AP50'] == (1.0 if expected > 0 else 0.0)
  assert r['AP75'] == (1.0 if expected == 1 else 0.0)


def test_area_ranges_in_pixels():
  # A small object (10x10) found, a large one (100x100) missed; no medium objects.
  gt = [gt_image([[0, 0, 10, 10], [100, 100, 200, 200]], [0, 0])]
  dt = [dt_image([[0, 0, 10, 10]], [0.9], [0])]
  r = coco_map.evaluate(gt, dt, 1)
  assert r['AP_small'] == 1.0 and r['AP_large'] == 0.0 and math.isnan(r['AP_medium'])
  # Recall 1/2 at precision 1: recall points 0 .. .50 (51 of them).
  assert r['AP'] == pytest.approx(51 / 101, abs=1e-12)


def test_classes_without_ground_truth_are_left_out():
  base = coco_map.evaluate(HAND_GT, HAND_DT, 2, class_names=['a', 'b'])
  # Detections of class 1, which has no gt, count nowhere (as in COCO).
  dt = [dict(d) for d in HAND_DT]
  dt[0] = dt_image(np.concatenate([HAND_DT[0]['boxes'], [[0, 0, 10, 10]]]), [0.9, 0.6, 0.99],
                   [0, 0, 1])
  r = coco_map.evaluate(HAND_GT, dt, 2, class_names=['a', 'b'])
  assert_same(r, base)
  assert math.isnan(r['AP50/b']) and r['AP50/a'] == pytest.approx(56 / 101)


def test_no_ground_truth_or_no_detections():
  r = coco_map.evaluate([gt_image([], [])], [dt_image([[0, 0, 5, 5]], [0.5], [0])], 2,
                        class_names=['a', 'b'])
  assert all(math.isnan(v) for v in r.values()) and len(r) == 12
  assert all(math.isnan(v) for v in coco_map.evaluate([], [], 2).values())
  r = coco_map.evaluate(HAND_GT, [dt_image([], [], []), dt_image([], [], [])], 1)
  assert r['AP'] == 0.0 and r['AR100'] == 0.0


def test_difficult_boxes_are_ignored():
  # Image 1: a regular box and a difficult one; a false positive above the true positive
  # makes AP sensitive to any extra TP or FP.
  regular, hard = [0, 0, 10, 10], [30, 30, 50, 50]
  gt = [gt_image([regular, hard], [0, 0], difficult=[False, True])]
  base_dt = [[60, 60, 70, 70], regular]
  base = coco_map.evaluate(gt, [dt_image(base_dt, [0.8, 0.5], [0, 0])], 1)
  assert base['AP50'] == pytest.approx(0.5)
  # Not ground truth: the same as without the box.
  assert_same(coco_map.evaluate([gt_image([regular], [0])],
                                [dt_image(base_dt, [0.8, 0.5], [0, 0])], 1), base)
  # Detections on it (two, one with the top score) are neither TP nor FP.
  for overlap in coco_map.DIFFICULT_OVERLAPS:
    r = coco_map.evaluate(gt, [dt_image(base_dt + [hard, [30.5, 30, 50, 50]], [0.8, 0.5, 0.9, 0.7],
                                        [0, 0, 0, 0])], 1, difficult_overlap=overlap)
    assert_same(r, base)
  # The same box marked regular does change AP: the test can see a difference.
  regular_hard = coco_map.evaluate([gt_image([regular, hard], [0, 0])],
                                   [dt_image(base_dt + [hard], [0.8, 0.5, 0.9], [0, 0, 0])], 1)
  assert regular_hard['AP50'] != pytest.approx(base['AP50'])


def test_difficult_overlap_iou_or_iod():
  # A 10x10 detection inside the 20x20 difficult box: IoU 1/4, but intersection over the
  # detection's area 1: a false positive for VOC ('iou'), ignored as COCO crowd ('iod').
  gt = [gt_image([[0, 0, 10, 10], [30, 30, 50, 50]], [0, 0], difficult=[False, True])]
  dt = [dt_image([[35, 35, 45, 45], [0, 0, 10, 10]], [0.9, 0.5], [0, 0])]
  assert coco_map.evaluate(gt, dt, 1, difficult_overlap='iou')['AP50'] == pytest.approx(0.5)
  assert coco_map.evaluate(gt, dt, 1, difficult_overlap='iod')['AP50'] == pytest.approx(1.0)


def test_max_detections_per_image_across_classes():
  # One image: 6 boxes of class 0, 5 of class 1, all found exactly; the lowest score is a
  # class-1 detection. COCO cuts per image and class (10 each: nothing cut); the evaluator
  # cuts per image first, so max_detections=10 loses one class-1 box: class 1 reaches
  # recall 4/5 at precision 1 (recall points 0 .. .80: 81 of them).
  boxes = [[10 * i, 0, 10 * i + 8, 8] for i in range(11)]
  classes = [0] * 6 + [1] * 5
  gt = [gt_image(boxes, classes)]
  dt = [dt_image(boxes, np.linspace(0.9, 0.1, 11), classes)]
  assert coco_map.evaluate(gt, dt, 2, max_detections=11)['AP'] == pytest.approx(1.0)
  r = coco_map.evaluate(gt, dt, 2, max_detections=10)
  assert r['AP'] == pytest.approx((1 + 81 / 101) / 2, abs=1e-12)
  assert set(r) == {'AP', 'AP50', 'AP75', 'AP50_11pt', 'AP_small', 'AP_medium', 'AP_large', 'AR1',
                    'AR10'}
  assert r['AR10'] == pytest.approx((1 + 4 / 5) / 2)
  # Fewer than 10: the AR counts above it are left out.
  r = coco_map.evaluate(gt, dt, 2, max_detections=5)
  assert r['AR5'] == pytest.approx((5 / 6 + 0) / 2) and 'AR10' not in r


def test_silent(capfd):
  coco_map.evaluate(HAND_GT, HAND_DT, 1)
  out, err = capfd.readouterr()
  assert out == '' and err == ''


@pytest.mark.parametrize('change, message', [
    (lambda g, d: (g[:1], d), 'same images'),
    (lambda g, d: ([gt_image([[0, 0, 1, 1]], [3])], d[:1]), r'\[0, 3\)'),
    (lambda g, d: (g[:1], [dt_image([[0, 0, 1, 1]], [0.5], [-1])]), r'\[0, 3\)'),
    (lambda g, d: ([{'boxes': np.zeros((1, 3), F32), 'classes': np.zeros(1, np.int32)}], d[:1]),
     r'\[n, 4\]'),
    (lambda g, d: ([gt_image([[5, 0, 1, 1]], [0])], d[:1]), 'x1 >= x0'),
    (lambda g, d: (g[:1], [dt_image([[0, 0, 1, 1]], [0.5, 0.4], [0])]), 'scores'),
    (lambda g, d: ([gt_image([[0, 0, 1, 1]], [0, 1])], d[:1]), 'classes'),
    (lambda g, d: ([gt_image([[0, 0, 1, 1]], [0], difficult=[True, False])], d[:1]), 'difficult'),
])
def test_value_errors(change, message):
  gt, dt = change(HAND_GT, HAND_DT)
  with pytest.raises(ValueError, match=message):
    coco_map.evaluate(gt, dt, 3)


def test_argument_errors():
  with pytest.raises(ValueError, match='class_names'):
    coco_map.evaluate(HAND_GT, HAND_DT, 2, class_names=['a'])
  with pytest.raises(ValueError, match='max_detections'):
    coco_map.evaluate(HAND_GT, HAND_DT, 1, max_detections=0)
  with pytest.raises(ValueError, match='difficult_overlap'):
    coco_map.evaluate(HAND_GT, HAND_DT, 1, difficult_overlap='iop')


# An independent NumPy version of COCO's matching and 101-point AP ('all' area range, no
# crowd / difficult boxes), written from the COCO evaluation's definition.

def pairwise_iou(a, b):
  """IoU [n, m] of xyxy boxes a [n, 4], b [m, 4] (float64)."""
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
  area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
  area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def reference_coco(gt, dt, num_classes, max_det):
  """Per threshold and class: (AP [10, K], recall [10, K]), NaN for classes without gt;
  and per class VOC 2007's 11-point AP at IoU .5 [K]."""
  ap = np.full((len(THRESHOLDS), num_classes), np.nan)
  ap11 = np.full(num_classes, np.nan)
  rec = np.full((len(THRESHOLDS), num_classes), np.nan)
  for k in range(num_classes):
    num_gt = sum(int((g['classes'] == k).sum()) for g in gt)
    if num_gt == 0:
      continue
    scores, hits = [], []  # Per image: sorted scores, [T, m] true positive flags.
    for g, d in zip(gt, dt):
      gb = g['boxes'][g['classes'] == k].astype(np.float64)
      keep = d['classes'] == k
      db, ds = d['boxes'][keep].astype(np.float64), d['scores'][keep].astype(np.float64)
      order = np.argsort(-ds, kind='mergesort')[:max_det]
      db, ds = db[order], ds[order]
      iou = pairwise_iou(db, gb) if len(db) and len(gb) else np.zeros((len(db), len(gb)))
      tp = np.zeros((len(THRESHOLDS), len(db)), bool)
      for t, threshold in enumerate(THRESHOLDS):
        taken = np.zeros(len(gb), bool)
        for i in range(len(db)):
          candidates = np.where(~taken & (iou[i] >= threshold), iou[i], -1.0)
          if len(gb) and candidates.max() >= 0:
            taken[candidates.argmax()] = True
            tp[t, i] = True
      scores.append(ds)
      hits.append(tp)
    order = np.argsort(-np.concatenate(scores), kind='mergesort')
    tp = np.concatenate(hits, axis=1)[:, order]
    for t in range(len(THRESHOLDS)):
      tps = np.cumsum(tp[t])
      fps = np.cumsum(~tp[t])
      recall = tps / num_gt
      precision = tps / np.maximum(tps + fps, 1)
      precision = np.maximum.accumulate(precision[::-1])[::-1]  # Max at any higher recall.
      idx = np.searchsorted(recall, RECALLS, side='left')
      padded = np.concatenate([precision, [0.0]])
      ap[t, k] = padded[np.minimum(idx, len(precision))].mean()
      rec[t, k] = recall[-1] if len(recall) else 0.0
      if t == 0:  # VOC 2007: the highest precision at recall >= r, r = 0, .1, ..., 1.
        ap11[k] = np.mean([precision[recall >= r].max() if (recall >= r).any() else 0.0
                           for r in np.linspace(0.0, 1.0, 11)])
  return ap, rec, ap11


def random_set(rng, num_images=8, num_classes=3):
  gt, dt = [], []
  for i in range(num_images):
    n = 0 if i == 0 else int(rng.integers(1, 6))
    xy = rng.uniform(0, 150, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 80, (n, 2))], 1)
    classes = rng.integers(0, num_classes, n)
    gt.append(gt_image(boxes, classes))
    # Most objects found with jitter of up to 30% of their size (IoUs spread over the
    # thresholds), some with the wrong class; some duplicates and false positives.
    found = rng.uniform(size=n) < 0.8
    size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    jittered = boxes + rng.uniform(-0.3, 0.3, (n, 4)) * size
    jittered[:, 2:] = np.maximum(jittered[:, 2:], jittered[:, :2] + 1)
    det_classes = np.where(rng.uniform(size=n) < 0.1, rng.integers(0, num_classes, n), classes)
    m = int(rng.integers(0, 5))
    xy = rng.uniform(0, 150, (m, 2))
    extra = np.concatenate([xy, xy + rng.uniform(8, 80, (m, 2))], 1)
    det_boxes = np.concatenate([jittered[found], jittered[found][:2] + 2, extra]).reshape(-1, 4)
    det_classes = np.concatenate([det_classes[found], det_classes[found][:2],
                                  rng.integers(0, num_classes, m)])
    dt.append(dt_image(det_boxes, rng.uniform(size=len(det_boxes)), det_classes))
  return gt, dt


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_numpy_reference(seed):
  gt, dt = random_set(np.random.default_rng(seed))
  names = ['a', 'b', 'c']
  r = coco_map.evaluate(gt, dt, 3, class_names=names)
  ap, recall, ap11 = reference_coco(gt, dt, 3, max_det=100)
  assert 0.05 < r['AP'] < 0.95  # A case with both hits and misses at most thresholds.
  assert r['AP'] == pytest.approx(np.nanmean(ap), abs=1e-9)
  assert r['AP50'] == pytest.approx(np.nanmean(ap[0]), abs=1e-9)
  assert r['AP75'] == pytest.approx(np.nanmean(ap[5]), abs=1e-9)
  assert r['AP50_11pt'] == pytest.approx(np.nanmean(ap11), abs=1e-9)
  assert r['AP50_11pt'] != pytest.approx(r['AP50'], abs=1e-4)
  assert r['AR100'] == pytest.approx(np.nanmean(recall), abs=1e-9)
  for k, name in enumerate(names):
    assert r[f'AP50/{name}'] == pytest.approx(ap[0, k], abs=1e-9, nan_ok=True)
  _, recall1, _ = reference_coco(gt, dt, 3, max_det=1)
  assert r['AR1'] == pytest.approx(np.nanmean(recall1), abs=1e-9)


# k-means anchors.

def test_shape_iou_by_hand():
  wh = np.array([[10, 10], [10, 2], [4, 6]], F32)
  anchor = np.array([[10, 10], [5, 5], [2, 10], [6, 4]], F32)
  expected = [[1, 25 / 100, 20 / 100, 24 / 100],
              [20 / 100, 10 / 35, 4 / 36, 12 / 32],
              [24 / 100, 20 / 29, 12 / 32, 16 / 32]]
  np.testing.assert_allclose(anchors.shape_iou(wh, anchor), expected, rtol=1e-12)


def test_kmeans_recovers_cluster_shapes():
  rng = np.random.default_rng(0)
  shapes = np.array([[60, 90], [10, 14], [30, 20]], np.float64)
  wh = np.concatenate([s * np.exp(rng.normal(0, 0.03, (150, 2))) for s in shapes])
  rng.shuffle(wh)
  found, fit = anchors.kmeans_anchors(wh, k=3, seed=0)
  assert found.dtype == np.float32 and found.shape == (3, 2)
  by_area = shapes[np.argsort(shapes.prod(axis=1))]
  np.testing.assert_allclose(found, by_area, rtol=0.05)
  assert fit == pytest.approx(anchors.mean_best_iou(wh, found)) and fit > 0.9


def test_kmeans_deterministic_and_sorted():
  wh = np.random.default_rng(1).uniform(2, 100, (300, 2))
  a, fit_a = anchors.kmeans_anchors(wh, k=9, seed=3)
  b, fit_b = anchors.kmeans_anchors(wh, k=9, seed=3)
  np.testing.assert_array_equal(a, b)
  assert fit_a == fit_b
  assert (np.diff(a.prod(axis=1)) >= 0).all()
  # More clusters fit better.
  assert fit_a > anchors.kmeans_anchors(wh, k=3, seed=3)[1]


def test_kmeans_empty_cluster_reseeded():
  # Two distinct shapes, three clusters: seeding must repeat a shape, whose duplicate
  # cluster gets no boxes and is re-seeded from a box.
  wh = np.array([[10, 10]] * 5 + [[50, 40]] * 5, np.float64)
  found, fit = anchors.kmeans_anchors(wh, k=3, seed=0)
  assert fit == pytest.approx(1.0)
  assert {tuple(a) for a in found.tolist()} == {(10.0, 10.0), (50.0, 40.0)}


def test_kmeans_errors():
  with pytest.raises(ValueError, match='k must be'):
    anchors.kmeans_anchors(np.ones((2, 2)), k=3)
  with pytest.raises(ValueError, match='> 0'):
    anchors.kmeans_anchors(np.array([[1.0, 0.0], [2, 2], [3, 3]]), k=2)
  with pytest.raises(ValueError, match=r'\[n, 2\]'):
    anchors.kmeans_anchors(np.ones((5, 3)), k=2)


def test_yolov3_anchors_scaled():
  np.testing.assert_allclose(anchors.scaled_yolov3_anchors((416, 416)),
                             anchors.YOLOV3_COCO_ANCHORS)
  np.testing.assert_allclose(anchors.scaled_yolov3_anchors((208, 832))[-1], [746, 163])


def test_run_prints_pasteable_anchors(monkeypatch):
  rng = np.random.default_rng(0)
  shapes = rng.uniform(4, 60, (9, 2))
  wh = np.concatenate([np.repeat(shapes, 20, axis=0) * np.exp(rng.normal(0, 0.02, (180, 2))),
                       [[0, 5]]]).astype(F32)  # An empty box, dropped.
  calls = []

  def training_box_sizes(config, max_examples):
    calls.append((config, max_examples))
    return wh

  monkeypatch.setattr(data, 'detection',
                      types.SimpleNamespace(training_box_sizes=training_box_sizes), raising=False)
  monkeypatch.setitem(sys.modules, 'data.detection', data.detection)
  config = ml_collections.ConfigDict({'data': {'image_size': 64}})
  text = anchors.run(config, num_anchors=9, max_examples=50, seed=0)
  assert calls == [(config, 50)]
  lines = text.splitlines()
  assert '180 training boxes (1 empty ones dropped)' in lines[0]
  pasted = ast.literal_eval('\n'.join(lines[1:4]))
  expected, fit = anchors.kmeans_anchors(wh[:-1], 9, seed=0)
  np.testing.assert_allclose(pasted, expected, atol=0.051)
  assert [line.split('# ')[1] for line in lines[1:4]] == ['stride 8', 'stride 16', 'stride 32']
  assert lines[4] == f'mean best IoU: {fit:.4f}'
  default_fit = anchors.mean_best_iou(wh[:-1], anchors.scaled_yolov3_anchors((64, 64)))
  assert lines[5].endswith(f'mean best IoU {default_fit:.4f}') and default_fit < fit
  with pytest.raises(ValueError, match='image_size'):
    anchors.run(ml_collections.ConfigDict({'data': {}}))
