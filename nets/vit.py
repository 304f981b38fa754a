"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", ICLR).

Sec. 3.1 / Eq. 1-4: the image is cut into P x P patches, each linearly embedded
(a P x P convolution with stride P), a learned class token is prepended, learned
position embeddings are added, and L pre-LN encoder blocks (multi-head
self-attention and a GELU MLP, each with a residual connection) follow. The head
reads the final LayerNorm's class-token output (or the mean over patch tokens,
`classifier='gap'`). Sec. 3.2: for another input resolution the position
embeddings are 2-D interpolated, here bilinearly, at apply time.

`conv_stem` (optional) puts a convolutional stem before the patch embedding: 3x3
stride-2 convolutions, each followed by BatchNorm and ReLU, whose output the patch
embedding then cuts (patch_size 1: the single 1x1 convolution that ends the stem). This
is the "Hybrid Architecture" of Sec. 3.1 with the small stem of Xiao et al. 2021 ("Early
Convolutions Help Transformers See Better", NeurIPS, Sec. 3), which trains faster and
more stably than the patchify stem at equal cost.

Named variants (Table 1): Ti (192/12/768/3), S (384/12/1536/6),
B (768/12/3072/12), L (1024/24/4096/16) as (width/depth/mlp/heads).
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import layers

VARIANTS = {
    'ti': dict(hidden_size=192, num_layers=12, mlp_dim=768, num_heads=3),
    's': dict(hidden_size=384, num_layers=12, mlp_dim=1536, num_heads=6),
    'b': dict(hidden_size=768, num_layers=12, mlp_dim=3072, num_heads=12),
    'l': dict(hidden_size=1024, num_layers=24, mlp_dim=4096, num_heads=16),
}


class EncoderBlock(nn.Module):
  """Pre-LN Transformer encoder block (Dosovitskiy et al. 2021, Eq. 2-3)."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  approximate_gelu: bool = True
  attention_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    """x: [batch, tokens, hidden] -> same shape."""
    drop_path = layers.DropPath(self.drop_path_rate)
    y = nn.LayerNorm(dtype=self.dtype, name='ln_attention')(x)
    y = layers.MultiHeadAttention(self.num_heads, self.attention_dropout_rate,
                                  self.attention_impl, dtype=self.dtype,
                                  name='attention')(y, deterministic=deterministic)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = x + drop_path(y, deterministic=deterministic)
    y = nn.LayerNorm(dtype=self.dtype, name='ln_mlp')(x)
    gelu = functools.partial(nn.gelu, approximate=self.approximate_gelu)
    y = layers.MlpBlock(self.mlp_dim, self.dropout_rate, activation=gelu, dtype=self.dtype,
                        name='mlp')(y, deterministic=deterministic)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return x + drop_path(y, deterministic=deterministic)


def interpolate_position_embeddings(posemb: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Bilinearly resizes a square grid of position embeddings (ViT Sec. 3.2).

  jax.image.resize: half-pixel centres, antialiased when the grid shrinks. big_vision
  (scipy.ndimage.zoom, order 1) aligns the corners and timm defaults to bicubic, so
  their resized values differ slightly.

  Args:
    posemb: [1, old_h * old_w, hidden] grid embeddings (no class token).
    grid: (new_h, new_w).
  Returns:
    [1, new_h * new_w, hidden].
  """
  old = int(math.isqrt(posemb.shape[1]))
  hidden = posemb.shape[-1]
  posemb = posemb.reshape(1, old, old, hidden)
  posemb = jax.image.resize(posemb, (1, *grid, hidden), method='bilinear')
  return posemb.reshape(1, grid[0] * grid[1], hidden)


class VisionTransformer(nn.Module):
  """ViT classifier.

  Attributes:
    num_classes: size of the output layer.
    patch_size: P; input height and width (after the conv stem) must be multiples of it.
    image_size: the resolution the position embeddings are made for (their grid is
      stem_side(image_size) // patch_size per side); other resolutions interpolate them.
    hidden_size, num_layers, mlp_dim, num_heads: Table 1 of the paper.
    dropout_rate: dropout after the patch embedding and in each block.
    attention_dropout_rate: dropout on attention weights.
    drop_path_rate: stochastic-depth rate of the last block; block i gets
      rate * i / (num_layers - 1) (linear rule of Huang et al. 2016).
    classifier: 'token' (class token) or 'gap' (mean over patch tokens).
    num_channels: expected input channels (checked).
    approximate_gelu: the MLP's GELU as the tanh approximation (True: Flax's `nn.gelu`
      default, what the original JAX ViT and big_vision compute) or exact with erf
      (False: `torch.nn.GELU()`, what timm's ViT computes; set by an imported timm
      state_dict so the model computes what timm does). Parameters are the same.
    attention_impl: the attention core, one of nets.layers.ATTENTION_IMPLS ('auto': cuDNN
      flash attention on a GPU in bfloat16/float16, batched matmuls elsewhere).
    conv_stem: output channels of the stem's 3x3 stride-2 convolutions (SAME padding:
      each halves a side, rounding up, 28 -> 14 -> 7 -> 4); () for the plain patchify stem.
    axis_name: pmap axis for the stem's synchronised BatchNorm (None under jit).
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
  """
  num_classes: int
  patch_size: int = 16
  image_size: int = 224
  hidden_size: int = 768
  num_layers: int = 12
  mlp_dim: int = 3072
  num_heads: int = 12
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  classifier: str = 'token'
  num_channels: int = 3
  approximate_gelu: bool = True
  attention_impl: str = 'auto'
  conv_stem: tuple[int, ...] = ()
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def stem_side(self, side: int) -> int:
    """The side of the conv stem's output for an input side (ceil(side / 2^stages))."""
    for _ in self.conv_stem:
      side = -(-side // 2)
    return side

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """images: [batch, height, width, channels] float -> logits [batch, num_classes] float32.

    Raises:
      ValueError: wrong channel count, sides not multiples of the patch size, or
        an unknown `classifier`.
    """
    if self.classifier not in ('token', 'gap'):
      raise ValueError(f"classifier must be 'token' or 'gap', got {self.classifier!r}")
    layers.check_image(images, self.num_channels, self.patch_size, 'ViT')
    height, width = (self.stem_side(n) for n in images.shape[1:3])
    if height % self.patch_size or width % self.patch_size:
      stem = f' after the {len(self.conv_stem)}-stage conv stem' if self.conv_stem else ''
      raise ValueError(f'image size {height}x{width}{stem} is not a multiple of the patch '
                       f'size {self.patch_size}')
    deterministic = not train
    x = images.astype(self.dtype)
    for i, channels in enumerate(self.conv_stem):
      x = nn.Conv(channels, (3, 3), strides=(2, 2), padding='SAME', use_bias=False,
                  kernel_init=layers.conv_kernel_init, dtype=self.dtype, name=f'stem_conv_{i}')(x)
      x = nn.relu(layers.batch_norm(train=train, axis_name=self.axis_name, dtype=self.dtype,
                                    name=f'stem_bn_{i}')(x))
    x = nn.Conv(self.hidden_size, (self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                padding='VALID', dtype=self.dtype, name='patch_embedding')(x)
    batch, gh, gw, _ = x.shape
    x = x.reshape(batch, gh * gw, self.hidden_size)

    grid = self.stem_side(self.image_size) // self.patch_size
    posemb = self.param('pos_embedding', nn.initializers.normal(stddev=0.02),
                        (1, grid * grid, self.hidden_size))
    if (gh, gw) != (grid, grid):
      posemb = interpolate_position_embeddings(posemb, (gh, gw))
    x = x + posemb.astype(self.dtype)
    if self.classifier == 'token':
      cls = self.param('cls_token', nn.initializers.zeros, (1, 1, self.hidden_size))
      cls_pos = self.param('cls_pos_embedding', nn.initializers.normal(stddev=0.02),
                           (1, 1, self.hidden_size))
      x = jnp.concatenate([jnp.tile(cls + cls_pos, (batch, 1, 1)).astype(self.dtype), x], axis=1)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

    for i in range(self.num_layers):
      rate = self.drop_path_rate * i / max(self.num_layers - 1, 1)
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                       self.attention_dropout_rate, rate, self.approximate_gelu,
                       self.attention_impl, dtype=self.dtype,
                       name=f'encoder_block_{i}')(x, deterministic=deterministic)
    x = nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)
    x = x[:, 0] if self.classifier == 'token' else x.mean(axis=1)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                      name='head')(x)
    return logits.astype(jnp.float32)


def vit(variant: str, patch_size: int, **overrides) -> VisionTransformer:
  """A named ViT variant ('ti', 's', 'b', 'l') with `overrides` on top."""
  return VisionTransformer(patch_size=patch_size, **{**VARIANTS[variant], **overrides})
