r"""ViT-B/16 pre-trained on ImageNet-21k, fine-tuned on CIFAR-10 (TFDS) at 384x384.

  # once, with network: the original checkpoint (google-research/vision_transformer)
  gsutil cp gs://vit_models/imagenet21k/ViT-B_16.npz .
  python -m pretrained.convert --format=vit_npz --weights=ViT-B_16.npz --model=vit_b16 \
      --out=weights/vit_b16_in21k
  pip install tensorflow-cpu && python -m data.prepare --dataset=cifar10
  python launch.py --config=configs/vit_b16_cifar10_finetune.py

The fine-tuning recipe of Dosovitskiy et al. 2021 (Sec. 4.1 and Appendix B.1.1,
Table 4): SGD with momentum 0.9, batch 512, no weight decay, gradient clipping at
global norm 1, linear warmup (500 steps) then cosine decay to 0, 10,000 steps for
CIFAR-10, resolution 384 (position embeddings resized from 14x14 to 24x24, Sec. 3.2),
2 % of the training set held out to select the checkpoint; the learning rate is the
top of the paper's sweep {0.001, 0.003, 0.01, 0.03}. The new 10-class head starts at
zero (Sec. 3.2: "a zero-initialized D x K feedforward layer"); the checkpoint's
pre_logits layer is dropped, as the original fine-tuning code does. Pixels are scaled
to [-1, 1] as in pre-training. Training images: random-resized (Inception) crop to the
resolution + flip; eval images: resized to it. Target: the original JAX release's
≈ 98.9-99.0 % top-1.

At 224 instead (cheaper): --config.model.image_size=224 (the crop sizes follow it).
The 512-image batch is accumulated over 8 micro-batches (grad_accum_steps) so that
384x384 fits one 80 GB GPU; lower it on bigger or more devices.
"""

from configs import common


def get_config():
  c = common.get_base_config()
  common.set_dataset(c, 'cifar10')
  c.data.train_split = 'train[:98%]'
  c.data.validation_split = 'train[98%:]'
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.5, 0.5, 0.5)
  c.init_from = 'weights/vit_b16_in21k'
  c.model.name = 'vit_b16'
  c.model.image_size = 384
  resolution = c.model.get_ref('image_size')
  c.model.num_channels = 3
  c.model.classifier = 'token'
  c.model.dropout_rate = 0.0
  c.model.approximate_gelu = True  # tanh GELU as the original ViT; False for timm's weights.
  c.model.attention_impl = 'auto'  # 'auto' (cuDNN flash attention on a GPU in bf16/fp16,
                                  # else batched matmuls), 'matmul', 'xla' or 'cudnn'.
  c.augment.random_resized_crop_size = resolution
  # The original fine-tuning input pipeline's Inception crop: 5-100 % of the area
  # (tf.image.sample_distorted_bounding_box with area_range=(0.05, 1.0)).
  c.augment.random_resized_crop_scale = (0.05, 1.0)
  c.augment.flip = True
  c.data.eval_crop_size = resolution
  c.data.eval_resize_size = resolution
  c.compute_dtype = 'bfloat16'
  c.num_train_steps = 10_000
  c.batch_size = 512
  c.grad_accum_steps = 8
  c.eval_batch_size = 512
  c.learning_rate = 0.03
  c.warmup_steps = 500
  c.label_smoothing = 0.0
  c.optim.name = 'sgd'
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0
  c.optim.schedule = 'cosine'
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.log_every_steps = 50
  return c
