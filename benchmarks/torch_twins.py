"""torch.nn twins of published models with random weights, for weight-import tests: their
module names follow the originals exactly, so their `state_dict()` keys and shapes are
those of the real checkpoints, and their outputs are an independent reference for ours.

Each twin is written from the documented layout of its original (not copied):
  torchvision ResNet (`torchvision.models.resnet`, v1.5) and MobileNetV2
  (`torchvision.models.mobilenetv2`): `torchvision_resnet`, `torchvision_mobilenet_v2`;
  timm's VisionTransformer: `timm_vision_transformer`.
A timm ViT's tensors can be written in the naming of the original JAX checkpoints
(`vit_npz_from_timm`, `big_vision_npz_from_timm`).

Import only where torch is available (tests use pytest.importorskip('torch') first).
"""

import numpy as np
import torch
from torch import nn

# --- torchvision ResNet / MobileNetV2 --------------------------------------------------


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every BatchNorm2d random affine parameters and running statistics (a fresh
  model has 1s and 0s, under which a swapped or misread statistic would go unnoticed).
  Values stay near the identity so deep random networks keep a moderate scale."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.6 + 0.5 * torch.rand(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
        m.num_batches_tracked.fill_(1000)
  return model


class TorchvisionBasicBlock(nn.Module):
  """Two 3x3 convolutions (stride on the first), torchvision `BasicBlock`."""
  expansion = 1

  def __init__(self, in_channels, width, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.downsample = downsample

  def forward(self, x):
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + shortcut)


class TorchvisionBottleneck(nn.Module):
  """1x1 -> 3x3 (stride here: v1.5) -> 1x1 with x4 expansion, torchvision `Bottleneck`."""
  expansion = 4

  def __init__(self, in_channels, width, stride=1, downsample=None):
    super().__init__()
    out = width * self.expansion
    self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + shortcut)


TORCHVISION_RESNET_DEPTHS = {
    18: ((2, 2, 2, 2), TorchvisionBasicBlock),
    34: ((3, 4, 6, 3), TorchvisionBasicBlock),
    50: ((3, 4, 6, 3), TorchvisionBottleneck),
    101: ((3, 4, 23, 3), TorchvisionBottleneck),
    152: ((3, 8, 36, 3), TorchvisionBottleneck),
}


class TorchvisionResNet(nn.Module):
  """torchvision `ResNet`: conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1-4 ->
  avgpool -> fc. Input NCHW float32, output [batch, num_classes] logits."""

  def __init__(self, depth: int, num_classes: int = 1000):
    super().__init__()
    sizes, block = TORCHVISION_RESNET_DEPTHS[depth]
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    in_channels = 64
    for i, n in enumerate(sizes):
      width, stride = 64 * 2 ** i, 1 if i == 0 else 2
      blocks = []
      for j in range(n):
        downsample = None
        if j == 0 and (stride != 1 or in_channels != width * block.expansion):
          downsample = nn.Sequential(
              nn.Conv2d(in_channels, width * block.expansion, 1, stride, bias=False),
              nn.BatchNorm2d(width * block.expansion))
        blocks.append(block(in_channels, width, stride if j == 0 else 1, downsample))
        in_channels = width * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(in_channels, num_classes)
    for m in self.modules():  # torchvision's init: He normal (fan_out) for convolutions.
      if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # (shapes-only twins skip it)
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def torchvision_resnet(depth: int, num_classes: int = 1000, seed: int = 0) -> nn.Module:
  """A random-weight torchvision ResNet-`depth` (18, 34, 50, 101, 152) in eval mode, with
  random BatchNorm parameters and statistics; state_dict keys are torchvision's."""
  torch.manual_seed(seed)
  return randomise_batch_norms(TorchvisionResNet(depth, num_classes), seed).eval()


def _make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision `_make_divisible` (from the TF-slim MobileNet code)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_norm_act(in_channels, out_channels, kernel=3, stride=1, groups=1):
  """torchvision `Conv2dNormActivation` with ReLU6: a Sequential (0 conv, 1 BN, 2 act)."""
  return nn.Sequential(
      nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups,
                bias=False),
      nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))


