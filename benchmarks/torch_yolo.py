r"""The YOLOv3 detector and loss of this codebase in PyTorch, timed the same way as
`python -m train.bench`: a peer baseline for detection training throughput.

  pip install torch==2.13.0        # (in requirements-test.txt) a peer baseline only
  python -m benchmarks.torch_yolo --config=configs/yolov3_fashion_mnist_scenes.py \
      [--steps=10 --warmup=2 --threads=0 --image_size=64 --channels_last --device=cpu]
  python -m train.bench --config=configs/yolov3_fashion_mnist_scenes.py   # the JAX step

It prints one JSON line with train.bench's keys (model, input_shape, batch_size,
step_ms, examples_per_s) plus framework, threads, device, params and box_loss.

On a CUDA machine it runs on the GPU, under bfloat16 autocast when the config's
compute_dtype is bfloat16 (parameters and the loss float32, as in this codebase).

Mirrored (YOLOv3: Redmon & Farhadi 2018, "YOLOv3: An Incremental Improvement",
Sec. 2.1-2.4):
  network  nets/yolo.py layer for layer: the backbone's C3, C4, C5 (Darknet-53 of
    nets/darknet.py, or nets/mobilenet_v2.py / nets/resnet.py through the torch twins
    of benchmarks/torch_cnn.py, cut after the feature rows), the top-down neck (conv
    sets, 1x1 laterals, 2x nearest upsampling, concatenation) and the three heads;
    conv (no bias, padding k // 2) -> BatchNorm (eps 1e-5, momentum 0.1) -> activation,
    He fan-out init, the prediction 1x1's LeCun-normal init and objectness bias
    logit(0.01). The printed parameter count equals the JAX model's (1,791,207 for
    configs/yolov3_fashion_mnist_scenes.py; 61,949,149 for Darknet-53 YOLOv3 with 80
    classes, e.g. configs/yolov3_coco.py).
  loss  tasks/yolo_loss.py, vectorised over the batch: each box to its best
    shape-IoU anchor over all scales (and, with loss.assign_threshold > 0, to every
    anchor of shape IoU above it) at the cell holding its centre (a scatter-max of
    box indices, so the later box wins a collision); objectness BCE with predictions
    whose decoded box overlaps a ground truth by IoU > loss.ignore_threshold ignored;
    class BCE (or softmax cross entropy: loss.class_loss) and the loss.box_loss term
    (tasks/boxes.py: 1 - IoU / GIoU / DIoU / CIoU of the decoded boxes, or YOLOv3's
    'original') at assigned predictions; sums per image, mean over the batch. On the
    same raw predictions, value and gradient equal tasks.yolo_loss's to float32
    rounding, for every box_loss and class_loss.
  step  forward, loss, backward, global-norm clipping (optim.grad_clip_norm), then
    AdamW (optim.name 'adamw', decoupled decay; Adam + L2 when coupled) or SGD with
    momentum (coupled decay: torch has no SGDW, the cost is the same), weight decay on
    kernels only (ndim > 1), as train/optim.py; the learning rate is the config's peak
    (a schedule costs nothing per step).
  inputs  as tasks.detection.bench_inputs: images N(0, 1) of data.image_size, 4 random
    boxes per image padded to data.max_boxes with a mask, random classes; the boxes
    here always have x0 <= x1 and y0 <= y1.
"""

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags
from torch import nn

from benchmarks import torch_cnn, torch_timing
from data import detection_sources
from nets import darknet, mobilenet_v2, resnet, yolo
from tasks import yolo_loss as yolo_loss_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """torch_cnn's flags (--config, --steps, --image_size, --channels_last, --device;
  --image_size defaults here to the config's data.image_size when not given) plus
  --warmup and --threads; defined only when run as a script."""
  torch_cnn.define_flags()
  flags.DEFINE_integer('warmup', 2, 'Untimed warm-up steps.')
  flags.DEFINE_integer('threads', 0, "torch.set_num_threads; 0: torch's default.")


