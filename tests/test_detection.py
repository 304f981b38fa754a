"""The detection task on the task seam: the same loss on 8 devices (jit and pmap) as on
1, bad boxes and max_boxes in the pipeline, every detection config end to end (VOC under
TFDS mock data with an image without boxes, COCO's data path, NEON trees from small files
under pmap), predict's drawing, and the offline default overfitting a few scenes."""

import functools

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import (yolov3_coco, yolov3_fashion_mnist_scenes, yolov3_neon_trees,
                     yolov3_voc)
from data import detection, detection_sources, pipeline, scenes
from tasks import coco_map
from tasks import detection as detection_task
from tests import test_detection_sources as fakes
from train import parallel, restore, trainer

TINY = dict(name='yolov3_resnet18', width=0.125, neck_width=0.0625)


def _shrink(config, image_size=64):
  config.model.update(TINY)
  config.data.image_size = image_size
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps, config.warmup_steps = 2, 1
  config.compute_dtype = 'float32'
  config.data.num_threads = 1
  config.eval_every_steps = 0
  config.checkpoint.async_save = False
  return config


class _Source:
  """A list of examples as a random-access source."""

  def __init__(self, examples):
    self.examples = examples

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]


def _scene_batch(n=8, seed=0, canvas=64):
  pool = scenes.FashionMnistScenes(np.random.default_rng(seed).integers(0, 255, (40, 28, 28),
                                                                        np.uint8),
                                   np.arange(40) % 10, n, canvas_size=canvas, seed=seed)
  examples = [detection_sources.scene_example(pool.scene(i))[0] for i in range(n)]
  config = _shrink(yolov3_fashion_mnist_scenes.get_config())
  batches = list(detection.eval_batches(config, _Source(examples), 'fake', 10))
  return config, examples, batches[0]


@functools.lru_cache(maxsize=None)
def _eval_loss(engine_name, num_devices):
  config, _, batch = _scene_batch()
  spec = pipeline.DataSpec({'num_classes': 10, 'num_channels': 1, 'num_anchors': 3},
                           (np.zeros((1, 64, 64, 1), np.float32),))
  engine = parallel.build(engine_name, jax.devices()[:num_devices])
  model, task, _, _, init_fn = trainer.build_components(config, 10, spec, engine.axis_name)
  state = engine.init_state(init_fn)
  metrics = engine.to_host(engine.eval_step(model=model, task=task)(state,
                                                                    engine.put_batch(batch)))
  return {k: v[0] / v[1] for k, v in metrics.items()}


@pytest.mark.parametrize('engine,devices', [('jit', 8), ('pmap', 8)])
def test_loss_on_eight_devices_equals_one_device(engine, devices):
  reference = _eval_loss('jit', 1)
  got = _eval_loss(engine, devices)
  assert reference['boxes'] > 1  # Real boxes are in the batch.
  for name in ('loss', 'box_loss', 'objectness_loss', 'class_loss', 'boxes'):
    np.testing.assert_allclose(got[name], reference[name], rtol=1e-5, err_msg=name)


