r"""U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI) and UNet++ (Zhou et al. 2018, "UNet++: A Nested U-Net Architecture
for Medical Image Segmentation", DLMIA; Zhou et al. 2019, "UNet++: Redesigning Skip
Connections to Exploit Multiscale Features in Image Segmentation", IEEE TMI).

Nodes X^{i,j}: i = downsampling level (0 = full resolution), j = position along the skip
pathway (DLMIA Sec. 2, Eq. 1; TMI Sec. III, Eq. 1):

  X^{i,0} = H(Pool(X^{i-1,0}))                               (X^{0,0} = H(images))
  X^{i,j} = H([X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})])    j >= 1, [.] = channel concat

  H     two (3x3 conv -> BatchNorm -> ReLU), 'same' padding, filters[i] channels
  Pool  2x2 max-pool, stride 2
  Up    2x2 stride-2 transposed convolution to filters[i] channels (`UpConv`): the
        learnable upsampling of the papers' Keras code (Conv2DTranspose((2, 2),
        strides=(2, 2))), kept so parameter counts match it, rather than a
        parameter-free bilinear resize
  head  1x1 convolution X^{0,j} -> num_classes logits

filters = (32, 64, 128, 256, 512) for levels 0..4 (nb_filter of the reference code), each
times `width`. Depth 4 ('|' = Pool, '/' = Up, '->' = the dense skips, which carry every
earlier X^{i,k}, k < j, into X^{i,j}):

  X^{0,0} -> X^{0,1} -> X^{0,2} -> X^{0,3} -> X^{0,4}     heads on X^{0,1..4}
     |     /    |     /    |     /    |     /
  X^{1,0} -> X^{1,1} -> X^{1,2} -> X^{1,3}
     |     /    |     /    |     /
  X^{2,0} -> X^{2,1} -> X^{2,2}
     |     /    |     /
  X^{3,0} -> X^{3,1}
     |     /
  X^{4,0}

Deep supervision (DLMIA Sec. 2, "Deep supervision"; TMI Sec. III): a head on every
X^{0,j}, j = 1..depth, each trained against the full-resolution target. The sub-network
of the nodes with i + j <= k is itself a U-Net-like model ("UNet++ L^k"), whose output is
head k; with deep supervision each L^k is trained, so inference can run only L^k (model
pruning, TMI Sec. III and Fig. 2; DLMIA's "fast mode"; its "accurate mode" averages the
heads): `level=k` computes just those nodes.

U-Net here is the UNet++ papers' baseline, not the 2015 network verbatim: 'same'
padding (the output has the input's height and width) and BatchNorm after every
convolution (the use_batchnorm decoder blocks of the reference code), where Ronneberger
et al. use unpadded ('valid') convolutions, cropped skip connections and no
normalisation. Its nodes are X^{i,0} and X^{i,depth-i} (black in DLMIA Fig. 1a), with the
same H, Up and filters, so U-Net and UNet++ are comparable.

Encoder (`encoder`): 'plain' is the papers' (X^{i,0} = H(Pool(X^{i-1,0}))). 'resnet18',
'resnet34', 'resnet50', ... take X^{0,0}..X^{depth,0} from a ResNet of nets/resnet.py
(He et al. 2016) instead: its stem output C1 (stride 2) and stage outputs C2..C5
(strides 4..32), as the TMI paper also builds UNet++ on ResNet and other backbones,
and as common UNet++ implementations do. Level 0 is then at half
resolution, so every head's logits are resized bilinearly x2 to the input's size; the
ResNet is `width` x 64 channels wide (64 at width 1, as He et al.) and the decoder nodes
X^{i,j>=1} keep filters[i] x width. A pruned L^k runs only the first k ResNet stages.

Parameter counts, 1 input channel, 1 class: U-Net 7,762,465 and UNet++ without deep
supervision 9,045,249 (9,045,348 with it): the Keras reference's (MrGiovanni/UNetPlusPlus,
model_logic.py) 7,759,521 and 9,041,601, whose 3x3 convolutions have a bias and no
BatchNorm, plus one BatchNorm scale per channel of those convolutions (2,944 and 3,648);
`tests/test_unet.py` checks this.
"""

from typing import Any, ClassVar, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nets import layers, resnet

FILTERS = (32, 64, 128, 256, 512)   # Channels of H at levels 0..4 (the papers' setting).
ENCODERS = ('plain', *(f'resnet{d}' for d in resnet.DEPTHS))


