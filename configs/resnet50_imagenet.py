r"""ResNet-50 (v1.5) on ImageNet-1k (TFDS imagenet2012), 90 epochs.

  # once: download ILSVRC2012 by hand (see the TFDS imagenet2012 page), then
  pip install tensorflow-cpu && python -m data.prepare --dataset=imagenet2012
  python launch.py --config=configs/resnet50_imagenet.py

Goyal et al. 2017 ("Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"):
SGD momentum 0.9, lr 0.1 x batch / 256 with 5 epochs of linear warmup, coupled weight
decay 1e-4 (not on BatchNorm scales/biases), zero-initialised last BN scale of each
block; cosine decay instead of their steps at epochs 30/60/80 (set
optim.schedule='step', optim.step_boundaries='(0.2941,0.6471,0.8824)' for those: the
boundaries are fractions of the 85 epochs after warmup, 25/85, 55/85 and 75/85).
Inception-style random-resized crops (Szegedy et al. 2015) + flips for training;
resize to 256 + 224 center crop for eval. Label smoothing 0.1 (Szegedy et al. 2016;
set 0 for the original recipe); bfloat16 compute.
"""

import ml_collections

from configs import common

# data.train_split 'train[:99%]' of the 1,281,167 training images (the last 1 % is the
# validation split): what an epoch of steps counts.
NUM_TRAIN_EXAMPLES = 1_268_355


def get_config():
  c = common.get_base_config()
  c.batch_size = 1024
  # Lazy references: `--config.batch_size=256` also rescales the lr and the step counts.
  batch_size = c.get_ref('batch_size')
  steps_per_epoch = NUM_TRAIN_EXAMPLES // batch_size
  common.set_dataset(c, 'imagenet2012')
  c.data.eval_crop_size = 224
  c.data.eval_resize_size = 256
  c.data.num_threads = 16
  c.data.num_workers = 8          # JPEG decoding + resizing need worker processes.
  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.width = 64
  c.model.zero_init_last = True
  c.model.num_channels = 3
  c.model.stage_sizes = ml_collections.config_dict.placeholder(tuple)  # Blocks per stage,
                                  # e.g. '(3, 4, 6, 3)', instead of the name's depth.
  c.model.block = ''               # With stage_sizes: 'basic' or 'bottleneck'.
  c.compute_dtype = 'bfloat16'
  c.num_epochs = 90.0
  c.eval_batch_size = 1000
  c.learning_rate = batch_size.to_float() * (0.1 / 256)
  c.warmup_steps = 5 * steps_per_epoch
  c.label_smoothing = 0.1
  c.optim.name = 'sgd'
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 1e-4
  c.optim.weight_decay_mode = 'coupled'
  c.optim.grad_clip_norm = 0.0
  c.optim.schedule = 'cosine'
  c.augment.random_resized_crop_size = 224
  c.augment.random_resized_crop_scale = (0.08, 1.0)
  c.augment.flip = True
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  c.log_every_steps = 100
  return c
