r"""MobileNetV2 (CIFAR stem, width 0.35) on Fashion-MNIST from local IDX files: offline.

  sudo apt-get install dataset-fashion-mnist
  python launch.py --config=configs/mobilenetv2_fashion_mnist.py

Width multiplier 0.35 (Sandler et al. 2018, the smallest of Fig. 5) with the CIFAR stem on
28x28x1 images. MobileNetV2 is far slower per FLOP than ResNet on a CPU (README:
Results), so this run is kept to 2 epochs, about a quarter of an hour on 2 cores.
Recipe of configs/resnet18_fashion_mnist.py.
"""

from configs import mobilenetv2_cifar10, resnet18_fashion_mnist


def get_config():
  c = mobilenetv2_cifar10.get_config()
  fmnist = resnet18_fashion_mnist.get_config()
  c.data = fmnist.data
  c.augment = fmnist.augment
  c.model.num_channels = 1
  c.model.width_multiplier = 0.35
  c.num_epochs = 2.0
  c.warmup_steps = 200
  # Every epoch, with a validation_split (none here: the test split is evaluated
  # once, at the end).
  c.eval_every_steps = 468
  c.checkpoint_every_steps = 468
  return c
