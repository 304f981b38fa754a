"""Box-aware augmentation for object detection: every spatial transform moves the boxes
with the image. Host side, NumPy + Pillow, one example at a time (inside a Grain
pipeline); the random draws come from a np.random.Generator and never depend on the
pixels, so a seed gives the same output on every run.

An example: {'image': [h, w, c] uint8, 'boxes': [n, 4] float32, 'classes': [n] int32,
optionally 'difficult': [n] bool (VOC)}, n >= 0. Boxes are xyxy (x0, y0, x1, y1) in
pixel-edge coordinates, x1 and y1 exclusive: pixel (row r, col c) covers [c, c + 1) x
[r, r + 1). The per-box arrays (PER_BOX_KEYS) are always kept, dropped and reordered
together; other keys pass through unchanged (except in `mosaic`, which merges four
examples and keeps only the image and the per-box arrays).

Geometry. Images are resized by data.transforms.resize (Pillow, bilinear, antialiased,
pixel-centre aligned), which maps a pixel edge x of a width-w image to x * w' / w of the
width-w' result. Boxes are scaled by that ratio of the integer sizes (not by the
nominal factor that was rounded to give w'), then shifted by the integer offset at which
the resized image is pasted on the output canvas; integer offsets mean pasting never
resamples again. A box thus stays on its object up to the ~1 px blur of resampling.
Canvas area no image covers is `fill`: default 0, the background of Fashion-MNIST
scenes (ultralytics uses 114 grey, darknet 0.5 grey, for photographs).

Transforms and where they come from:
  random_affine: random scale about the centre plus random translation, cropped or
    padded to the output canvas: YOLOv3's scale/translation jitter (Redmon & Farhadi
    2018, "YOLOv3: An Incremental Improvement"; parameterised like ultralytics'
    random_perspective with only scale and translate). Scales > 1 play the part of
    SSD's random crops (Liu et al. 2016, "SSD: Single Shot MultiBox Detector", Sec. 2.2
    "Data augmentation"; SSD samples patches by their overlap with the objects, this
    crops at random) and scales < 1 of its zoom-out "expansion" (ibid., Sec. 3.6).
  mosaic: four images in the four quadrants around a random centre (Bochkovskiy et
    al. 2020, "YOLOv4: Optimal Speed and Accuracy of Object Detection", Sec. 3.3).
  letterbox / unletterbox_boxes: aspect-preserving resize and centred padding to the
    network's input size, as darknet's letterbox_image (YOLOv3), and the inverse map
    of predicted boxes back to the original image.
  color_jitter: brightness, contrast, saturation (the photometric distortions of SSD
    Sec. 2.2, in torchvision's ColorJitter form; darknet jitters exposure and
    saturation in HSV instead).
  hflip / random_flip: left-right flips.
Boxes that lose most of their area at the canvas edge are dropped and counted by
clip_boxes (min_visible, min_size); cap_boxes and pad_boxes / pad_example give every
image the same number of box slots, so one compilation serves all batches; check_boxes
validates an example.
"""

from typing import Sequence

import numpy as np

from data import transforms

PER_BOX_KEYS = ('boxes', 'classes', 'difficult')  # Arrays with one row per box.
_PER_BOX_DTYPES = {'boxes': np.float32, 'classes': np.int32, 'difficult': bool}
# ITU-R 601-2 luma, as Pillow's convert('L') and torchvision's rgb_to_grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _size(size, name: str) -> tuple[int, int]:
  """int or (h, w) -> (h, w), both >= 1."""
  if isinstance(size, (int, np.integer)):
    h = w = int(size)
  else:
    try:
      h, w = (int(s) for s in size)
    except (TypeError, ValueError):
      raise ValueError(f'{name} must be an int or (height, width); got {size!r}') from None
  if h < 1 or w < 1:
    raise ValueError(f'{name} must be positive; got {size!r}')
  return h, w


def _image(example: dict) -> np.ndarray:
  image = np.asarray(example['image'])
  if image.ndim != 3 or image.dtype != np.uint8:
    raise ValueError(f'image must be [h, w, c] uint8; got shape {image.shape} and dtype '
                     f'{image.dtype}')
  return image


def _boxes(example: dict) -> np.ndarray:
  """example['boxes'] as [n, 4] float64 (the arithmetic is in float64, stored float32)."""
  return np.asarray(example['boxes'], np.float64).reshape(-1, 4)


def _select(example: dict, index) -> dict:
  """The example with every per-box array indexed by `index` (mask, indices or slice),
  in the shared dtypes."""
  out = dict(example)
  for key in PER_BOX_KEYS:
    if key in example:
      out[key] = np.asarray(example[key])[index].astype(_PER_BOX_DTYPES[key])
  return out


