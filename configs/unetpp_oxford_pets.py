r"""UNet++ on Oxford-IIIT Pet trimaps (pet / background / border) through TFDS.

  pip install tensorflow-cpu && python -m data.prepare --dataset=oxford_iiit_pet
  python launch.py --config=configs/unetpp_oxford_pets.py

Images and trimaps resized to 128x128 (bilinear / nearest); 10 % of the training split
held out for validation (checkpoint selection), the test split evaluated once. Random
flips and rescaling (0.5-2). The paper's filters (32-512), batch 32, Adam 1e-3 cosine.
"""

from configs import common


def get_config():
  c = common.get_segmentation_config()
  c.data.source = 'tfds'
  c.data.name = 'oxford_iiit_pet'
  c.data.train_split = 'train[:90%]'
  c.data.validation_split = 'train[90%:]'
  c.data.test_split = 'test'
  c.data.num_classes = 3
  c.data.image_size = 128
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.augment.scale_range = (0.5, 2.0)
  c.loss.name = 'cross_entropy'
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 50.0
  c.learning_rate = 1e-3
  c.warmup_steps = 500
  return c