def test_flip_test_time_augmentation_makes_detections_flip_equivariant():
  # With inference.flip the mirror image's candidates, mirrored back, join NMS: the
  # detections of a mirrored scene are then the mirrored detections (a random network
  # alone gives other ones).
  config, _, batch = _scene_batch()
  spec = pipeline.DataSpec({'num_classes': 10, 'num_channels': 1, 'num_anchors': 3},
                           (np.zeros((1, 64, 64, 1), np.float32),))
  images = batch['image']
  mirror = {'image': images[:, :, ::-1]}
  for flip in (False, True):
    config.inference.flip = flip
    model, task, _, _, init_fn = trainer.build_components(config, 10, spec, None)
    variables = jax.jit(init_fn)().variables
    predict = jax.jit(lambda v, b: task.predict(model, v, b))  # pylint: disable=cell-var-from-loop
    found, found_mirror = predict(variables, {'image': images}), predict(variables, mirror)
    same = []
    for i in range(len(images)):
      keep, keep_m = np.asarray(found['valid'][i]), np.asarray(found_mirror['valid'][i])
      boxes = np.asarray(found['boxes'][i])[keep]
      mirrored = np.stack([64 - boxes[:, 2], boxes[:, 1], 64 - boxes[:, 0], boxes[:, 3]], 1)
      same.append(keep.sum() == keep_m.sum() and np.allclose(
          mirrored, np.asarray(found_mirror['boxes'][i])[keep_m], atol=1e-3) and np.allclose(
              np.asarray(found['scores'][i])[keep], np.asarray(found_mirror['scores'][i])[keep_m],
              atol=1e-6))
    assert all(same) == flip, (flip, same)


def test_anchor_box_sizes_leave_out_difficult_boxes(monkeypatch):
  # k-means anchors are fitted on the boxes training uses: not VOC's difficult ones.
  example = {'image': np.zeros((64, 64, 1), np.uint8),
             'boxes': np.array([[0, 0, 10, 20], [5, 5, 45, 25]], np.float32),
             'classes': np.array([0, 1], np.int32), 'difficult': np.array([False, True])}
  monkeypatch.setattr(detection_sources, 'build_source', lambda config, split: _Source([example]))
  config = _shrink(yolov3_fashion_mnist_scenes.get_config())
  np.testing.assert_allclose(detection.training_box_sizes(config), [[10, 20]])


def test_bad_boxes_name_the_example_and_extra_boxes_are_dropped_and_counted():
  config = _shrink(yolov3_fashion_mnist_scenes.get_config())
  image = np.zeros((64, 64, 1), np.uint8)
  good = {'image': image, 'boxes': np.array([[4, 4, 20, 20]] * 11, np.float32),
          'classes': np.zeros(11, np.int32)}
  empty = {'image': image, 'boxes': np.zeros((0, 4), np.float32),
           'classes': np.zeros(0, np.int32)}
  batch = next(detection.eval_batches(config, _Source([good, empty]), 'fake', 10))
  # max_boxes = 8: 3 of 11 boxes dropped and counted; the empty image has no boxes.
  np.testing.assert_array_equal(batch['dropped'][:2], [3, 0])
  np.testing.assert_array_equal(batch['box_mask'][:2].sum(1), [8, 0])
  for bad, message in [([[20, 4, 4, 20]], 'x1 < x0'), ([[4, np.nan, 20, 20]], 'finite'),
                       ([[4, 4, 20, 20]], 'class')]:
    example = dict(good, boxes=np.array(bad, np.float32),
                   classes=np.array([10 if message == 'class' else 0], np.int32))
    with pytest.raises(ValueError, match=f"split 'fake' example 1.*{message}"):
      list(detection.eval_batches(config, _Source([good, example]), 'fake', 10))
    iterator = detection.train_iterator(config, _Source([example]), 'fake', 10)
    with pytest.raises(ValueError, match=f"split 'fake' example 0.*{message}"):
      next(iterator)


def test_bad_detection_fields_name_the_valid_choices():
  config = yolov3_fashion_mnist_scenes.get_config()
  for field, value, message in [('loss.box_loss', 'l2', "choose one of .*'ciou'"),
                                ('loss.class_loss', 'logistic', "choose one of .*'softmax'"),
                                ('nms.method', 'fast', 'valid: .*soft_gaussian'),
                                ('model.name', 'resnet18', 'not a detector'),
                                ('data.image_size', 48, 'multiple of 32'),
                                ('anchors', ((1, 2),), '3 x A positive')]:
    c = yolov3_fashion_mnist_scenes.get_config()
    section, _, name = field.rpartition('.')
    (c[section] if section else c)[name] = value
    with pytest.raises(ValueError, match=message):
      detection_task.check(c)
  detection_task.check(config)


