r"""YOLOv3 on NEON aerial tree crowns (one class, 'tree'): real annotated RGB photographs
(10 cm/pixel) that ship with the PyPI package deepforest (data.trees), offline.

  python -m data.prepare --dataset=neon_trees   # takes them out of the deepforest wheel
  python launch.py --config=configs/yolov3_neon_trees.py

Training: 400x400 tiles (half-tile overlap) of the three annotated images other than
OSBS_029; OSBS_029 (400x400, 61 crowns) is held out whole for the test. Tiles and the
test image are letterboxed to 320 the same way (x 0.8), so crowns keep one scale. The
detector is sized for the 2-core CPU; anchors from `python -m data.anchors` on the tiles.
"""

from configs import common


def get_config():
  c = common.get_detection_config()
  c.model.name = 'yolov3_mobilenet_v2'
  c.model.width = 0.5
  c.model.neck_width = 0.25
  c.data.source = 'neon_trees'
  c.data.name = 'neon_trees'
  c.data.dir = ''                 # '' = data.trees.DEFAULT_DIR.
  c.data.train_split = 'train'
  c.data.validation_split = ''    # 'validation' (SOAP_061) with train_minus_validation.
  c.data.test_split = 'test'
  c.data.image_size = 320
  c.data.tile_size = 400
  c.data.max_boxes = 128
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  # python -m data.anchors --config=configs/yolov3_neon_trees.py (3,223 boxes; mean best
  # IoU 0.834, the YOLOv3 COCO anchors' 0.668):
  c.anchors = ((12.3, 12.6), (18.0, 18.0), (21.3, 27.1),  # stride 8
               (27.7, 26.8), (37.3, 27.4), (31.6, 35.9),  # stride 16
               (40.1, 39.3), (47.5, 49.6), (63.8, 68.1))  # stride 32
  c.loss.assign_threshold = 0.213  # YOLOv4's multiple anchors per box (as the scenes').
  c.augment.flip = True
  c.augment.scale_range = (0.8, 1.25)
  c.augment.translate = 0.1
  c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.2
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_train_steps = 500
  c.num_epochs = -1.0
  c.learning_rate = 2e-3
  c.warmup_steps = 50
  c.optim.weight_decay = 5e-4
  c.data.num_threads = 1
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 100
  return c
