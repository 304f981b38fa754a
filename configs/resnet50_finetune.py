r"""ResNet-50 pre-trained on ImageNet-1k (torchvision weights), fine-tuned on a TFDS
dataset of your choice (default: Oxford Flowers-102, 1,020 training images).

  # once, with network: torchvision's IMAGENET1K_V1 weights as a file
  python -c "import torch, torchvision; torch.save(torchvision.models.resnet50(
      weights='IMAGENET1K_V1').state_dict(), 'resnet50_v1.pth')"
  python -m pretrained.convert --format=torchvision --weights=resnet50_v1.pth \
      --model=resnet50 --out=weights/resnet50_tv
  pip install tensorflow-cpu && python -m data.prepare --dataset=oxford_flowers102
  python launch.py --config=configs/resnet50_finetune.py
  # another dataset: --config.data.name=oxford_iiit_pet --config.data.train_split=...

BiT-HyperRule (Kolesnikov et al. 2020, "Big Transfer (BiT)", Sec. 3.3): SGD with
momentum 0.9, batch 512, initial learning rate 0.003, no weight decay; a linear warmup
of 100 steps, then the rate divided by 10 at 200, 300 and 400 of 500 steps for datasets
below 20k images (10k steps with drops at 3k/6k/9k below 500k, and MixUp 0.1 from
20k: set num_train_steps, warmup_steps and optim.step_boundaries accordingly).
Deviation: torchvision's weights were trained at 224x224 with ImageNet's mean / std, so
images are normalised that way, trained with a random-resized crop to 224 + flip and
evaluated resized to 256 and centre-cropped to 224 (torchvision's evaluation), where
BiT resizes to 448 and crops 384. The new head is initialised afresh (the log says so).
"""

from configs import common


def get_config():
  c = common.get_base_config()
  c.data.source = 'tfds'
  c.data.name = 'oxford_flowers102'
  c.data.train_split = 'train'
  c.data.validation_split = 'validation'
  c.data.test_split = 'test'
  c.data.mean = (0.485, 0.456, 0.406)   # ImageNet's, as the pre-trained weights expect.
  c.data.std = (0.229, 0.224, 0.225)
  c.data.eval_resize_size = 256
  c.data.eval_crop_size = 224
  c.init_from = 'weights/resnet50_tv'
  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.num_channels = 3
  c.augment.random_resized_crop_size = 224
  c.augment.random_resized_crop_scale = (0.08, 1.0)
  c.augment.flip = True
  c.compute_dtype = 'bfloat16'
  c.num_train_steps = 500
  c.batch_size = 512
  c.eval_batch_size = 500
  c.learning_rate = 0.003
  c.warmup_steps = 100
  c.label_smoothing = 0.0
  c.optim.name = 'sgd'
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 0.0
  c.optim.schedule = 'step'
  c.optim.step_boundaries = (0.25, 0.5, 0.75)  # Of the 400 post-warmup steps: 200/300/400.
  c.optim.step_factor = 0.1
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 100
  c.log_every_steps = 20
  return c
