"""The segmentation task on the task seam: deep-supervision loss, the exact confusion
matrix over devices, engines and padding, config checks, every segmentation config end to
end (Oxford-IIIT Pet under TFDS mock data, with predict's overlay), and the offline
default overfitting a small batch."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import unetpp_fashion_mnist_scenes, unetpp_oxford_pets
from data import pipeline
from nets import unet
from tasks import confusion, dense_losses, segmentation
from train import parallel, restore, step, trainer
from train.state import TrainState


def test_deep_supervision_loss_is_the_mean_of_the_heads_losses():
  task = segmentation.SegmentationTask(num_classes=3, loss_fn=dense_losses.cross_entropy)
  logits = jax.random.normal(jax.random.key(0), (4, 2, 5, 5, 3))  # 4 heads.
  labels = jax.random.randint(jax.random.key(1), (2, 5, 5), 0, 3).at[0, 0, 0].set(255)
  batch = {'label': labels}
  per_head = [dense_losses.cross_entropy(h, labels, task.valid(batch)) for h in logits]
  np.testing.assert_allclose(task.loss(logits, batch), np.mean(per_head, axis=0), rtol=1e-6)
  assert task.valid(batch)[0, 0, 0] == 0 and task.valid(batch).sum() == 49


def test_eval_metrics_describe_the_pruned_network_that_predict_runs():
  # With inference.level = 1, the eval loss and accuracy come from L^1's one head (the
  # network whose classes predict() and the mIoU use); training runs both heads.
  model = unet.UNetPlusPlus(num_classes=3, filters=(4, 8, 16), depth=2)
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  labels = jax.random.randint(jax.random.key(1), (2, 8, 8), 0, 3)
  batch = {'image': images, 'label': labels}
  variables = model.init(jax.random.key(2), images, train=False)
  task = segmentation.SegmentationTask(num_classes=3, loss_fn=dense_losses.cross_entropy,
                                       level=1)
  full = model.apply(variables, images, train=False)
  pruned = task.apply(model, variables, batch, train=False)
  assert pruned.shape[0] == 1 and len(full) == 2
  np.testing.assert_array_equal(pruned[0], full[0])
  trained, _ = task.apply(model, variables, batch, train=True, mutable=['batch_stats'])
  assert trained.shape[0] == 2
  metrics = step.eval_step(types.SimpleNamespace(variables=variables), batch, model=model,
                           task=task)
  correct, count = metrics['accuracy']
  assert float(correct / count) == pytest.approx(
      float((task.predict(model, variables, batch) == labels).mean()))
  loss, images_counted = metrics['loss']
  np.testing.assert_allclose(loss / images_counted, dense_losses.cross_entropy(
      full[0], labels, jnp.ones(labels.shape)).mean(), rtol=1e-6)


def test_flip_test_time_augmentation_makes_predict_flip_equivariant():
  # The mean of the image's and the mirrored-back mirror image's probabilities: the
  # mirror image's prediction is then exactly the mirrored prediction, which a random
  # network without it is not.
  model = unet.UNetPlusPlus(num_classes=3, filters=(4, 8, 16), depth=2)
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(2), images)
  batch, mirror = {'image': images}, {'image': jnp.flip(images, axis=2)}
  for flip, equivariant in ((False, False), (True, True)):
    task = segmentation.SegmentationTask(num_classes=3, loss_fn=dense_losses.cross_entropy,
                                         flip=flip)
    predict = jax.jit(functools.partial(task.predict, model))
    assert np.array_equal(predict(variables, mirror),
                          np.flip(predict(variables, batch), axis=2)) == equivariant
  plain = segmentation.SegmentationTask(3, dense_losses.cross_entropy)
  probs = jax.jit(lambda v, b: plain.combine(plain.apply(model, v, b, train=False)))
  mean = (probs(variables, batch) + jnp.flip(probs(variables, mirror), axis=2)) / 2
  np.testing.assert_array_equal(predict(variables, batch), jnp.argmax(mean, -1))


class _EvalData:
  """Eval batches of 8 rows with known labels, predictions (the stand-in predict_fn
  reads them from the batch), ignore-label pixels and a padded last batch."""
  num_classes = 4
  spec = pipeline.DataSpec({'num_classes': num_classes}, ())
  class_names = ['background', 'a', 'b', 'c d']

  def __init__(self):
    rng = np.random.default_rng(0)
    n = 21  # 3 batches of 8, the last with 3 padding rows.
    self.labels = rng.integers(0, self.num_classes, (n, 6, 6)).astype(np.int32)
    self.labels[rng.random((n, 6, 6)) < 0.2] = 255
    self.predictions = np.where(rng.random((n, 6, 6)) < 0.6, self.labels % 255,
                                rng.integers(0, self.num_classes, (n, 6, 6))).astype(np.int32)

  def eval_batches(self, role, process_index=0, process_count=1):
    del role, process_index, process_count
    for start in range(0, 24, 8):
      rows = slice(start, min(start + 8, len(self.labels)))
      batch = {'label': self.labels[rows], 'pred': self.predictions[rows]}
      n = len(batch['label'])
      # Padding rows carry real-looking labels and predictions: only 'mask' removes them.
      batch = {k: np.concatenate([v, v[:8 - n] + 1]) for k, v in batch.items()}
      batch['mask'] = (np.arange(8) < n).astype(np.float32)
      yield batch


@pytest.mark.parametrize('engine_name,num_devices', [('jit', 1), ('jit', 8), ('pmap', 1),
                                                     ('pmap', 8)])
def test_confusion_matrix_metrics_are_exact_over_devices_padding_and_ignore(engine_name,
                                                                          num_devices):
  data = _EvalData()
  engine = parallel.build(engine_name, jax.devices()[:num_devices])
  tx = optax.identity()
  state = engine.init_state(lambda: TrainState(
      step=jnp.zeros((), jnp.int32), params={}, model_state={}, opt_state=tx.init({}),
      rng=jnp.zeros((2,), jnp.uint32), tx=tx))
  config = types.SimpleNamespace(data=types.SimpleNamespace(ignore_label=255))
  evaluators = segmentation.evaluators(config, data, lambda variables, batch: batch['pred'],
                                       engine)
  metrics = trainer.evaluate(state, engine, data, 'test', None, evaluators)
  valid = data.labels != 255
  reference = np.zeros((4, 4), np.int64)
  np.add.at(reference, (data.labels[valid], data.predictions[valid]), 1)
  expected = confusion.segmentation_metrics(reference, ['background', 'a', 'b', 'c_d'])
  assert metrics['num_examples'] == 21
  assert {k: metrics[k] for k in expected} == expected  # Exact: integer counts.
  tp = np.diag(reference)
  assert metrics['iou/c_d'] == tp[3] / (reference[3].sum() + reference[:, 3].sum() - tp[3])


def test_bad_task_loss_head_or_level_names_the_valid_choices():
  for field, value, match in [('loss.name', 'hinge', 'bce_dice'),
                              ('inference.head', 'first', "'last', 'mean'"),
                              ('inference.level', 5, r'\[1, 4\]')]:
    config = unetpp_fashion_mnist_scenes.get_config()
    group, name = field.split('.')
    config[group][name] = value
    with pytest.raises(ValueError, match=match):
      trainer.validate(config, 1)
  config = unetpp_fashion_mnist_scenes.get_config()
  config.task = 'segmentaton'
  with pytest.raises(ValueError, match="choose one of.*'segmentation'"):
    trainer.validate(config, 1)
  for deep_supervision in (False, True):  # U-Net accepts and ignores deep_supervision.
    config = unetpp_fashion_mnist_scenes.get_config()
    config.model.name, config.inference.level = 'unet', 2
    config.model.deep_supervision = deep_supervision
    with pytest.raises(ValueError, match="model 'unet' cannot be pruned"):
      trainer.validate(config, 1)
  config = unetpp_fashion_mnist_scenes.get_config()
  config.model.deep_supervision, config.inference.level = False, 2
  with pytest.raises(ValueError, match='needs model.deep_supervision=True'):
    trainer.validate(config, 1)
  config.inference.level = config.model.depth  # The full network's own head.
  trainer.validate(config, 1)


def _shrink(config):
  config.model.width, config.model.depth = 0.125, 2
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps, config.warmup_steps = 2, 1
  config.data.num_threads = 1
  config.checkpoint.async_save = False
  return config


def test_oxford_pets_config_runs_end_to_end_and_predict_draws_an_overlay(tmp_path):
  config = _shrink(unetpp_oxford_pets.get_config())
  config.data.image_size = 32
  workdir = str(tmp_path / 'run')
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    metrics = trainer.run(config, workdir)
    assert metrics['splits'] == {'validation': 'train[90%:]', 'test': 'test'}
    assert metrics['test']['num_examples'] == 10
    assert {'miou', 'pixel_accuracy', 'iou/pet', 'dice/border'} <= set(metrics['test'])
    predictor = restore.Predictor(config, workdir)
    image_path = tmp_path / 'pet.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), np.uint8)).save(
        image_path)
    segmentation.predict_cli(config, predictor.data, predictor.predict_batch,
                             {'image': [str(image_path)], 'out': str(tmp_path / 'o.png')})
  overlay = Image.open(tmp_path / 'o.png')
  assert overlay.size[0] > 2 * 256 and overlay.size[1] >= 256  # Two panels + legend.


def test_offline_scenes_config_overfits_a_small_batch():
  """The offline default's model, loss and optimizer memorise 8 scenes (random items,
  so only memorising helps): every head is trained, the last one is measured."""
  config = unetpp_fashion_mnist_scenes.get_config()
  config.model.width = 0.125
  config.optim.schedule, config.warmup_steps, config.learning_rate = 'constant', 0, 1e-2
  engine = parallel.build('jit', jax.devices()[:1])
  spec = pipeline.image_spec(11, (32, 32, 1))
  model, task, _, schedule, init_fn = trainer.build_components(config, 100, spec)
  from data import scenes  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  pool = scenes.FashionMnistScenes(rng.integers(0, 255, (20, 28, 28), np.uint8),
                                   np.arange(20) % 10, 8, canvas_size=32)
  examples = [pool[i] for i in range(8)]
  batch = {'image': np.stack([e['image'] for e in examples]).astype(np.float32) / 255.0,
           'label': np.stack([e['label'] for e in examples]).astype(np.int32)}
  state = engine.init_state(init_fn)
  step = engine.train_step(model=model, task=task, schedule=schedule, accum_steps=1)
  losses = []
  for _ in range(150):
    state, metrics = step(state, engine.put_batch(batch))
    metrics = engine.to_host(metrics)
    losses.append(metrics['loss'][0] / metrics['loss'][1])
  assert metrics['accuracy'][0] / metrics['accuracy'][1] > 0.9, metrics
  assert losses[-1] < 0.35 * losses[0], losses