def _canvas(height: int, width: int, channels: int, fill) -> np.ndarray:
  fill = np.asarray(fill)
  if fill.min() < 0 or fill.max() > 255 or fill.size not in (1, channels):
    raise ValueError(f'fill must be one value or {channels} values in [0, 255]; got '
                     f'{fill.tolist()}')
  return np.full((height, width, channels), fill, np.uint8)


def _paste(canvas: np.ndarray, image: np.ndarray, top: int, left: int) -> None:
  """Writes `image` onto `canvas` with its top-left pixel at (top, left), either of
  which may be negative; the part outside the canvas is cut off."""
  height, width = canvas.shape[:2]
  h, w = image.shape[:2]
  y0, y1 = max(top, 0), min(top + h, height)
  x0, x1 = max(left, 0), min(left + w, width)
  if y1 > y0 and x1 > x0:
    canvas[y0:y1, x0:x1] = image[y0 - top:y1 - top, x0 - left:x1 - left]


def _resize_with_boxes(example: dict, height: int, width: int):
  """(image resized to [height, width, c], boxes [n, 4] float64 scaled to match)."""
  image = _image(example)
  h, w = image.shape[:2]
  if (height, width) != (h, w):
    image = transforms.resize(image, height, width)
  sx, sy = width / w, height / h
  return image, _boxes(example) * np.array([sx, sy, sx, sy])


# Box bookkeeping.

def clip_boxes(example: dict, height: int, width: int, min_visible: float = 0.25,
               min_size: float = 2.0) -> tuple[dict, int]:
  """Clips the boxes to the canvas [0, width] x [0, height] and drops those that lost
  most of their area or became too thin.

  A box is dropped when its clipped area is < min_visible times its area before
  clipping, or its clipped width or height is < min_size pixels (a box wholly off the
  canvas has clipped area 0). 'classes' and 'difficult' follow their boxes.

  Returns (example with boxes [m, 4] float32 clipped, m <= n, the per-box arrays
  filtered alike; num_dropped = n - m).
  """
  boxes = _boxes(example)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  clipped = np.clip(boxes, 0.0, np.array([width, height, width, height], np.float64))
  cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
  keep = (cw >= min_size) & (ch >= min_size) & (cw * ch >= min_visible * area)
  return _select({**example, 'boxes': clipped}, keep), int((~keep).sum())


def drop_difficult(example: dict) -> dict:
  """The example without the boxes flagged in its optional 'difficult' array (VOC's
  difficult objects, COCO's crowd boxes), for training: darknet's VOC labels
  (scripts/voc_label.py) and ultralytics' COCO labels leave them out, and the
  evaluation ignores them.

  example: {'boxes': [n, 4] float32, 'classes': [n] int32, optional 'difficult': [n]
  bool, ...} -> the same keys with the m <= n boxes not flagged (unchanged without
  'difficult'); other keys as they are.
  """
  if 'difficult' not in example:
    return example
  return _select(example, ~np.asarray(example['difficult'], bool).reshape(-1))


def cap_boxes(example: dict, max_boxes: int) -> tuple[dict, int]:
  """Keeps the first `max_boxes` boxes (and their classes, difficult flags).

  Returns (example with min(n, max_boxes) boxes, num_dropped = max(0, n - max_boxes)).
  """
  if max_boxes < 0:
    raise ValueError(f'max_boxes must be >= 0; got {max_boxes}')
  n = len(_boxes(example))
  if n <= max_boxes:
    return example, 0
  return _select(example, slice(0, max_boxes)), n - max_boxes