class TorchvisionInvertedResidual(nn.Module):
  """torchvision `InvertedResidual`: `.conv` = [expand (t != 1)], depthwise, linear 1x1
  conv, BN; residual when stride 1 and in == out channels."""

  def __init__(self, in_channels, out_channels, stride, expand_ratio):
    super().__init__()
    hidden = int(round(in_channels * expand_ratio))
    self.use_res_connect = stride == 1 and in_channels == out_channels
    mods = [] if expand_ratio == 1 else [_conv_norm_act(in_channels, hidden, 1)]
    mods += [_conv_norm_act(hidden, hidden, 3, stride, groups=hidden),
             nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
    self.conv = nn.Sequential(*mods)

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchvisionMobileNetV2(nn.Module):
  """torchvision `MobileNetV2`: `features` (stem, 17 inverted residuals, 1x1 conv to
  1280) -> global average pool -> `classifier` (Dropout(0.2), Linear)."""

  SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
    super().__init__()
    in_channels = _make_divisible(32 * width_mult)
    last = _make_divisible(1280 * max(1.0, width_mult))
    features = [_conv_norm_act(3, in_channels, 3, 2)]
    for t, c, n, s in self.SETTING:
      out_channels = _make_divisible(c * width_mult)
      for j in range(n):
        features.append(TorchvisionInvertedResidual(in_channels, out_channels,
                                                    s if j == 0 else 1, t))
        in_channels = out_channels
    features.append(_conv_norm_act(in_channels, last, 1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
    for m in self.modules():  # torchvision's init (shapes-only twins skip it).
      if not isinstance(m, (nn.Conv2d, nn.Linear)) or m.weight.is_meta:
        continue
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out')
      elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        nn.init.zeros_(m.bias)

  def forward(self, x):
    x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
    return self.classifier(torch.flatten(x, 1))


def torchvision_mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0,
                             seed: int = 0) -> nn.Module:
  """A random-weight torchvision MobileNetV2 in eval mode, with random BatchNorm
  parameters and statistics; state_dict keys are torchvision's."""
  torch.manual_seed(seed)
  model = randomise_batch_norms(TorchvisionMobileNetV2(num_classes, width_mult), seed)
  with torch.no_grad():  # Features dominate the logits, and a dropped bias shows.
    linear = model.classifier[1]
    linear.weight.normal_(0, linear.in_features ** -0.5)
    linear.bias.normal_(0, 0.1)
  return model.eval()


# --- timm VisionTransformer ------------------------------------------------------------
# Written from the layout of timm/models/vision_transformer.py (VisionTransformer, Block,
# Attention) and timm/layers (PatchEmbed, Mlp): state_dict keys patch_embed.proj,
# cls_token, pos_embed, blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2},
# norm, head.


class TimmPatchEmbed(nn.Module):
  """timm `PatchEmbed`: a P x P, stride P Conv2d `proj`, flattened to [B, N, D]."""

  def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class TimmAttention(nn.Module):
  """timm `Attention`: one fused `qkv` Linear whose output reshapes to [B, N, 3, H, D/H],
  softmax((q * D/H ** -0.5) k^T) v, heads concatenated, `proj` Linear."""

  def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
    super().__init__()
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.scale = self.head_dim ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # Each [B, H, N, D/H].
    attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TimmMlp(nn.Module):
  """timm `Mlp`: fc1 -> GELU -> fc2 (exact erf GELU unless approximate='tanh')."""

  def __init__(self, dim: int, hidden: int, approximate: str = 'none'):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU(approximate=approximate)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
  """timm `Block`: pre-LN (eps 1e-6) attention and MLP, each with a residual."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool = True,
               approximate: str = 'none'):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = TimmAttention(dim, num_heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = TimmMlp(dim, mlp_dim, approximate)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TimmVisionTransformer(nn.Module):
  """timm `VisionTransformer` without the optional extras (no register tokens, layer
  scale, fc_norm, pre-norm): patch_embed -> [cls_token] -> + pos_embed (after the class
  token is prepended, so pos_embed has 1 + N entries, unless no_embed_class) -> blocks ->
  norm -> class token (global_pool='token') or mean of the patch tokens ('avg') -> head.
  Input NCHW float32, output [batch, num_classes] logits."""

  def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
               num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
               num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
               class_token: bool = True, no_embed_class: bool = False,
               global_pool: str = 'token', gelu_approximate: str = 'none'):
    super().__init__()
    self.global_pool, self.no_embed_class = global_pool, no_embed_class
    self.num_prefix_tokens = 1 if class_token else 0
    self.patch_embed = TimmPatchEmbed(in_chans, embed_dim, patch_size)
    num_patches = (img_size // patch_size) ** 2
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
    embed_len = num_patches if no_embed_class else num_patches + self.num_prefix_tokens
    self.pos_embed = nn.Parameter(0.02 * torch.randn(1, embed_len, embed_dim))
    self.blocks = nn.Sequential(*[
        TimmBlock(embed_dim, num_heads, int(embed_dim * mlp_ratio), qkv_bias, gelu_approximate)
        for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
    self.head = nn.Linear(embed_dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    if self.no_embed_class:
      x = x + self.pos_embed
    if self.cls_token is not None:
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    if not self.no_embed_class:
      x = x + self.pos_embed
    x = self.norm(self.blocks(x))
    x = x[:, 0] if self.global_pool == 'token' else x[:, self.num_prefix_tokens:].mean(dim=1)
    return self.head(x)


def timm_vision_transformer(seed: int = 0, **kwargs) -> nn.Module:
  """A TimmVisionTransformer(**kwargs) in eval mode with random weights everywhere: the
  biases, LayerNorm affine parameters, class token and position embeddings too (a fresh
  one has 0s and 1s there, under which a dropped or swapped tensor would go unnoticed).
  Conv / Linear weights are N(0, 1 / fan_in), so activations keep a unit scale and the
  GELU sees inputs where its exact and tanh forms differ measurably."""
  torch.manual_seed(seed)
  model = TimmVisionTransformer(**kwargs)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if '.norm' in name or name.startswith('norm'):
        p.copy_((1.0 if name.endswith('weight') else 0.0) + 0.2 * noise)
      elif p.ndim >= 2 and name.endswith('weight'):
        p.copy_(noise / p[0].numel() ** 0.5)
      else:  # Biases, the class token and the position embeddings.
        p.copy_(0.3 * noise)
  return model.eval()


# --- The original JAX ViT checkpoints' naming, written from timm tensors -----------------
# The inverse direction of pretrained/vit_npz.py, written independently of it, so the
# importer can be checked against torch's logits on the same weights.

def vit_npz_from_timm(sd: dict, num_heads: int, prefix: str = '') -> dict:
  """A timm ViT state_dict (name -> numpy) in google-research/vision_transformer naming
  (vit_jax/models_vit.py), as its .npz checkpoints hold it, under `prefix`."""
  d, h = sd['patch_embed.proj.weight'].shape[0], num_heads
  out = {'embedding/kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': sd['patch_embed.proj.bias'],
         'Transformer/posembed_input/pos_embedding': sd['pos_embed'],
         'Transformer/encoder_norm/scale': sd['norm.weight'],
         'Transformer/encoder_norm/bias': sd['norm.bias'],
         'head/kernel': sd['head.weight'].T, 'head/bias': sd['head.bias']}
  if 'cls_token' in sd:
    out['cls'] = sd['cls_token']
  i = 0
  while f'blocks.{i}.norm1.weight' in sd:
    b, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    out.update(_block(sd, t, b, d, h, ('LayerNorm_0', 'MultiHeadDotProductAttention_1',
                                       'LayerNorm_2', 'MlpBlock_3')))
    i += 1
  return {prefix + k: v for k, v in out.items()}


def _block(sd, t, b, d, h, names) -> dict:
  ln0, mha, ln1, mlp = names
  qkv_w, qkv_b = sd[t + 'attn.qkv.weight'], sd[t + 'attn.qkv.bias']
  out = {f'{b}{ln0}/scale': sd[t + 'norm1.weight'], f'{b}{ln0}/bias': sd[t + 'norm1.bias'],
         f'{b}{ln1}/scale': sd[t + 'norm2.weight'], f'{b}{ln1}/bias': sd[t + 'norm2.bias'],
         f'{b}{mha}/out/kernel': sd[t + 'attn.proj.weight'].T.reshape(h, d // h, d),
         f'{b}{mha}/out/bias': sd[t + 'attn.proj.bias']}
  for j, name in enumerate(('query', 'key', 'value')):
    out[f'{b}{mha}/{name}/kernel'] = qkv_w[j * d:(j + 1) * d].T.reshape(d, h, d // h)
    out[f'{b}{mha}/{name}/bias'] = qkv_b[j * d:(j + 1) * d].reshape(h, d // h)
  for j, fc in enumerate(('fc1', 'fc2')):
    out[f'{b}{mlp}/Dense_{j}/kernel'] = sd[f'{t}mlp.{fc}.weight'].T
    out[f'{b}{mlp}/Dense_{j}/bias'] = sd[f'{t}mlp.{fc}.bias']
  return out


def big_vision_npz_from_timm(sd: dict, num_heads: int, scanned: bool) -> dict:
  """A timm ViT state_dict in big_vision naming (big_vision/models/vit.py) under 'params/': the position table
  has no class entry, so the class token absorbs it (what big_vision's
  fix_old_checkpoints does with old checkpoints)."""
  d, h = sd['patch_embed.proj.weight'].shape[0], num_heads
  pos = sd['pos_embed']
  out = {'embedding/kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': sd['patch_embed.proj.bias'],
         'Transformer/encoder_norm/scale': sd['norm.weight'],
         'Transformer/encoder_norm/bias': sd['norm.bias'],
         'head/kernel': sd['head.weight'].T, 'head/bias': sd['head.bias']}
  if 'cls_token' in sd:
    out['cls'], out['pos_embedding'] = sd['cls_token'] + pos[:, :1], pos[:, 1:]
  else:
    out['pos_embedding'] = pos
  names = ('LayerNorm_0', 'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0')
  depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
  blocks = [_block(sd, f'blocks.{i}.', '', d, h, names) for i in range(depth)]
  if scanned:
    out.update({f'Transformer/encoderblock/{k}': np.stack([blk[k] for blk in blocks])
                for k in blocks[0]})
  else:
    for i, blk in enumerate(blocks):
      out.update({f'Transformer/encoderblock_{i}/{k}': v for k, v in blk.items()})
  return {'params/' + k: v for k, v in out.items()}
