r"""UNet++ with deep supervision on Fashion-MNIST scenes (64x64, 11 classes): the offline
segmentation default.

  apt-get install dataset-fashion-mnist   # as root; else: sudo apt-get install ...
  python launch.py --config=configs/unetpp_fashion_mnist_scenes.py
  python launch.py --config=configs/unetpp_fashion_mnist_scenes.py \
      --config.model.name=unet --workdir=runs/unet_fashion_mnist_scenes   # the U-Net baseline

Scenes (data/scenes.py) hold 1-4 real Fashion-MNIST items at random positions and sizes,
occluding each other; each foreground pixel is labelled with its item's class (10) or
background. Training scenes use the items of train[:55000], validation scenes those of
train[55000:], test scenes those of the test split: evaluation objects are unseen. UNet++
at a quarter of the paper's filters (8, 16, 32, 64, 128), sized for the 2-core CPU
(README: Segmentation); per-pixel cross entropy averaged over the 4 heads
(--config.loss.name=bce_dice: the paper's BCE + Dice).
"""

from configs import common


def get_config():
  c = common.get_segmentation_config()
  c.model.width = 0.25
  c.loss.name = 'cross_entropy'   # Learns 11 classes faster here than BCE + Dice.
  c.batch_size = 16
  c.eval_batch_size = 100
  c.num_train_steps = 1500
  c.num_epochs = -1.0
  c.learning_rate = 3e-3
  c.warmup_steps = 100
  c.optim.weight_decay = 1e-4
  c.data.num_threads = 1
  c.data.num_eval_scenes = 1000
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  return c