def test_voc_config_end_to_end_with_an_image_without_boxes_and_predict_draws(tmp_path):
  config = _shrink(yolov3_voc.get_config())
  config.data.train_split = 'voc/2007:train,voc/2012:train'
  config.data.validation_split = 'validation'
  rng = np.random.default_rng(0)

  def as_data_source(builder, split, **kwargs):
    del builder, kwargs
    records = fakes._fake_records(rng, 9, 48, 40, 20, 'is_difficult')  # pylint: disable=protected-access
    records[0]['objects'] = {'bbox': np.zeros((0, 4), np.float32),
                             'label': np.zeros(0, np.int64),
                             'is_difficult': np.zeros(0, bool)}
    return records if split != 'test' else records[:5]

  workdir = str(tmp_path / 'run')
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source):
    metrics = trainer.run(config, workdir)
    assert metrics['test']['num_examples'] == 5
    assert {'AP', 'AP50', 'AP75', 'AR100', 'AP50/person'} <= set(metrics['test'])
    assert np.isfinite(metrics['test']['loss'])
    predictor = restore.Predictor(config, workdir)
    image_path = tmp_path / 'photo.png'
    Image.fromarray(rng.integers(0, 255, (30, 50, 3), np.uint8)).save(image_path)
    detection_task.predict_cli(config, predictor.data, predictor.predict_batch,
                               {'image': [str(image_path)], 'out': str(tmp_path / 'o.png')})
  assert Image.open(tmp_path / 'o.png').size == (50 * 9, 30 * 9)  # Magnified to >= 256.


def test_coco_config_reads_batches(tmp_path):
  """COCO's batches (read as from prepared files: coco.py itself needs TensorFlow)."""
  config = _shrink(yolov3_coco.get_config())
  # The fake metadata has 'validation' only (mock data ignores the slices).
  config.data.train_split, config.data.test_split = 'validation[:2]', 'validation[2:]'

  fakes.write_coco_metadata(str(tmp_path))
  records = fakes._fake_records(np.random.default_rng(1), 4, 40, 48, 80, 'is_crowd')  # pylint: disable=protected-access
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path),
                              as_data_source_fn=lambda *a, **k: records):
    data = detection.DetectionData(config)
    batch = next(data.train_iterator())
    eval_batch = next(data.eval_batches('test'))  # The 'validation' split: val2017.
  assert len(data.class_names) == 80 and batch['image'].shape == (8, 64, 64, 3)
  assert eval_batch['mask'].sum() == 4
  # Crowd boxes are no targets of the eval loss, as in training; the evaluator keeps them.
  not_crowd = [min((~r['objects']['is_crowd'].astype(bool)).sum(), config.data.max_boxes)
               for r in records]
  np.testing.assert_array_equal(eval_batch['box_mask'][:4].sum(-1), not_crowd)
  truth, to_original = data.ground_truth('test', 1)
  np.testing.assert_array_equal(truth['difficult'], records[1]['objects']['is_crowd'])
  # Letterbox: 48 x 40 -> 64 x 53 (+ 5 / 6 rows of padding); the inverse maps back.
  np.testing.assert_allclose(to_original(np.array([[0, 5, 64, 58.33]])), [[0, 0, 48, 40]],
                             atol=0.05)


def test_neon_trees_config_under_pmap(tmp_path):
  config = _shrink(yolov3_neon_trees.get_config(), image_size=32)
  config.data.dir = fakes.trees.prepare(str(tmp_path / 'data'), wheel=fakes.make_wheel(
      tmp_path / 'deepforest-2.1.0-fake.whl'))
  config.data.tile_size = 24
  config.parallel = 'pmap'
  metrics = trainer.run(config, str(tmp_path / 'run'))
  assert metrics['test']['num_examples'] == 1 and 'AP50/tree' in metrics['test']


