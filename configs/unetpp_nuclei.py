r"""UNet++ on nuclei vs background in fluorescence microscopy (one Data Science Bowl 2018
image shipped by the PyPI package stardist): offline, real data.

  python -m data.prepare --dataset=stardist_nuclei
  python launch.py --config=configs/unetpp_nuclei.py

The 512x512 image is split into column strips (data/nuclei.py): training tiles from
columns 0-320 (stride half a tile), validation 320-384, test 384-512 (held out, never
trained on). 64x64 tiles, random flips and rescaling. The UNet++ paper's domain: it
reports 92.5 % nuclei IoU with deep supervision on the whole DSB 2018 set (Zhou et al.
2019, IEEE TMI); here one image trains (README: test nucleus IoU 0.895).
"""

from configs import common


def get_config():
  c = common.get_segmentation_config()
  c.data.source = 'stardist_nuclei'
  c.data.name = 'stardist_nuclei'
  c.data.train_split = 'train'
  c.data.validation_split = 'validation'
  c.data.test_split = 'test'
  c.data.num_classes = 2
  c.data.image_size = 64
  c.data.mean = (0.133,)          # Of the training tiles.
  c.data.std = (0.102,)
  c.data.num_threads = 1
  c.augment.scale_range = (0.75, 1.25)
  c.model.width = 0.25
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_train_steps = 1000       # Validation mIoU peaks early (step 250 of the README run).
  c.num_epochs = -1.0
  c.learning_rate = 3e-3
  c.warmup_steps = 100
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  return c
