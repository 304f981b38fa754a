r"""Where a detector's AP is lost: in finding the objects or in naming their classes.

  python -m benchmarks.detection_oracle --config=configs/yolov3_fashion_mnist_scenes.py \
      [--workdir=runs/yolov3_fashion_mnist_scenes] [--split=validation|test] \
      [--checkpoint=last|best|STEP] [--weights=ema|trained] [--config.FIELD=...]

Scores the run's detections on the whole eval split three ways with tasks.coco_map
(COCO AP, AP50, AP75, AR100):
  * as they are (what training and `train.predict --eval` report);
  * class-agnostic: every box and detection of one class, so only the boxes count;
  * with ground-truth classes: each detection whose box overlaps a ground-truth box
    with IoU >= 0.5 takes that box's class (the one it overlaps most), the others keep
    theirs: a detector that names every object it finds correctly.
The detections stay those of the class-aware NMS: a box the detector reported under
two classes is two detections in both rescorings, one of which is a false positive,
so both are lower bounds of what a perfect classifier on these boxes would reach.
The detections are gathered from all devices and processes as in training's
evaluation; the config's flags as in training (flip, NMS, ...).
"""

import functools
import json

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from tasks import boxes as boxes_lib
from tasks import coco_map
from tasks import detection
from tasks import evaluators as evaluators_lib
from train import reporting, run_config, trainer
from train.restore import Predictor

FLAGS = flags.FLAGS
MIN_IOU = 0.5


def define_flags() -> None:
  """The command's flags; defined only when it runs as a script, so that importing the
  module for its functions adds no flags (--weights would clash with
  pretrained.convert's)."""
  config_flags.DEFINE_config_file('config', None, 'Config of the detection run.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory (default runs/<config name>).')
  flags.DEFINE_enum('split', 'validation', ['validation', 'test'], 'Eval set scored.')
  flags.DEFINE_string('checkpoint', 'last', "'last', 'best' or a step number.")
  flags.DEFINE_enum('weights', 'ema', ['ema', 'trained'], 'As in train.predict.')
  flags.mark_flags_as_required(['config'])


def class_agnostic(items: list) -> list:
  """Ground-truth or detection dicts with every class set to 0."""
  return [dict(d, classes=np.zeros(len(d['classes']), np.int64)) for d in items]


def with_ground_truth_classes(truths: list, detections: list, min_iou: float = MIN_IOU) -> list:
  """`detections` (one dict per image: 'boxes' [m, 4] xyxy, 'scores', 'classes') with the
  class of each one's most-overlapping ground-truth box where that IoU >= `min_iou`."""
  out = []
  for truth, found in zip(truths, detections):
    classes = np.array(found['classes'], np.int64)
    if len(truth['boxes']) and len(found['boxes']):
      overlap = np.asarray(boxes_lib.pairwise_iou(np.asarray(found['boxes'], np.float32),
                                                  np.asarray(truth['boxes'], np.float32)))
      matched = overlap.max(axis=1) >= min_iou
      classes[matched] = np.asarray(truth['classes'])[overlap.argmax(axis=1)[matched]]
    out.append(dict(found, classes=classes))
  return out


def oracle_scores(truths: list, found: list, num_classes: int, **options) -> dict:
  """{'as_detected' | 'class_agnostic' | 'ground_truth_classes': tasks.coco_map.evaluate's
  metrics} of detections `found` against `truths` (the lists coco_map.evaluate takes;
  `options`: its max_detections and difficult_overlap)."""
  return {
      'as_detected': coco_map.evaluate(truths, found, num_classes, **options),
      'class_agnostic': coco_map.evaluate(class_agnostic(truths), class_agnostic(found), 1,
                                          **options),
      'ground_truth_classes': coco_map.evaluate(
          truths, with_ground_truth_classes(truths, found), num_classes, **options)}


def main(argv):
  del argv
  reporting.quiet_library_logs()
  config = FLAGS.config
  if config.task != 'detection':
    raise app.UsageError(f'--config is a {config.task!r} run; this scores detection runs')
  workdir = run_config.workdir_of(FLAGS.workdir, FLAGS['config'].config_filename)
  predictor = Predictor(config, workdir, FLAGS.checkpoint, roles=(FLAGS.split,),
                        weights=FLAGS.weights)
  data = predictor.data

  def score(role, indices, detections):  # The detection evaluator's pairing, rescored.
    truths, found = detection.truths_and_detections(data, role, indices, detections)
    return oracle_scores(truths, found, len(data.class_names),
                         max_detections=config.nms.max_detections,
                         difficult_overlap=data.difficult_overlap)

  evaluator = evaluators_lib.GatherEvaluator(
      functools.partial(predictor.task.predict, predictor.model), predictor.engine, score)
  scored = trainer.evaluate(predictor.state, predictor.engine, data, FLAGS.split, None,
                            [evaluator])
  if jax.process_index() == 0:
    print(json.dumps({'split': data.eval_splits[FLAGS.split], 'step': predictor.step,
                      'images': int(scored.pop('num_examples')),
                      **{name: {m: round(v[m], 4) for m in ('AP', 'AP50', 'AP75', 'AR100')}
                         for name, v in scored.items()}}))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=run_config.parse_flags)