def scaled_filters(filters: Sequence[int], width: float) -> tuple[int, ...]:
  """filters[i] * width rounded half up, at least 1: width=0.25 -> (8, 16, 32, 64, 128).

  Raises ValueError for width <= 0.
  """
  if width <= 0:
    raise ValueError(f'width must be > 0, got {width}')
  return tuple(max(1, int(np.floor(f * width + 0.5))) for f in filters)


class ConvBlock(nn.Module):
  """H: (3x3 conv -> BatchNorm -> ReLU) twice, 'same' padding (DLMIA Sec. 2).

  Attributes:
    features: output channels of both convolutions.
    axis_name: pmap axis for synchronised BatchNorm (None under jit).
    dtype: compute dtype.
  """
  features: int
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x: [batch, h, w, c_in] -> [batch, h, w, features]."""
    for n in (1, 2):
      x = layers.ConvBN(self.features, 3, axis_name=self.axis_name, dtype=self.dtype,
                        name=f'conv{n}')(x, train=train)
    return x


class UpConv(nn.Module):
  """Up: 2x2 transposed convolution with stride 2 (+ bias), [b, h, w, c] -> [b, 2h, 2w, f].

  With stride = kernel the output windows do not overlap: output pixel (2h + p, 2w + q)
  is x[h, w] @ kernel[p, q] + bias, the `torch.nn.ConvTranspose2d(c, f, 2, 2)`
  convention (its weight [c, f, p, q] is this kernel [p, q, c, f]). So it is computed as
  one matmul over channels and a depth-to-space rearrange: on this CPU, jitted, as fast
  as XLA's `lax.conv_transpose` forward and ~12x faster forward + backward (x of
  [8, 64, 64, 64] -> 32 channels: 57 ms against 718 ms).

  Attributes:
    features: output channels f.
    dtype: compute dtype; param_dtype: of 'kernel' [2, 2, c, f] and 'bias' [f].
  """
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, h, w, c] -> [batch, 2h, 2w, features] in `dtype`."""
    kernel = self.param('kernel', layers.conv_kernel_init, (2, 2, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    y = jnp.einsum('bhwc,pqcf->bhwpqf', x, kernel)
    return einops.rearrange(y, 'b h w p q f -> b (h p) (w q) f') + bias


def _check_images(images: jax.Array, levels: int, model: str) -> None:
  """Raises ValueError unless images is [batch, height, width, channels] with height and
  width multiples of 2**levels (every pooling halves them exactly)."""
  multiple = 2 ** levels
  if images.ndim != 4:
    raise ValueError(f'{model} expects images [batch, height, width, channels], got shape '
                     f'{tuple(images.shape)}')
  if images.shape[1] % multiple or images.shape[2] % multiple:
    raise ValueError(f'{model}: images of shape {tuple(images.shape)} need height and width '
                     f'divisible by 2**{levels} = {multiple} ({levels} poolings); pad or '
                     f'crop them to a multiple of {multiple}')


def _check_depth(filters: Sequence[int], depth: int, encoder: str, model: str) -> None:
  if encoder not in ENCODERS:
    raise ValueError(f'{model}: unknown encoder {encoder!r}; valid: {list(ENCODERS)}')
  if not 1 <= depth < len(filters):
    raise ValueError(f'{model}: depth must be in 1..{len(filters) - 1} (len(filters) - 1 '
                     f'poolings), got {depth}')


def _encoder_stride(encoder: str) -> int:
  """Downsampling of level 0: 1 for the plain encoder, 2 for a ResNet's (its stem)."""
  return 1 if encoder == 'plain' else 2


def _encode(images: jax.Array, levels: int, filters: Sequence[int], encoder: str,
            width: float, axis_name: Optional[str], dtype: Any, train: bool) -> list:
  """The encoder nodes [X^{0,0}, ..., X^{levels,0}], called inside a UNet's compact
  __call__ (the submodules become the caller's: 'X_{i}_0' or 'encoder')."""
  if encoder == 'plain':
    x = [ConvBlock(filters[0], axis_name, dtype, name='X_0_0')(images, train=train)]
    for i in range(1, levels + 1):
      pooled = nn.max_pool(x[-1], (2, 2), strides=(2, 2))
      x.append(ConvBlock(filters[i], axis_name, dtype, name=f'X_{i}_0')(pooled, train=train))
    return x
  depth = int(encoder[len('resnet'):])
  stages = resnet.DEPTHS[depth][0]
  if levels > len(stages):
    raise ValueError(f'encoder {encoder!r} has {len(stages)} stages, so depth (or level) '
                     f'<= {len(stages)}, got {levels}')
  return list(resnet.ResNet(
      num_classes=0, depth=depth, stage_sizes=stages[:levels],
      width=scaled_filters((64,), width)[0], features_only=True,
      num_features=levels + 1, num_channels=images.shape[-1], axis_name=axis_name,
      dtype=dtype, name='encoder')(images, train=train))


def _to_input_size(logits: jax.Array, images: jax.Array) -> jax.Array:
  """Bilinear resize of [b, h, w, k] logits to the images' height and width."""
  if logits.shape[1:3] == images.shape[1:3]:
    return logits
  return jax.image.resize(logits, (*logits.shape[:1], *images.shape[1:3], logits.shape[-1]),
                          'bilinear')


class UNetPlusPlus(nn.Module):
  """UNet++ with dense nested skip pathways and deep supervision (Zhou et al. 2018/2019).

  Submodules are named after the nodes, so the variables of the full network apply to
  every pruned sub-network: 'X_{i}_{j}' (H of X^{i,j}: conv1/conv2, each conv + bn),
  'up_{i}_{j}' (Up feeding X^{i,j}), 'head_{j}' (1x1 convolution on X^{0,j}).

  Attributes:
    num_classes: logits per pixel of every head.
    filters: channels of H at levels 0..len - 1, before `width` scaling.
    width: multiplier of `filters` (rounded, at least 1 channel).
    depth: number of poolings (levels 1..depth below full resolution), 1..len(filters) - 1.
    deep_supervision: heads on X^{0,1}, ..., X^{0,depth}; else only on X^{0,depth}.
    encoder: 'plain' (the papers') or a ResNet, e.g. 'resnet18' (module docstring);
      ENCODERS lists them.
    dtype: compute dtype; parameters, BatchNorm statistics and logits stay float32.
    axis_name: pmap axis for synchronised BatchNorm; the pmap engine sets 'data'.
  """
  prunable: ClassVar[bool] = True  # Takes `level` (pruned inference); config checks read it.
  num_classes: int
  filters: Sequence[int] = FILTERS
  width: float = 1.0
  depth: int = 4
  deep_supervision: bool = True
  encoder: str = 'plain'
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool,
               level: Optional[int] = None) -> tuple[jax.Array, ...]:
    """images: [batch, height, width, channels] float -> tuple of head logits, each
    [batch, height, width, num_classes] float32.

    level: run the pruned network UNet++ L^level (TMI Sec. III, model pruning): only
      the nodes X^{i,j} with i + j <= level are computed, and head `level` equals that
      of the full network exactly. None means depth.

    Returns the heads on X^{0,1}, ..., X^{0,L} with deep supervision, else the 1-tuple
    (head on X^{0,L}), L = level or depth.

    Raises ValueError for an unknown encoder, a depth outside 1..len(filters) - 1 (or
    above a ResNet encoder's stage count), a level outside 1..depth, a level other than
    depth without deep supervision (there is no trained head on X^{0,level}), or images
    whose height or width is not a multiple of 2**L (2**(L + 1) with a ResNet encoder).
    """
    _check_depth(self.filters, self.depth, self.encoder, 'UNet++')
    L = self.depth if level is None else level
    if not 1 <= L <= self.depth:
      raise ValueError(f'UNet++: level must be in 1..depth = 1..{self.depth}, got {level}')
    if not self.deep_supervision and L != self.depth:
      raise ValueError(f'UNet++ without deep supervision has only the head on X^(0,{self.depth}); '
                       f'level={level} needs deep_supervision=True')
    stride = _encoder_stride(self.encoder)
    _check_images(images, L + stride - 1, f'UNet++ L^{L}')
    filters = scaled_filters(self.filters, self.width)
    node = lambda i, j: ConvBlock(filters[i], self.axis_name, self.dtype, name=f'X_{i}_{j}')

    encoded = _encode(images.astype(self.dtype), L, filters, self.encoder, self.width,
                      self.axis_name, self.dtype, train)
    x = {(i, 0): e for i, e in enumerate(encoded)}
    for j in range(1, L + 1):
      for i in range(L - j + 1):
        up = UpConv(filters[i], self.dtype, name=f'up_{i}_{j}')(x[i + 1, j - 1])
        skips = [x[i, k] for k in range(j)]
        x[i, j] = node(i, j)(jnp.concatenate(skips + [up], axis=-1), train=train)

    heads = range(1, L + 1) if self.deep_supervision else (L,)
    return tuple(_to_input_size(nn.Dense(self.num_classes, dtype=self.dtype, name=f'head_{j}')(
        x[0, j]).astype(jnp.float32), images) for j in heads)


class UNet(nn.Module):
  """U-Net encoder-decoder with skip concatenation, the UNet++ papers' baseline.

  'Same' padding and BatchNorm, unlike Ronneberger et al. 2015 (valid convolutions, no
  normalisation); see the module docstring. Nodes X^{i,0} (encoder) and X^{i,depth-i}
  (decoder, X^{i,depth-i} = H([X^{i,0}, Up(X^{i+1,depth-i-1})])), named as in
  `UNetPlusPlus`: 'X_{i}_{j}', 'up_{i}_{j}', and 'head_{depth}'.

  Attributes: as `UNetPlusPlus`, except `deep_supervision`, which is accepted so one
  config can switch between the two models and is ignored: U-Net has no intermediate
  X^{0,j} and always returns its one head.
  """
  prunable: ClassVar[bool] = False  # Takes no `level` (see UNetPlusPlus).
  num_classes: int
  filters: Sequence[int] = FILTERS
  width: float = 1.0
  depth: int = 4
  deep_supervision: bool = False
  encoder: str = 'plain'
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool,
               level: Optional[int] = None) -> tuple[jax.Array, ...]:
    """images: [batch, height, width, channels] float -> 1-tuple of logits
    [batch, height, width, num_classes] float32.

    Raises ValueError for a level other than None (U-Net cannot be pruned), an unknown
    encoder, a depth outside 1..len(filters) - 1, or a height or width not a multiple
    of 2**depth (2**(depth + 1) with a ResNet encoder).
    """
    if level is not None:
      raise ValueError(f'U-Net cannot be pruned (level={level}); use UNetPlusPlus (unetpp)')
    _check_depth(self.filters, self.depth, self.encoder, 'U-Net')
    _check_images(images, self.depth + _encoder_stride(self.encoder) - 1, 'U-Net')
    filters = scaled_filters(self.filters, self.width)
    node = lambda i, j: ConvBlock(filters[i], self.axis_name, self.dtype, name=f'X_{i}_{j}')

    skips = _encode(images.astype(self.dtype), self.depth, filters, self.encoder, self.width,
                    self.axis_name, self.dtype, train)
    x = skips.pop()
    for i in reversed(range(self.depth)):
      j = self.depth - i
      up = UpConv(filters[i], self.dtype, name=f'up_{i}_{j}')(x)
      x = node(i, j)(jnp.concatenate([skips[i], up], axis=-1), train=train)
    head = nn.Dense(self.num_classes, dtype=self.dtype, name=f'head_{self.depth}')
    return (_to_input_size(head(x).astype(jnp.float32), images),)


