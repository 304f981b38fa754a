r"""ResNet-18 (CIFAR stem, narrow) on Fashion-MNIST from local IDX files: offline.

  sudo apt-get install dataset-fashion-mnist
  python launch.py --config=configs/resnet18_fashion_mnist.py

The ResNet-18 layout with the 3x3/1 CIFAR stem on 28x28x1 images (final maps 4x4) at a
quarter of the width (16-32-64-128 channels, 0.70 M parameters), so a run fits in about
a quarter of an hour on a 2-core CPU (README: Results); `--config.model.width=64` gives
the full-width network. Recipe of configs/resnet18_cifar10.py (SGD + Nesterov, coupled
weight decay 5e-4, warmup + cosine) with flips only, 5 epochs.
"""

from configs import common, resnet18_cifar10


def get_config():
  c = resnet18_cifar10.get_config()
  common.set_dataset(c, 'fashion_mnist')
  c.data.num_threads = 1          # In-memory arrays: more threads only take CPU from the step.
  c.model.num_channels = 1
  c.model.width = 16
  c.num_epochs = 5.0
  c.warmup_steps = 200
  c.augment.crop_padding = 0
  c.augment.flip = True
  # Every 2 epochs of 468 steps, with a validation_split (none here: the test split is
  # evaluated once, at the end).
  c.eval_every_steps = 936
  c.checkpoint_every_steps = 936
  return c