def pad_boxes(boxes: np.ndarray, classes: np.ndarray,
              max_boxes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Zero-pads n <= max_boxes boxes to a fixed number of slots.

  boxes: [n, 4], classes: [n] -> (boxes [max_boxes, 4] float32, classes [max_boxes]
  int32, box_mask [max_boxes] float32: 1 for the n real boxes, which come first, 0 for
  padding, whose box and class are 0). Raises ValueError when n > max_boxes (drop the
  extra boxes with cap_boxes first, which counts them).
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  classes = np.asarray(classes).reshape(-1)
  n = len(boxes)
  if len(classes) != n:
    raise ValueError(f'{n} boxes but {len(classes)} classes')
  if n > max_boxes:
    raise ValueError(f'{n} boxes do not fit in max_boxes={max_boxes}; drop the extra '
                     'ones with cap_boxes first')
  out_boxes = np.zeros((max_boxes, 4), np.float32)
  out_classes = np.zeros((max_boxes,), np.int32)
  mask = np.zeros((max_boxes,), np.float32)
  out_boxes[:n], out_classes[:n], mask[:n] = boxes, classes, 1.0
  return out_boxes, out_classes, mask


def pad_example(example: dict, max_boxes: int) -> dict:
  """pad_boxes on an example: 'boxes' [max_boxes, 4] float32, 'classes' [max_boxes]
  int32, 'box_mask' [max_boxes] float32 and, if present, 'difficult' [max_boxes] bool
  (False in the padding); other keys unchanged. Raises ValueError when n > max_boxes."""
  boxes, classes, mask = pad_boxes(example['boxes'], example['classes'], max_boxes)
  out = {**example, 'boxes': boxes, 'classes': classes, 'box_mask': mask}
  if 'difficult' in example:
    difficult = np.zeros((max_boxes,), bool)
    difficult[:len(example['difficult'])] = example['difficult']
    out['difficult'] = difficult
  return out


def check_boxes(example: dict, num_classes: int, where: str) -> None:
  """Raises ValueError, naming `where` (e.g. 'train example 17'), unless the example's
  boxes are [n, 4] with finite coordinates and x0 <= x1, y0 <= y1, and its classes are
  [n] integers in [0, num_classes) ('difficult', if present, [n]). n = 0 is valid."""
  boxes = np.asarray(example['boxes'])
  classes = np.asarray(example['classes'])
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f'{where}: boxes of shape {boxes.shape}; need [n, 4] (x0, y0, x1, y1)')
  n = len(boxes)
  if classes.shape != (n,) or not (n == 0 or np.issubdtype(classes.dtype, np.integer)):
    raise ValueError(f'{where}: classes of shape {classes.shape} and dtype {classes.dtype} '
                     f'for {n} boxes; need [{n}] integers')
  if 'difficult' in example and np.shape(example['difficult']) != (n,):
    raise ValueError(f'{where}: difficult of shape {np.shape(example["difficult"])} for '
                     f'{n} boxes; need [{n}]')
  if n == 0:
    return
  bad = ~np.isfinite(boxes).all(axis=1)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f'{where}: box {i} {boxes[i].tolist()} has non-finite coordinates')
  bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f'{where}: box {i} {boxes[i].tolist()} has x1 < x0 or y1 < y0; boxes '
                     'must be (x0, y0, x1, y1) in pixel-edge coordinates')
  bad = (classes < 0) | (classes >= num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f'{where}: box {i} has class {int(classes[i])} outside [0, '
                     f'{num_classes}); check config.data.num_classes')


# Geometric transforms.

def hflip(example: dict) -> dict:
  """Left-right flip of the image and boxes: x0' = w - x1, x1' = w - x0."""
  image = _image(example)
  w = image.shape[1]
  b = _boxes(example)
  boxes = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
  return {**example, 'image': np.ascontiguousarray(image[:, ::-1]),
          'boxes': boxes.astype(np.float32)}


def random_flip(example: dict, rng: np.random.Generator) -> dict:
  """hflip with probability 1/2 (one draw from `rng` either way)."""
  return hflip(example) if rng.random() < 0.5 else example


def resize_and_place(example: dict, resized_size, offset: tuple[int, int], out_size, *,
                     fill=0, min_visible: float = 0.25,
                     min_size: float = 2.0) -> tuple[dict, int]:
  """Resizes the example to `resized_size` and pastes it with its top-left corner at
  `offset` on an `out_size` canvas of `fill`: the deterministic step under
  random_affine.

  resized_size, out_size: int or (h, w); offset: (top, left) integers, negative or past
  the canvas where the image is cropped. A box goes to x' = x * w' / w + left, y' =
  y * h' / h + top, with (h', w') = resized_size, then through clip_boxes(min_visible,
  min_size).

  Returns (example with image [out_h, out_w, c] uint8 and the kept boxes, num_dropped).
  """
  image = _image(example)
  rh, rw = _size(resized_size, 'resized_size')
  out_h, out_w = _size(out_size, 'out_size')
  top, left = (int(o) for o in offset)
  canvas = _canvas(out_h, out_w, image.shape[-1], fill)
  resized, boxes = _resize_with_boxes(example, rh, rw)
  _paste(canvas, resized, top, left)
  moved = {**example, 'image': canvas, 'boxes': boxes + np.array([left, top, left, top])}
  return clip_boxes(moved, out_h, out_w, min_visible, min_size)