def test_offline_config_overfits_a_few_scenes():
  """The offline default's model, loss and optimizer memorise 8 scenes of random
  items: AP50 on them (through NMS and the COCO evaluator) exceeds 0.9."""
  config, examples, batch = _scene_batch(seed=3)
  config = yolov3_fashion_mnist_scenes.get_config()
  config.optim.schedule, config.warmup_steps, config.learning_rate = 'constant', 0, 3e-3
  config.augment.flip, config.augment.scale_range, config.augment.translate = False, (1., 1.), 0.
  engine = parallel.build('jit', jax.devices()[:1])
  spec = pipeline.DataSpec({'num_classes': 10, 'num_channels': 1, 'num_anchors': 3},
                           (np.zeros((1, 64, 64, 1), np.float32),))
  model, task, _, schedule, init_fn = trainer.build_components(config, 1000, spec)
  state = engine.init_state(init_fn)
  step = engine.train_step(model=model, task=task, schedule=schedule, accum_steps=1)
  device_batch = engine.put_batch({k: v for k, v in batch.items() if k not in ('mask', 'index')})
  for _ in range(100):  # AP50 reaches 1.0 by step 75 (lr 3e-3; 0.65 at step 25, 0.87 at 50).
    state, _ = step(state, device_batch)
  found = engine.to_local(engine.compile(functools.partial(task.predict, model), reduce=False)(
      state, engine.put_batch(batch)))
  detections = [{k: found[k][i][found['valid'][i]] for k in ('boxes', 'scores', 'classes')}
                for i in range(8)]
  result = coco_map.evaluate(examples, detections, 10)
  assert result['AP50'] > 0.9, result


def test_augmented_training_batches_resume_exactly():
  """Mosaic, affine, flip and jitter on: the iterator's saved state restores the same
  next batch (what a resumed run sees)."""
  config = _shrink(yolov3_fashion_mnist_scenes.get_config())
  config.augment.mosaic_prob, config.augment.brightness = 0.5, 0.3
  config.augment.scale_range, config.augment.translate = (0.5, 1.5), 0.2
  _, examples, _ = _scene_batch(n=12)
  source = _Source(examples)
  iterator = detection.train_iterator(config, source, 'fake', 10)
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = next(iterator)
  resumed = detection.train_iterator(config, source, 'fake', 10)
  resumed.set_state(state)
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  assert expected['box_mask'].sum() > 0


def test_detection_oracle_relabels_only_matched_detections():
  """benchmarks/detection_oracle: a detection takes the class of the ground-truth box it
  overlaps most when that IoU >= 0.5; the others, and images without boxes, keep theirs."""
  from benchmarks import detection_oracle  # pylint: disable=import-outside-toplevel
  truths = [{'boxes': np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32),
             'classes': np.array([1, 2])},
            {'boxes': np.zeros((0, 4), np.float32), 'classes': np.zeros(0, np.int64)}]
  found = [{'boxes': np.array([[0, 0, 10, 9], [21, 21, 30, 30], [0, 0, 10, 4],
                               [40, 40, 50, 50]], np.float32),
            'scores': np.array([0.9, 0.8, 0.7, 0.6]), 'classes': np.array([0, 2, 3, 3])},
           {'boxes': np.array([[1, 1, 5, 5]], np.float32), 'scores': np.array([0.5]),
            'classes': np.array([4])}]
  # IoUs with the best box: 0.9, 0.81, 0.4 (below 0.5: kept), none.
  relabelled = detection_oracle.with_ground_truth_classes(truths, found)
  np.testing.assert_array_equal(relabelled[0]['classes'], [1, 2, 3, 3])
  np.testing.assert_array_equal(relabelled[1]['classes'], [4])
  np.testing.assert_array_equal(relabelled[0]['scores'], found[0]['scores'])
  assert [list(d['classes']) for d in detection_oracle.class_agnostic(truths)] == [[0, 0], []]
