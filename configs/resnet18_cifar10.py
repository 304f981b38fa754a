r"""ResNet-18 with the CIFAR stem on CIFAR-10 (TFDS).

  pip install tensorflow-cpu && python -m data.prepare --dataset=cifar10   # once, online
  python launch.py --config=configs/resnet18_cifar10.py

The common CIFAR recipe for ImageNet-width ResNets: 3x3/1 stem without max-pool (total
stride 8, 4x4 final maps), SGD with Nesterov momentum 0.9, coupled weight decay 5e-4
(L2 as in torch.optim.SGD), lr 0.1 at batch 128 with 2 epochs of warmup then cosine
decay, 4-pixel padded random crops and flips (He et al. 2016, Sec. 4.2), 200 epochs.
The last 5,000 training images are the validation split (checkpoint selection); the
test split is evaluated once, at the end.
"""

import ml_collections

from configs import common


def get_config():
  c = common.get_base_config()
  common.set_dataset(c, 'cifar10')
  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.model.width = 64
  c.model.zero_init_last = False
  c.model.num_channels = 3
  c.model.stage_sizes = ml_collections.config_dict.placeholder(tuple)  # Blocks per stage,
                                  # e.g. '(3, 4, 6, 3)', instead of the name's depth.
  c.model.block = ''               # With stage_sizes: 'basic' or 'bottleneck'.
  c.num_epochs = 200.0
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.learning_rate = 0.1
  c.warmup_steps = 702            # 2 epochs of 351 steps (45,000 images; 5,000 validate).
  c.optim.name = 'sgd'
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 5e-4
  c.optim.weight_decay_mode = 'coupled'
  c.optim.grad_clip_norm = 0.0    # The reference recipe does not clip.
  c.optim.schedule = 'cosine'
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.eval_every_steps = 3510       # Every 10 epochs, on the validation split.
  c.checkpoint_every_steps = 3510
  c.log_every_steps = 100
  return c
