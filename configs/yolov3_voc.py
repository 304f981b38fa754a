r"""YOLOv3 (Darknet-53, 416x416) on PASCAL VOC: trained on VOC 2007 + 2012 trainval,
tested on VOC 2007 test (the protocol of Faster R-CNN and YOLO), 20 classes.

  pip install tensorflow-cpu   # only to prepare the data, once
  python -m data.prepare --dataset=voc/2007 && python -m data.prepare --dataset=voc/2012
  python launch.py --config=configs/yolov3_voc.py

The optimiser follows darknet's yolov3-voc.cfg (Redmon & Farhadi 2018): SGD with
momentum 0.9, weight decay 5e-4, batch 64, learning rate 1e-3 after a 1,000-step
burn-in (darknet ramps the rate as (step / 1000)^4; here linearly over the same 1,000
steps); the schedule here is cosine over 50,000 steps (~193 epochs of 16,551 images
at batch 64) instead of darknet's steps. Training starts from random weights: the
published ~80 % VOC AP50 needs an ImageNet-pretrained Darknet-53 (no import of darknet
weights here).
Difficult objects are ignored by the evaluation (tasks.coco_map), as VOC's devkit does.
Papers on VOC 2007 test (YOLO, SSD, Faster R-CNN) report the 11-point AP50 of the 2007
devkit: compare with the logged 'AP50_11pt', not with 'AP50' (COCO's 101 points).
"""

from configs import common


def get_config():
  c = common.get_detection_config()
  c.model.name = 'yolov3'
  c.data.source = 'tfds'
  c.data.name = 'voc/2007'
  c.data.train_split = 'voc/2007:train+validation,voc/2012:train+validation'
  c.data.validation_split = ''    # VOC has no held-out split besides 2007 test.
  c.data.test_split = 'test'
  c.data.image_size = 416
  c.data.max_boxes = 64           # VOC images hold at most 42 objects.
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.anchors = common.YOLOV3_COCO_ANCHORS
  c.augment.flip = True
  c.augment.scale_range = (0.5, 1.5)
  c.augment.translate = 0.2
  c.augment.mosaic_prob = 0.5
  c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.4
  c.optim.name = 'sgd'
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.weight_decay_mode = 'coupled'  # darknet adds decay to the gradient.
  c.optim.grad_clip_norm = 10.0
  c.learning_rate = 1e-3
  c.batch_size = 64
  c.eval_batch_size = 64
  c.num_train_steps = 50_000
  c.num_epochs = -1.0
  c.warmup_steps = 1000
  c.compute_dtype = 'bfloat16'
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  return c