def level_costs(model: UNetPlusPlus, image_shape: Sequence[int],
                levels: Optional[Sequence[int]] = None) -> list[dict]:
  """Parameters and inference FLOPs of each pruned network UNet++ L^k (TMI Sec. III).

  Args:
    model: a UNetPlusPlus (with deep supervision for levels below its depth).
    image_shape: (height, width, channels) of one image.
    levels: the k to measure; default 1..model.depth.

  Returns:
    [{'level': k, 'params': parameters that L^k creates (the variables of
      `model.init(..., level=k)`), 'gflops': XLA's cost-analysis FLOPs (a multiply-add
      is 2) of the jitted eval-mode forward of L^k at batch 1, / 1e9}] in the order of
      `levels`. E.g. width 1, depth 4, 96x96x1, 1 class: 0.10M / 0.51M / 2.21M / 9.05M
      parameters and 0.97 / 2.46 / 4.79 / 8.08 GFLOPs for L^1..L^4.

  Raises ValueError for an image_shape that is not (height, width, channels), and as
  the model does for a bad level or size. Compiles once per level (nothing runs).
  """
  if len(image_shape) != 3:
    raise ValueError(f'image_shape must be (height, width, channels), got {tuple(image_shape)}')
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  costs = []
  for k in (range(1, model.depth + 1) if levels is None else levels):
    variables = jax.eval_shape(lambda x, k=k: model.init(jax.random.key(0), x, train=False,
                                                         level=k), images)
    forward = lambda v, x, k=k: model.apply(v, x, train=False, level=k)
    analysis = jax.jit(forward).lower(variables, images).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    costs.append({'level': k,
                  'params': sum(p.size for p in jax.tree.leaves(variables['params'])),
                  'gflops': float(analysis['flops']) / 1e9})
  return costs