def random_affine(example: dict, rng: np.random.Generator, *,
                  scale_range: tuple[float, float] = (0.5, 1.5), translate: float = 0.2,
                  out_size=None, fill=0, min_visible: float = 0.25,
                  min_size: float = 2.0) -> tuple[dict, int]:
  """Random scale about the centre, then random translation, onto an out_size canvas.

  With out_size (h_o, w_o) (default the input's [h, w]), the image is resized by
  s * fit, s ~ U(scale_range) and fit = min(h_o / h, w_o / w) (the scale that fits the
  whole image in the canvas; 1 when out_size is the input size), to h' = round(s fit h),
  w' = round(s fit w). It is centred on the canvas and shifted by t_y h_o, t_x w_o,
  t_y, t_x ~ U(-translate, translate), rounded to whole pixels. A larger image is
  cropped (at a random place, through the shift), a smaller one padded with `fill`.
  Boxes move exactly as the image (see resize_and_place) and pass through clip_boxes.

  Returns (example, num_dropped); image [h_o, w_o, c] uint8.
  """
  image = _image(example)
  h, w = image.shape[:2]
  out_h, out_w = (h, w) if out_size is None else _size(out_size, 'out_size')
  low, high = scale_range
  if not 0 < low <= high:
    raise ValueError(f'scale_range must be (low, high) with 0 < low <= high; got '
                     f'{scale_range}')
  if translate < 0:
    raise ValueError(f'translate must be >= 0; got {translate}')
  scale = rng.uniform(low, high) * min(out_h / h, out_w / w)
  ty, tx = rng.uniform(-translate, translate, size=2)
  rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
  top = round((out_h - rh) / 2 + ty * out_h)
  left = round((out_w - rw) / 2 + tx * out_w)
  return resize_and_place(example, (rh, rw), (top, left), (out_h, out_w), fill=fill,
                          min_visible=min_visible, min_size=min_size)


def letterbox(example: dict, size, fill=0) -> tuple[dict, dict]:
  """Resizes keeping the aspect ratio so the image just fits a size x size (or (h, w))
  canvas, centred, the rest `fill`: darknet's letterbox_image.

  The factor is scale = min(out_h / h, out_w / w) (so the longer side fills a square
  canvas); the image becomes round(scale h) x round(scale w) and is padded by
  (out - resized) // 2 on the top and left. Boxes are scaled by the exact size ratios
  and shifted; none is dropped or clipped (the whole image stays on the canvas).

  Returns (example with image [out_h, out_w, c] uint8, info), info = {'scale': float,
  the nominal factor; 'scale_yx': (h' / h, w' / w), the factors applied; 'pad': (top,
  left) pixels; 'image_size': (h, w) of the input}, for unletterbox_boxes.
  """
  image = _image(example)
  info = letterbox_info(image.shape[0], image.shape[1], size)
  (top, left), (h, w) = info['pad'], info['image_size']
  rh, rw = round(info['scale_yx'][0] * h), round(info['scale_yx'][1] * w)
  out_h, out_w = _size(size, 'size')
  canvas = _canvas(out_h, out_w, image.shape[-1], fill)
  resized, boxes = _resize_with_boxes(example, rh, rw)
  _paste(canvas, resized, top, left)
  boxes = (boxes + np.array([left, top, left, top])).astype(np.float32)
  return {**example, 'image': canvas, 'boxes': boxes}, info


