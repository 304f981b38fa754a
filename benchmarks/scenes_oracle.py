r"""What a given item classifier allows on Fashion-MNIST scenes: the mIoU of a segmentation
that knows every item's exact mask and labels the item with the classifier's prediction
on the item's own 28x28 image.

  python -m benchmarks.scenes_oracle --config=configs/vit_fashion_mnist.py \
      [--workdir=runs/vit_fashion_mnist] [--checkpoint=last|best|STEP] [--num_scenes=1000]

A segmentation model must both find the items and tell their classes apart; this
measures the second part alone, with every pixel boundary right and each item seen
whole, unscaled and unoccluded (so it is an upper bound for a model that classifies
items as well as this classifier). The scenes are the test scenes of
configs/unetpp_fashion_mnist_scenes.py (1,000 by default, items of the test split);
the classifier is any trained classification run of this codebase on Fashion-MNIST.

Given a segmentation run instead (its config and workdir), the classifier is the
segmenter itself: each item gets the most frequent foreground class the segmenter
predicts over the item's visible pixels (background when it predicts none). Its item
accuracy and that mIoU, next to the segmenter's own mIoU on the same scenes, tell how
much of the segmenter's gap is telling the items apart and how much is their outlines:

  python -m benchmarks.scenes_oracle --config=configs/unetpp_fashion_mnist_scenes.py \
      --workdir=runs/unetpp_fashion_mnist_scenes
"""

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from configs import unetpp_fashion_mnist_scenes
from data import scenes, transforms
from tasks import confusion
from train import reporting, run_config
from train.restore import Predictor

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config of the classifier run.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Classifier run (default runs/<config name>).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'last', "'last', 'best' or a step number.")
_NUM_SCENES = flags.DEFINE_integer('num_scenes', 1000, 'Test scenes scored.')
MOSTLY_VISIBLE = 0.75  # Items at least this fraction visible are also scored on their own.
flags.mark_flags_as_required(['config'])


def predict_images(predictor: Predictor, config, images: np.ndarray) -> np.ndarray:
  """The run's predictions for uint8 images [n, h, w, c], in batches of
  config.eval_batch_size (the eval pipeline's normalisation; the last batch padded)."""
  x = transforms.normalize(images, config.data.mean, config.data.std)
  size, out = config.eval_batch_size, []
  for start in range(0, len(x), size):
    batch = np.zeros((size, *x.shape[1:]), np.float32)
    part = x[start:start + size]
    batch[:len(part)] = part
    out.append(np.asarray(predictor.predict_batch({'image': batch}))[:len(part)])
  return np.concatenate(out)


def classify_items(predictor: Predictor, config, images: np.ndarray) -> np.ndarray:
  """The classifier's class [n] for each item image [n, 28, 28] uint8."""
  return predict_images(predictor, config, images[..., None])


def pixel_confusion(label: np.ndarray, predicted: np.ndarray) -> np.ndarray:
  """[11, 11] confusion matrix (rows true, columns predicted) of label maps of any shape."""
  return np.bincount(label.ravel().astype(np.int64) * scenes.NUM_CLASSES
                     + predicted.ravel().astype(np.int64), minlength=scenes.NUM_CLASSES ** 2
                     ).reshape(scenes.NUM_CLASSES, scenes.NUM_CLASSES)


def oracle_confusion(pool: scenes.FashionMnistScenes, classes_of) -> np.ndarray:
  """[11, 11] pixel confusion matrix of the scenes when the background is exact and each
  visible pixel of a scene's k-th item gets label classes_of(index, scene)[k] + 1
  (classes 0..9; -1 labels the item background). `scene` is pool.scene(index)."""
  matrix = np.zeros((scenes.NUM_CLASSES,) * 2, np.int64)
  for index in range(len(pool)):
    scene = pool.scene(index)
    lookup = np.concatenate([[0], np.asarray(classes_of(index, scene)) + 1])
    matrix += pixel_confusion(scene['label'], lookup[scene['instances']])
  return matrix


def segment_scenes(predictor: Predictor, config, pool: scenes.FashionMnistScenes) -> np.ndarray:
  """The segmenter's label maps [n_scenes, S, S] int32 of every scene of `pool`."""
  return predict_images(predictor, config, np.stack([pool[i]['image'] for i in range(len(pool))]))


def majority_classes(predicted: np.ndarray, instances: np.ndarray, count: int) -> np.ndarray:
  """[count] class 0..9 of each item: the most frequent foreground label - 1 of
  `predicted` [S, S] over the item's visible pixels (`instances` == k + 1); -1 where it
  has none (hidden, or all predicted background)."""
  classes = np.full(count, -1, np.int64)
  for k in range(count):
    votes = np.bincount(predicted[instances == k + 1], minlength=scenes.NUM_CLASSES)[1:]
    if votes.any():
      classes[k] = int(votes.argmax())
  return classes


def main(argv):
  del argv
  reporting.quiet_library_logs()
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0]
  predictor = Predictor(config, _WORKDIR.value or os.path.join('runs', name), _CHECKPOINT.value)
  scene_config = unetpp_fashion_mnist_scenes.get_config()
  scene_config.data.dir = config.data.get('dir', '')
  pool = scenes.load_split(scene_config, 'test', _NUM_SCENES.value)
  if config.task == 'segmentation':
    maps = segment_scenes(predictor, config, pool)
    own = np.zeros((scenes.NUM_CLASSES,) * 2, np.int64)  # The segmenter's own confusion.

    def classes_of(index, scene):
      nonlocal own
      own = own + pixel_confusion(scene['label'], maps[index])
      return majority_classes(maps[index], scene['instances'], len(scene['items']))
  else:
    predicted = classify_items(predictor, config, pool.images)
    classes_of = lambda index, scene: predicted[scene['items']]
  # Items named right among the scenes' items with visible pixels, and among the mostly
  # visible ones: the segmenter sees items scaled, cut by the canvas and covered; the
  # classifier always sees the whole 28x28 item.
  named = {'item_accuracy': [0, 0], 'item_accuracy_mostly_visible': [0, 0]}

  def scored_classes_of(index, scene):
    classes = classes_of(index, scene)
    for key, shown in (('item_accuracy', scene['visible'] > 0),
                       ('item_accuracy_mostly_visible', scene['visible'] >= MOSTLY_VISIBLE)):
      named[key][0] += int((classes[shown] == scene['classes'][shown]).sum())
      named[key][1] += int(shown.sum())
    return classes

  matrix = oracle_confusion(pool, scored_classes_of)
  extra = {key: right / shown for key, (right, shown) in named.items()}
  if config.task != 'segmentation':  # The classifier's test top-1 over every test item.
    extra['test_top1'] = float((predicted == pool.labels).mean())
  else:
    own = confusion.segmentation_metrics(own, scenes.CLASS_NAMES)
    extra.update(segmenter_miou=own['miou'], segmenter_pixel_accuracy=own['pixel_accuracy'])
  metrics = confusion.segmentation_metrics(matrix, scenes.CLASS_NAMES)
  print(json.dumps({'classifier_step': predictor.step, **extra, 'num_scenes': len(pool),
                    **metrics}))


if __name__ == '__main__':
  app.run(main, flags_parser=run_config.parse_flags)
