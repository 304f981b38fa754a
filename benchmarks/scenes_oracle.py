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
"""

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from configs import unetpp_fashion_mnist_scenes
from data import scenes, transforms
from tasks import confusion
from train import reporting
from train.restore import Predictor

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config of the classifier run.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Classifier run (default runs/<config name>).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'last', "'last', 'best' or a step number.")
_NUM_SCENES = flags.DEFINE_integer('num_scenes', 1000, 'Test scenes scored.')
flags.mark_flags_as_required(['config'])


def classify_items(predictor: Predictor, config, images: np.ndarray) -> np.ndarray:
  """The classifier's class [n] for each item image [n, 28, 28] uint8 (the eval
  pipeline's normalisation; the last batch padded)."""
  x = transforms.normalize(images[..., None], config.data.mean, config.data.std)
  size, out = config.eval_batch_size, []
  for start in range(0, len(x), size):
    batch = np.zeros((size, *x.shape[1:]), np.float32)
    part = x[start:start + size]
    batch[:len(part)] = part
    out.append(np.asarray(predictor.predict_batch({'image': batch}))[:len(part)])
  return np.concatenate(out)


def oracle_confusion(pool: scenes.FashionMnistScenes, item_classes: np.ndarray) -> np.ndarray:
  """[11, 11] pixel confusion matrix of the scenes when each visible item pixel gets
  label item_classes[item] + 1 and the background is exact."""
  matrix = np.zeros((scenes.NUM_CLASSES,) * 2, np.int64)
  for index in range(len(pool)):
    scene = pool.scene(index)
    lookup = np.concatenate([[0], item_classes[scene['items']] + 1])
    predicted = lookup[scene['instances']]
    matrix += np.bincount(scene['label'].ravel().astype(np.int64) * scenes.NUM_CLASSES
                          + predicted.ravel(), minlength=scenes.NUM_CLASSES ** 2
                          ).reshape(scenes.NUM_CLASSES, scenes.NUM_CLASSES)
  return matrix


def main(argv):
  del argv
  reporting.quiet_library_logs()
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0]
  predictor = Predictor(config, _WORKDIR.value or os.path.join('runs', name), _CHECKPOINT.value)
  scene_config = unetpp_fashion_mnist_scenes.get_config()
  scene_config.data.dir = config.data.get('dir', '')
  pool = scenes.load_split(scene_config, 'test', _NUM_SCENES.value)
  predicted = classify_items(predictor, config, pool.images)
  metrics = confusion.segmentation_metrics(oracle_confusion(pool, predicted),
                                           scenes.CLASS_NAMES)
  print(json.dumps({'classifier_step': predictor.step,
                    'item_accuracy': float((predicted == pool.labels).mean()),
                    'num_scenes': len(pool), **metrics}))


if __name__ == '__main__':
  app.run(main)
