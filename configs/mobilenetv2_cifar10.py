r"""MobileNetV2 (width 1.0) with the CIFAR stem on CIFAR-10 (TFDS).

  pip install tensorflow-cpu && python -m data.prepare --dataset=cifar10   # once, online
  python launch.py --config=configs/mobilenetv2_cifar10.py

The CIFAR stem keeps stride 1 in the stem and in the first 24-channel row (total stride
8, 4x4 final maps). Same optimisation recipe as configs/resnet18_cifar10.py (SGD +
Nesterov, coupled weight decay 5e-4, warmup + cosine, crop + flip, 200 epochs), with
the reference implementations' dropout 0.2 before the classifier (TF-slim, torchvision;
the paper does not state one).
"""

from configs import resnet18_cifar10


def get_config():
  c = resnet18_cifar10.get_config()
  del c.model.width, c.model.zero_init_last, c.model.stage_sizes, c.model.block
  c.model.name = 'mobilenet_v2'
  c.model.stem = 'cifar'
  c.model.width_multiplier = 1.0
  c.model.dropout_rate = 0.2
  c.model.depthwise_impl = 'auto'  # 'shifted' on CPU, XLA's grouped conv elsewhere.
  return c