NUM_BOXES = 4  # Real boxes per image, as tasks.detection.bench_inputs.


def conv(cin, cout, k, stride=1):
  """darknet's conv -> BN -> LeakyReLU(0.1) (nets.layers.ConvBN with darknet.leaky_relu)."""
  return torch_cnn.conv_bn(cin, cout, k, stride,
                           act=functools.partial(nn.LeakyReLU, darknet.LEAKY_SLOPE))


class Features(nn.Module):
  """Runs `layers` in order and returns the outputs after the last three `ends`."""

  def __init__(self, layers, ends):
    super().__init__()
    starts = (0,) + tuple(ends[:-1])
    self.parts = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in zip(starts, ends))

  def forward(self, x):
    outputs = []
    for part in self.parts:
      x = part(x)
      outputs.append(x)
    return tuple(outputs[-3:])


class DarknetBlock(nn.Module):

  def __init__(self, features):
    super().__init__()
    self.branch = nn.Sequential(conv(features, features // 2, 1), conv(features // 2, features, 3))

  def forward(self, x):
    return x + self.branch(x)


def darknet53_features(width, channels):
  """nets.darknet.Darknet53(features_only=True) -> (module, channels of C3, C4, C5)."""
  cin = darknet.channels(32, width)
  layers, ends, out = [conv(channels, cin, 3)], [], []
  for i, n in enumerate(darknet.STAGE_SIZES):
    features = darknet.channels(64 * 2 ** i, width)
    layers += [conv(cin, features, 3, 2)] + [DarknetBlock(features) for _ in range(n)]
    ends.append(len(layers))
    out.append(features)
    cin = features
  return Features(layers, ends), out[-3:]


def mobilenet_v2_features(width, channels):
  """nets.mobilenet_v2.MobileNetV2(features_only=True): torch_cnn's twin cut after the
  rows of FEATURE_ROWS (its head conv and classifier dropped)."""
  net = torch_cnn.torch_mobilenet_v2(width, 'imagenet', channels, 1, 0.0)
  end, ends, out = 1, [], []  # Layer 0 is the stem, then one layer per block.
  for _, c, n, _ in mobilenet_v2.INVERTED_RESIDUAL_SETTING:
    end += n
    if c in mobilenet_v2.FEATURE_ROWS:
      ends.append(end)
      out.append(mobilenet_v2.make_divisible(c * width))
  return Features(list(net)[:end], ends), out


def resnet_features(depth, width, channels):
  """nets.resnet.ResNet(features_only=True) at width channels(64, width): torch_cnn's
  twin cut after each stage (its pooling and classifier dropped)."""
  stages, kind = resnet.DEPTHS[depth]
  base = darknet.channels(64, width)
  net = torch_cnn.torch_resnet(depth, base, 'imagenet', channels, 1)
  ends = [2 + sum(stages[:i + 1]) for i in range(len(stages))]  # After conv_bn, max-pool.
  out = [base * 2 ** i * resnet.EXPANSION[kind] for i in range(len(stages))]
  return Features(list(net)[:ends[-1]], ends), out[-3:]


def build_backbone(name, width, channels):
  """The features_only backbone `name` (a key of nets.yolo.BACKBONES) -> (module
  returning (C3, C4, C5) NCHW, their channel counts). Raises ValueError for other names."""
  if name == 'darknet53':
    return darknet53_features(width, channels)
  if name == 'mobilenet_v2':
    return mobilenet_v2_features(width, channels)
  if name.startswith('resnet') and name[len('resnet'):].isdigit() and int(
      name[len('resnet'):]) in resnet.DEPTHS:
    return resnet_features(int(name[len('resnet'):]), width, channels)
  raise ValueError(f'No torch twin for the YOLOv3 backbone {name!r}; valid: '
                   f'{sorted(yolo.BACKBONES)}')


class YOLOv3(nn.Module):
  """nets.yolo.YOLOv3: images [b, c, H, W] -> raw predictions per scale (stride 8
  first), each [b, H / s, W / s, num_anchors, 5 + num_classes] float32."""

  def __init__(self, backbone, width, neck_width, num_classes, num_anchors, num_channels):
    super().__init__()
    self.backbone, (c3, c4, c5) = build_backbone(backbone, width, num_channels)
    self.num_anchors, self.per_anchor = num_anchors, 5 + num_classes
    self.laterals, self.sets, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
    cin = c5
    for i, skip in enumerate((None, c4, c3)):
      c = darknet.channels(512 // 2 ** i, neck_width)
      if skip is not None:
        self.laterals.append(conv(cin, c, 1))
        cin = c + skip
      convs = []
      for features, k in [(c, 1), (2 * c, 3)] * 2 + [(c, 1)]:
        convs.append(conv(cin, features, k))
        cin = features
      self.sets.append(nn.Sequential(*convs))
      self.heads.append(nn.Sequential(conv(c, 2 * c, 3),
                                      nn.Conv2d(2 * c, num_anchors * self.per_anchor, 1)))
    self._init()

  def _init(self):
    for m in self.modules():  # nets.layers.conv_kernel_init: He normal, fan-out.
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    prior = math.log(yolo.OBJECTNESS_PRIOR / (1 - yolo.OBJECTNESS_PRIOR))
    for head in self.heads:
      out = head[-1]  # Flax's default lecun_normal: truncated normal, variance 1 / fan_in.
      std = (1.0 / out.weight[0].numel()) ** 0.5 / .87962566103423978
      nn.init.trunc_normal_(out.weight, 0.0, std, -2 * std, 2 * std)
      with torch.no_grad():
        out.bias.zero_()
        out.bias.view(self.num_anchors, self.per_anchor)[:, 4] = prior

  def forward(self, images):
    c3, c4, c5 = self.backbone(images)
    outputs, x = [], c5
    for i, skip in enumerate((None, c4, c3)):
      if skip is not None:
        x = F.interpolate(self.laterals[i - 1](x), scale_factor=2, mode='nearest')
        x = torch.cat([x, skip.to(x.dtype)], dim=1)
      x = self.sets[i](x)
      y = self.heads[i](x).float()
      b, _, h, w = y.shape
      outputs.append(y.view(b, self.num_anchors, self.per_anchor, h, w).permute(0, 3, 4, 1, 2))
    return outputs[::-1]


# --- Loss (tasks/yolo_loss.py, tasks/boxes.py) ---------------------------------------------


def iou(a, b, kind='iou', eps=1e-7):
  """tasks.boxes.iou of broadcast xyxy boxes a, b [..., 4] -> [...]; CIoU's alpha is
  held constant in the gradient."""
  ax0, ay0, ax1, ay1 = a.unbind(-1)
  bx0, by0, bx1, by1 = b.unbind(-1)
  aw, ah = (ax1 - ax0).clamp_min(0), (ay1 - ay0).clamp_min(0)
  bw, bh = (bx1 - bx0).clamp_min(0), (by1 - by0).clamp_min(0)
  inter = ((torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp_min(0) *
           (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp_min(0))
  union = aw * ah + bw * bh - inter
  plain = inter / (union + eps)
  if kind == 'iou':
    return plain
  cw = (torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0)).clamp_min(0)
  ch = (torch.maximum(ay1, by1) - torch.minimum(ay0, by0)).clamp_min(0)
  if kind == 'giou':
    return plain - (cw * ch - union) / (cw * ch + eps)
  rho2 = ((ax0 + ax1 - bx0 - bx1) ** 2 + (ay0 + ay1 - by0 - by1) ** 2) / 4.0
  value = plain - rho2 / (cw ** 2 + ch ** 2 + eps)
  if kind == 'ciou':
    v = (4.0 / math.pi ** 2) * (torch.atan(bw / (bh + eps)) - torch.atan(aw / (ah + eps))) ** 2
    alpha = (v / ((1.0 - plain) + v + eps)).detach()
    value = value - alpha * v
  return value


def decode_boxes(raw, anchors, stride):
  """nets.yolo.decode_boxes: raw [b, h, w, A, >= 4], anchors [A, 2] -> [b, h, w, A, 4]."""
  h, w = raw.shape[1:3]
  rows, cols = torch.meshgrid(torch.arange(h, device=raw.device),
                              torch.arange(w, device=raw.device), indexing='ij')
  cells = torch.stack([cols, rows], -1)[:, :, None, :]
  centre = (torch.sigmoid(raw[..., :2]) + cells) * stride
  size = anchors * torch.exp(raw[..., 2:4].clamp_max(yolo.MAX_LOG_SCALE))
  return torch.cat([centre - size / 2, centre + size / 2], -1)


def assign(gt_boxes, gt_mask, anchors, grid_shapes, strides, assign_threshold=0.0):
  """tasks.yolo_loss.assign for a batch: gt_boxes [b, m, 4], gt_mask [b, m] -> per
  scale [b, h_s, w_s, A] int64, the index of the box assigned to each (cell, anchor),
  -1 where none (with assign_threshold > 0 also every anchor of shape IoU above it)."""
  b, m = gt_boxes.shape[:2]
  per_scale = anchors.shape[0] // len(strides)
  wh = gt_boxes[..., 2:] - gt_boxes[..., :2]
  centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
  inter = (torch.minimum(wh[..., None, 0], anchors[:, 0]) *
           torch.minimum(wh[..., None, 1], anchors[:, 1]))
  union = wh[..., None, 0] * wh[..., None, 1] + anchors[:, 0] * anchors[:, 1] - inter
  overlap = inter / union.clamp_min(1e-9)  # [b, m, num_scales * A]
  # The first maximum, as jnp.argmax; YOLOv4's extra anchors above the threshold.
  matched = F.one_hot(overlap.argmax(-1), anchors.shape[0]).bool()
  if assign_threshold > 0:
    matched |= overlap > assign_threshold
  matched &= (gt_mask > 0)[..., None]
  index = torch.arange(m, device=gt_boxes.device).expand(b, m)
  image = torch.arange(b, device=gt_boxes.device)[:, None]
  maps = []
  for s, ((h, w), stride) in enumerate(zip(grid_shapes, strides)):
    col = torch.floor(centre[..., 0] / stride).long().clamp(0, w - 1)
    row = torch.floor(centre[..., 1] / stride).long().clamp(0, h - 1)
    out = torch.full((b * h * w * per_scale,), -1, dtype=torch.long, device=gt_boxes.device)
    for a in range(per_scale):
      flat = ((image * h + row) * w + col) * per_scale + a
      out.scatter_reduce_(0, flat.reshape(-1),
                          torch.where(matched[..., s * per_scale + a], index, -1).reshape(-1),
                          'amax')
    maps.append(out.view(b, h, w, per_scale))
  return maps


def yolo_loss(outputs, gt_boxes, gt_classes, gt_mask, anchors, loss_config, image_size):
  """tasks.yolo_loss.YoloLoss, mean over the batch of the per-image loss."""
  strides = yolo.STRIDES
  per_scale = anchors.shape[0] // len(strides)
  b = gt_boxes.shape[0]
  num_classes = outputs[0].shape[-1] - 5
  maps = assign(gt_boxes, gt_mask, anchors, [o.shape[1:3] for o in outputs], strides,
                loss_config.get('assign_threshold', 0.0))
  bce = functools.partial(F.binary_cross_entropy_with_logits, reduction='none')
  box = objectness = cls = 0.0
  for s, (raw, index, stride) in enumerate(zip(outputs, maps, strides)):
    scale_anchors = anchors[s * per_scale:(s + 1) * per_scale]
    positive = index >= 0
    gather = index.clamp_min(0).view(b, -1)
    target = torch.gather(gt_boxes, 1, gather[..., None].expand(-1, -1, 4)).view(*index.shape, 4)
    predicted = decode_boxes(raw, scale_anchors, stride)
    with torch.no_grad():  # The ignore mask is a constant (stop_gradient in JAX).
      overlap = iou(predicted.detach().view(b, -1, 1, 4), gt_boxes[:, None])
      best = torch.where(gt_mask[:, None] > 0, overlap, 0.0).amax(-1).view(index.shape)
    negative = ~positive & (best <= loss_config.ignore_threshold)
    logit = raw[..., 4]
    objectness = objectness + (
        (bce(logit, torch.ones_like(logit)) * positive).sum((1, 2, 3)) +
        (bce(logit, torch.zeros_like(logit)) * negative).sum((1, 2, 3)))
    labels = F.one_hot(torch.gather(gt_classes, 1, gather), num_classes).view(
        *index.shape, num_classes).float()
    if loss_config.class_loss == 'softmax':  # YOLOv2's softmax cross entropy.
      log_p = F.log_softmax(raw[..., 5:], dim=-1)
      cls = cls - ((labels * log_p).sum(-1) * positive).sum((1, 2, 3))
    else:
      cls = cls + (bce(raw[..., 5:], labels) * positive[..., None]).sum((1, 2, 3, 4))
    term = box_term(raw, predicted, target, scale_anchors, stride, image_size,
                    loss_config.box_loss)
    box = box + (term * positive).sum((1, 2, 3))
  loss = (loss_config.box_weight * box + loss_config.obj_weight * objectness +
          loss_config.cls_weight * cls)
  return loss.mean()


def box_term(raw, predicted, target, anchors, stride, image_size, kind):
  """[b, h, w, A] box loss of every prediction against the box assigned to it."""
  if kind != 'original':
    return 1.0 - iou(predicted, target, kind)
  h, w = raw.shape[1:3]
  rows, cols = torch.meshgrid(torch.arange(h, device=raw.device),
                              torch.arange(w, device=raw.device), indexing='ij')
  cells = torch.stack([cols, rows], -1)[:, :, None, :]
  wh = (target[..., 2:] - target[..., :2]).clamp_min(1e-3)
  offset = (target[..., :2] + target[..., 2:]) / 2 / stride - cells
  weight = 2.0 - wh[..., 0] * wh[..., 1] / (image_size[0] * image_size[1])
  xy = F.binary_cross_entropy_with_logits(raw[..., :2], offset.clamp(0.0, 1.0),
                                          reduction='none').sum(-1)
  size = (raw[..., 2:4] - torch.log(wh / anchors)).square().sum(-1)
  return weight * (xy + size)


# --- The benchmark ---------------------------------------------------------------------------


def num_channels(config) -> int:
  """Input channels of config.data: 1 for the Fashion-MNIST scenes, 3 otherwise (RGB)."""
  return 1 if config.data.source == 'fashion_mnist_scenes' else 3


def build(config, num_classes, channels):
  """The torch twin of config.model ('yolov3' or 'yolov3_<backbone>')."""
  m = config.model
  if m.name != 'yolov3' and not m.name.startswith('yolov3_'):
    raise ValueError(f'{m.name!r} is not a YOLOv3 detector; valid: yolov3, yolov3_<backbone> '
                     f'with a backbone of {sorted(yolo.BACKBONES)}')
  backbone = m.name[len('yolov3_'):] if m.name != 'yolov3' else 'darknet53'
  return YOLOv3(backbone, m.width, m.neck_width, num_classes,
                len(config.anchors) // len(yolo.STRIDES), channels)


def optimizer(config, model):
  """train/optim.py's choice: decay only on kernels (ndim > 1)."""
  o = config.optim
  groups = [{'params': [p for p in model.parameters() if p.ndim > 1],
             'weight_decay': o.weight_decay},
            {'params': [p for p in model.parameters() if p.ndim <= 1], 'weight_decay': 0.0}]
  if o.name == 'adamw':
    cls = torch.optim.AdamW if o.weight_decay_mode == 'decoupled' else torch.optim.Adam
    return cls(groups, lr=config.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  if o.name == 'sgd':  # Coupled decay either way: torch has no SGDW (same cost).
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=o.momentum,
                           nesterov=o.nesterov)
  raise ValueError(f'Unknown optim.name {o.name!r}; valid: adamw, sgd')


def random_batch(batch_size, size, channels, num_classes, max_boxes, rng):
  """As tasks.detection.bench_inputs: images [b, c, S, S] N(0, 1), boxes [b, max_boxes,
  4] xyxy pixels (valid: x0 <= x1, y0 <= y1), classes [b, max_boxes], mask [b,
  max_boxes] with the first NUM_BOXES real."""
  corners = np.sort(rng.uniform(0, 1, (batch_size, max_boxes, 2, 2)), axis=2)  # [., point, xy]
  boxes = corners.reshape(batch_size, max_boxes, 4) * size
  images = rng.normal(size=(batch_size, size, size, channels)).transpose(0, 3, 1, 2)
  classes = rng.integers(0, num_classes, (batch_size, max_boxes))
  mask = np.broadcast_to(np.arange(max_boxes) < NUM_BOXES, (batch_size, max_boxes))
  return (torch.tensor(np.ascontiguousarray(images), dtype=torch.float32),
          torch.tensor(boxes, dtype=torch.float32), torch.tensor(classes, dtype=torch.long),
          torch.tensor(mask, dtype=torch.float32))


def main(argv):
  del argv
  c = FLAGS.config
  if FLAGS.threads:
    torch.set_num_threads(FLAGS.threads)
  torch.manual_seed(0)
  size = FLAGS.image_size if FLAGS['image_size'].present else c.data.image_size
  if size % 32:
    raise ValueError(f'The input side must be a multiple of 32 (the YOLOv3 total stride); '
                     f'got {size}')
  if c.loss.box_loss not in yolo_loss_lib.BOX_LOSSES:
    raise ValueError(f'Unknown loss.box_loss {c.loss.box_loss!r}; valid: '
                     f'{list(yolo_loss_lib.BOX_LOSSES)}')
  num_classes, channels = len(detection_sources.class_names(c)), num_channels(c)
  device = torch.device(FLAGS.device)
  model = build(c, num_classes, channels).to(device)
  opt = optimizer(c, model)
  anchors = torch.tensor(c.anchors, dtype=torch.float32, device=device)
  x, boxes, classes, mask = (t.to(device) for t in random_batch(
      c.batch_size, size, channels, num_classes, c.data.max_boxes, np.random.default_rng(0)))
  if FLAGS.channels_last:
    model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
  torch.backends.cudnn.benchmark = True
  bf16 = c.compute_dtype == 'bfloat16' and device.type == 'cuda'

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      outputs = model(x)
    loss = yolo_loss(outputs, boxes, classes, mask, anchors, c.loss, (size, size))
    loss.backward()
    if c.optim.grad_clip_norm > 0:
      nn.utils.clip_grad_norm_(model.parameters(), c.optim.grad_clip_norm)
    opt.step()

  step_s = torch_timing.seconds_per_step(step, FLAGS.steps, FLAGS.warmup, device)
  print(torch_timing.result_line(step_s, c.batch_size, c.model.name, model, device, bf16,
                                 input_shape=[size, size, channels], box_loss=c.loss.box_loss,
                                 channels_last=FLAGS.channels_last))


if __name__ == '__main__':
  define_flags()
  from train import run_config  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=run_config.parse_flags)
