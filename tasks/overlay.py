"""Pictures of predictions (Pillow only): an image with its per-pixel classes coloured
over it and a legend (segmentation), or with its detected boxes drawn (detection)."""

import os

import numpy as np
from PIL import Image, ImageDraw

# Distinct colours (Kelly 1965, "Twenty-two colors of maximum contrast"); background
# (class 0) stays uncoloured.
PALETTE = np.array([
    (0, 0, 0), (243, 195, 0), (135, 86, 146), (243, 132, 0), (161, 202, 241), (190, 0, 50),
    (194, 178, 128), (0, 136, 86), (230, 143, 172), (0, 103, 165), (249, 150, 121),
    (96, 78, 151), (246, 166, 0), (179, 68, 108), (220, 211, 0), (136, 45, 23),
    (141, 182, 0), (101, 69, 34), (226, 88, 34), (43, 61, 38), (132, 132, 130)], np.uint8)


def read_image(path: str, size: tuple[int, int] | None, channels: int) -> np.ndarray:
  """The image file at `path` as [height, width, channels] uint8, resized (bilinear) to
  `size` (height, width) unless None. Raises FileNotFoundError for a missing file."""
  pil = Image.open(path).convert('L' if channels == 1 else 'RGB')
  if size is not None:
    pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)
  return np.asarray(pil, np.uint8).reshape(pil.height, pil.width, channels)


def output_path(image_path: str, out: str | None, num_images: int) -> str:
  """Where the overlay of `image_path` goes: `out` itself for a single image (unless it
  is a folder), `out`/<name>_pred.png for several, else next to the input."""
  stem = os.path.splitext(os.path.basename(image_path))[0] + '_pred.png'
  if not out:
    return os.path.join(os.path.dirname(image_path), stem)
  if num_images == 1 and not os.path.isdir(out):
    return out
  os.makedirs(out, exist_ok=True)
  return os.path.join(out, stem)


def save_overlay(image: np.ndarray, classes: np.ndarray, class_names, path: str,
                 alpha: float = 0.5, scale: int = 0) -> None:
  """Writes the image (left), the image with the classes blended in (alpha), and a
  legend of the classes present to the PNG `path`.

  image: [h, w, c] uint8 (c = 1 or 3); classes: [h, w] int class ids (0 = background);
  class_names: one name per class. scale: nearest-neighbour magnification (0: so that
  the shorter side is at least 256 px).
  """
  h, w = classes.shape
  scale = scale or max(1, -(-256 // min(h, w)))
  rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
  colours = PALETTE[np.asarray(classes) % len(PALETTE)]
  blended = np.where((classes > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
  panels = [Image.fromarray(a.astype(np.uint8)).resize((w * scale, h * scale),
                                                       Image.Resampling.NEAREST)
            for a in (rgb, blended)]
  present = [int(c) for c in np.unique(classes) if c > 0]
  legend_width, row = 170, 18
  canvas = Image.new('RGB', (2 * w * scale + legend_width,
                             max(h * scale, row * (len(present) + 1))), 'white')
  canvas.paste(panels[0], (0, 0))
  canvas.paste(panels[1], (w * scale, 0))
  draw = ImageDraw.Draw(canvas)
  x = 2 * w * scale + 8
  for i, c in enumerate(present):
    y = 6 + i * row
    draw.rectangle((x, y, x + 12, y + 12), fill=tuple(int(v) for v in PALETTE[c % len(PALETTE)]))
    draw.text((x + 18, y), str(class_names[c]), fill='black')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  canvas.save(path)


def save_detections(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                    scores: np.ndarray, class_names, path: str, scale: int = 0) -> None:
  """Writes the image with each box outlined in its class's colour and labelled
  "<class> <score>" to the PNG `path`.

  image: [h, w, c] uint8 (c = 1 or 3); boxes: [n, 4] xyxy pixels of `image`; classes:
  [n] int; scores: [n] float. scale: nearest-neighbour magnification (0: so that the
  shorter side is at least 256 px).
  """
  h, w = image.shape[:2]
  scale = scale or max(1, -(-256 // min(h, w)))
  rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
  canvas = Image.fromarray(rgb.astype(np.uint8)).resize((w * scale, h * scale),
                                                        Image.Resampling.NEAREST)
  draw = ImageDraw.Draw(canvas)
  for box, c, score in zip(np.asarray(boxes) * scale, classes, scores):
    colour = tuple(int(v) for v in PALETTE[1 + int(c) % (len(PALETTE) - 1)])
    draw.rectangle(tuple(float(v) for v in box), outline=colour, width=2)
    draw.text((float(box[0]) + 2, float(box[1]) + 1), f'{class_names[int(c)]} {score:.2f}',
              fill=colour)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  canvas.save(path)
