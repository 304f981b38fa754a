r"""ViT for 32x32 CIFAR-10 (TFDS), trained from scratch.

  pip install tensorflow-cpu && python -m data.prepare --dataset=cifar10   # once, online
  python launch.py --config=configs/vit_cifar10.py

Patch 4 -> 8x8 = 64 tokens. A ViT-S-like width with fewer layers and the recipe the
small-dataset ViT literature uses (e.g. Lee et al. 2021, "Vision Transformer for
Small-Size Datasets"; Touvron et al. 2021, DeiT): AdamW, lr 1e-3 at batch 128 with
cosine decay after warmup, weight decay 0.05, label smoothing 0.1, random crop + flip,
Random Erasing 0.25, mixup/cutmix, stochastic depth 0.1, 200 epochs. The last 5,000
training images select the checkpoint; the test split is evaluated once, at the end.
"""

from configs import common


def get_config():
  c = common.get_base_config()
  common.set_dataset(c, 'cifar10')
  c.model.name = 'vit_custom'
  c.model.image_size = 32
  c.model.patch_size = 4
  c.model.num_channels = 3
  c.model.hidden_size = 384
  c.model.num_layers = 9
  c.model.mlp_dim = 768
  c.model.num_heads = 12
  c.model.classifier = 'token'
  c.model.conv_stem = ()          # Patchify; (64, 128) with patch_size=1 gives the same 8x8
                                  # tokens through Xiao et al.'s conv stem.
  c.model.dropout_rate = 0.0
  c.model.approximate_gelu = True  # tanh GELU (the original ViT); False: exact erf.
  c.model.drop_path_rate = 0.1
  c.model.attention_impl = 'auto'  # 'auto' (cuDNN flash attention on a GPU in bf16/fp16,
                                  # else batched matmuls), 'matmul', 'xla' or 'cudnn'.
  c.num_epochs = 200.0
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.learning_rate = 1e-3
  c.warmup_steps = 5 * 351        # 5 epochs at batch 128 (45,000 training images).
  c.label_smoothing = 0.1
  c.optim.weight_decay = 0.05
  c.optim.grad_clip_norm = 1.0
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.augment.random_erasing_prob = 0.25
  c.augment.mixup_alpha = 0.8
  c.augment.cutmix_alpha = 1.0
  c.eval_every_steps = 3510       # Every 10 epochs, on the validation split.
  c.checkpoint_every_steps = 3510
  c.log_every_steps = 100
  return c