def letterbox_info(h: int, w: int, size) -> dict:
  """The geometry of `letterbox` for an h x w image, computed without the image (e.g.
  to map predictions back to an image that was letterboxed elsewhere): the info dict
  `letterbox` returns."""
  out_h, out_w = _size(size, 'size')
  scale = min(out_h / h, out_w / w)
  rh, rw = min(out_h, max(1, round(h * scale))), min(out_w, max(1, round(w * scale)))
  return {'scale': scale, 'scale_yx': (rh / h, rw / w),
          'pad': ((out_h - rh) // 2, (out_w - rw) // 2), 'image_size': (h, w)}


def unletterbox_boxes(boxes: np.ndarray, info: dict, clip: bool = True) -> np.ndarray:
  """Maps boxes on a letterboxed canvas (e.g. predictions) back to the original image:
  the inverse of letterbox's box map.

  boxes: [..., 4] xyxy -> [..., 4] float32; with `clip`, clipped to the original
  image [0, w] x [0, h] (predictions may reach into the padding).
  """
  top, left = info['pad']
  sy, sx = info['scale_yx']
  out = ((np.asarray(boxes, np.float64) - np.array([left, top, left, top]))
         / np.array([sx, sy, sx, sy]))
  if clip:
    h, w = info['image_size']
    out = np.clip(out, 0.0, np.array([w, h, w, h], np.float64))
  return out.astype(np.float32)


def mosaic(examples: Sequence[dict], rng: np.random.Generator, out_size, fill=0,
           min_visible: float = 0.25, min_size: float = 2.0) -> tuple[dict, int]:
  """Mosaic (YOLOv4 Sec. 3.3): four examples in the four quadrants around a random
  centre of an out_size canvas.

  The centre is (c_y, c_x) = (floor(u_y h_o), floor(u_x w_o)), u ~ U(0.25, 0.75).
  Example i is resized keeping its aspect ratio to fit a half canvas, factor
  min(h_o / 2 / h_i, w_o / 2 / w_i) (as ultralytics' load_mosaic, whose full-size tiles
  sit on a canvas twice the output size), and placed with one corner on the centre:
  examples 0, 1, 2, 3 end at / start from the centre to the top-left, top-right,
  bottom-left and bottom-right. A tile never crosses the centre lines, so tiles do not
  overlap; what passes the canvas edge is cut off, and the boxes go through
  clip_boxes(min_visible, min_size).

  examples: four examples with the same number of channels.
  Returns ({'image': [h_o, w_o, c] uint8, 'boxes', 'classes' (and 'difficult' when any
  example has it; False for those without) of the kept boxes, in example order},
  num_dropped). Other keys of the inputs are not carried over.
  """
  if len(examples) != 4:
    raise ValueError(f'mosaic needs 4 examples; got {len(examples)}')
  images = [_image(e) for e in examples]
  channels = {image.shape[-1] for image in images}
  if len(channels) != 1:
    raise ValueError(f'mosaic needs images with one number of channels; got '
                     f'{sorted(channels)}')
  out_h, out_w = _size(out_size, 'out_size')
  cy = int(rng.uniform(0.25, 0.75) * out_h)
  cx = int(rng.uniform(0.25, 0.75) * out_w)
  canvas = _canvas(out_h, out_w, channels.pop(), fill)
  with_difficult = any('difficult' in e for e in examples)
  boxes, classes, difficult = [], [], []
  for i, (example, image) in enumerate(zip(examples, images)):
    h, w = image.shape[:2]
    factor = min(out_h / 2 / h, out_w / 2 / w)
    rh, rw = max(1, round(h * factor)), max(1, round(w * factor))
    top = cy - rh if i < 2 else cy
    left = cx - rw if i % 2 == 0 else cx
    resized, b = _resize_with_boxes(example, rh, rw)
    _paste(canvas, resized, top, left)
    boxes.append(b + np.array([left, top, left, top]))
    classes.append(np.asarray(example['classes']).reshape(-1))
    difficult.append(np.asarray(example.get('difficult', np.zeros(len(b), bool)))
                     .reshape(-1))
  merged = {'image': canvas, 'boxes': np.concatenate(boxes),
            'classes': np.concatenate(classes)}
  if with_difficult:
    merged['difficult'] = np.concatenate(difficult)
  return clip_boxes(merged, out_h, out_w, min_visible, min_size)


# Photometric transforms.

def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2) -> np.ndarray:
  """Random brightness, contrast and saturation, in that order (torchvision's
  ColorJitter formulas; boxes are unaffected).

  Factors f ~ U(max(0, 1 - a), 1 + a) for each magnitude a (three draws from `rng`
  always, whatever the magnitudes or channels), each step clipped to [0, 255]:
    brightness: x f;  contrast: m + f (x - m), m the mean grey level of the image;
    saturation: g + f (x - g), g the pixel's grey level (a no-op for 1 channel).
  Grey is the ITU-R 601-2 luma for 3 channels, the value itself for 1.

  image: [h, w, c] uint8, c in {1, 3} -> same shape, uint8 (rounded).
  """
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'color_jitter needs [h, w, 1] or [h, w, 3]; got {image.shape}')
  magnitudes = (brightness, contrast, saturation)
  if min(magnitudes) < 0:
    raise ValueError(f'brightness, contrast, saturation must be >= 0; got {magnitudes}')
  f_b, f_c, f_s = (rng.uniform(max(0.0, 1.0 - a), 1.0 + a) for a in magnitudes)
  gray = (lambda x: x @ _LUMA) if image.shape[-1] == 3 else (lambda x: x[..., 0])
  x = np.clip(image.astype(np.float32) * f_b, 0.0, 255.0)
  mean = gray(x).mean()
  x = np.clip(mean + f_c * (x - mean), 0.0, 255.0)
  if image.shape[-1] == 3:
    g = gray(x)[..., None]
    x = np.clip(g + f_s * (x - g), 0.0, 255.0)
  return np.rint(x).astype(np.uint8)
