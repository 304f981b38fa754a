r"""YOLOv3 on Fashion-MNIST scenes (64x64, 10 classes): the offline detection default.

  apt-get install dataset-fashion-mnist   # as root; else: sudo apt-get install ...
  python launch.py --config=configs/yolov3_fashion_mnist_scenes.py
  python launch.py --config=configs/yolov3_fashion_mnist_scenes.py \
      --config.loss.box_loss=giou --workdir=runs/yolov3_scenes_giou   # another box loss

Scenes (data/scenes.py) hold 1-4 real Fashion-MNIST items of 20-48 px at random
positions, occluding each other; each item whose visible part is at least
data.min_visible of it has a box around its visible pixels (as VOC and COCO annotate).
Training scenes use the items of train[:55000], validation scenes those of
train[55000:], test scenes those of the test split: evaluation objects are unseen. The
detector is sized for the 2-core CPU (README: Detection); its anchors come from
`python -m data.anchors` on the training scenes. A backbone pretrained as an item
classifier (`--config.init_from=RUN --config.init_into=backbone`, the ResNet-18 run whose
command is in the README's Detection results) added 0.017 and 0.041 test AP50 (two
seeds) for 2 minutes of pretraining on the 2-core CPU.
"""

from configs import common


def get_config():
  c = common.get_detection_config()
  # ResNet-18 at a quarter width (16-32-64-128 channels): as accurate per step as the
  # MobileNetV2 x0.5 backbone here and 1.4x faster on XLA's CPU backend (README).
  c.model.name = 'yolov3_resnet18'
  c.model.width = 0.25
  c.model.neck_width = 0.25
  # python -m data.anchors --config=configs/yolov3_fashion_mnist_scenes.py --max_examples=5000
  # (11,808 boxes; mean best IoU 0.808, the scaled YOLOv3 COCO anchors' 0.650):
  c.anchors = ((20.9, 10.1), (13.1, 22.8), (24.0, 15.7),  # stride 8
               (21.7, 25.5), (17.8, 36.8), (35.5, 19.2),  # stride 16
               (27.4, 35.6), (38.5, 28.9), (36.2, 41.8))  # stride 32
  c.loss.assign_threshold = 0.213  # YOLOv4's multiple anchors per box: more positives.
  c.nms.method = 'soft_gaussian'  # Best of the four on the validation scenes (README).
  c.batch_size = 32
  c.eval_batch_size = 100
  c.num_train_steps = 4000
  c.num_epochs = -1.0
  c.learning_rate = 2e-3
  c.warmup_steps = 100
  c.optim.weight_decay = 5e-4
  c.augment.scale_range = (0.8, 1.2)
  c.augment.translate = 0.1
  c.data.num_threads = 1
  c.data.num_eval_scenes = 1000
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c
