r"""YOLOv3 (Darknet-53, 416x416) on COCO 2017: train2017 -> val2017, 80 classes.

  pip install tensorflow-cpu   # only to prepare the data, once
  python -m data.prepare --dataset=coco/2017
  python launch.py --config=configs/yolov3_coco.py

darknet's yolov3.cfg (Redmon & Farhadi 2018): SGD with momentum 0.9, weight decay
5e-4, batch 64, learning rate 1e-3 after a 1,000-step burn-in (a (step / 1000)^4 ramp;
here a linear warm-up), 500,200 steps; here cosine instead of darknet's steps at 400k
and 450k. The published 55.3 AP50 (YOLOv3-416)
starts from an ImageNet-pretrained Darknet-53. TFDS reads it as 'coco/2017:1.1.0'
(data.detection_sources); crowd boxes are ignored by the evaluation, as COCO's is.
"""

from configs import yolov3_voc


def get_config():
  c = yolov3_voc.get_config()
  c.data.name = 'coco/2017'
  c.data.train_split = 'train'
  c.data.validation_split = ''
  c.data.test_split = 'validation'
  c.data.max_boxes = 100          # COCO images hold up to 93 objects.
  c.num_train_steps = 500_200
  c.eval_every_steps = 50_000
  c.checkpoint_every_steps = 10_000
  return c
