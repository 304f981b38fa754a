"""Box-aware augmentation (data.box_augment): boxes stay on their objects through every
spatial transform, drops are counted, 'difficult' follows its box, fixed slots, checks.

The scenes are filled rectangles of distinct intensities on a 0 background whose boxes
are exactly the rectangles; every object has its own class id, so a kept box names the
object it should sit on. Since the random draws never depend on the pixels, running a
transform with the same seed on an image holding only object k shows exactly where
object k went; the transform is linear in the image (fill 0), so those single-object
images must also add up to the transformed scene.
"""

import numpy as np
import pytest

from data import box_augment as ba

# Four non-overlapping rectangles (xyxy pixel edges) on 64 x 64, >= 10 px apart.
RECTS = ((4, 6, 24, 20), (34, 4, 60, 28), (6, 32, 20, 58), (30, 40, 56, 56))
VALUES = (60, 120, 180, 240)
# Fitting a 40 x 64 (h x w) image.
WIDE_RECTS = ((2, 4, 22, 18), (32, 2, 62, 16), (10, 26, 50, 38))


def _colour(value, channels):
  return (value,) if channels == 1 else (value, 255 - value, value // 2)


def _scene(rects=RECTS, values=VALUES, size=(64, 64), channels=1, first_class=0,
           only=None):
  """An example: rectangle i filled with colour(values[i]) (only rectangle `only` if
  given), boxes = the rectangles, classes first_class + i, difficult for odd i."""
  image = np.zeros(size + (channels,), np.uint8)
  for i, ((x0, y0, x1, y1), value) in enumerate(zip(rects, values)):
    if only is None or only == i:
      image[y0:y1, x0:x1] = _colour(value, channels)
  n = len(rects)
  return {'image': image, 'boxes': np.array(rects, np.float32).reshape(n, 4),
          'classes': np.arange(first_class, first_class + n, dtype=np.int32),
          'difficult': np.arange(n) % 2 == 1, 'id': 7}


def _empty(size=(64, 64), channels=1):
  return {'image': np.zeros(size + (channels,), np.uint8),
          'boxes': np.zeros((0, 4), np.float32), 'classes': np.zeros((0,), np.int32),
          'difficult': np.zeros((0,), bool)}


def _check_boxes_on_objects(apply, examples):
  """apply(list of examples) -> (example, num_dropped), with a fixed seed inside.

  For every kept box (found by its class) the object's pixels lie inside it (1.5 px of
  resampling blur allowed) and its half-intensity pixels span it to 1 px; the box
  interior in the scene has the object's colour; an object wholly on the canvas is
  kept and an invisible one dropped; 'difficult' follows; counts add up; the same
  seed gives the same output. Returns (output, num_dropped).
  """
  out, dropped = apply(examples)
  again, dropped_again = apply(examples)
  for key in ('image', 'boxes', 'classes', 'difficult'):
    np.testing.assert_array_equal(out[key], again[key])
  assert dropped == dropped_again
  assert out['image'].dtype == np.uint8 and out['boxes'].dtype == np.float32
  assert out['classes'].dtype == np.int32 and out['difficult'].dtype == bool
  kept = out['classes'].tolist()
  assert len(set(kept)) == len(kept)
  assert len(kept) + dropped == sum(len(e['boxes']) for e in examples)
  assert len(out['boxes']) == len(out['difficult']) == len(kept)
  height, width, channels = out['image'].shape
  total = np.zeros(out['image'].shape, np.float64)
  interiors = 0
  for j, example in enumerate(examples):
    for k, cls in enumerate(example['classes'].tolist()):
      value = VALUES[k]
      images = [np.zeros_like(e['image']) for e in examples]
      images[j] = _scene(example['_rects'], size=example['image'].shape[:2],
                         channels=channels, only=k)['image']
      single = apply([{**e, 'image': im} for e, im in zip(examples, images)])[0]['image']
      total += single
      obj = single[..., 0]
      if cls not in kept:
        on_border = max(obj[0].max(), obj[-1].max(), obj[:, 0].max(), obj[:, -1].max())
        assert obj.max() == 0 or on_border > 0, f'object {cls} wholly visible but dropped'
        continue
      i = kept.index(cls)
      assert out['difficult'][i] == example['difficult'][k]
      x0, y0, x1, y1 = out['boxes'][i]
      ys, xs = np.nonzero(obj >= value / 2)
      np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                                 out['boxes'][i], atol=1.0, err_msg=f'object {cls}')
      ys, xs = np.nonzero(obj > 0)
      assert xs.min() >= x0 - 1.5 and xs.max() + 1 <= x1 + 1.5, f'object {cls}'
      assert ys.min() >= y0 - 1.5 and ys.max() + 1 <= y1 + 1.5, f'object {cls}'
      inner = out['image'][int(np.ceil(y0 + 1.5)):int(y1 - 1.5),
                           int(np.ceil(x0 + 1.5)):int(x1 - 1.5)].reshape(-1, channels)
      # Boxes thinned to < 4 px at the canvas edge have no interior to check.
      np.testing.assert_allclose(inner, np.broadcast_to(_colour(value, channels),
                                                        inner.shape), atol=3)
      interiors += len(inner) > 0
  np.testing.assert_allclose(out['image'], total, atol=3)
  assert interiors >= len(kept) // 2
  return out, dropped


def _scenes(channels=1, sizes=((64, 64),)):
  out = []
  for j, size in enumerate(sizes):
    rects = RECTS if size == (64, 64) else WIDE_RECTS
    example = _scene(rects, size=size, channels=channels, first_class=10 * j)
    out.append({**example, '_rects': rects})
  return out


@pytest.mark.parametrize('channels', [1, 3])
def test_flip_keeps_boxes_on_objects(channels):
  [scene] = _scenes(channels)
  out, _ = _check_boxes_on_objects(lambda e: (ba.hflip(e[0]), 0), [scene])
  np.testing.assert_array_equal(out['boxes'][0], [40, 6, 60, 20])  # 64 - 24, 64 - 4.
  assert out['id'] == 7
  twice = ba.hflip(out)
  np.testing.assert_array_equal(twice['image'], scene['image'])
  np.testing.assert_array_equal(twice['boxes'], scene['boxes'])
  flipped = []
  for seed in range(8):
    _check_boxes_on_objects(lambda e: (ba.random_flip(e[0], np.random.default_rng(seed)),
                                       0), [scene])
    flipped.append(not np.array_equal(
        ba.random_flip(scene, np.random.default_rng(seed))['image'], scene['image']))
  assert 0 < sum(flipped) < 8


@pytest.mark.parametrize('scale_range,translate,out_size,channels', [
    ((0.5, 0.8), 0.2, None, 1), ((1.2, 1.6), 0.2, None, 3), ((0.5, 1.5), 0.3, None, 1),
    ((0.7, 1.3), 0.1, (48, 80), 1)])
def test_random_affine_keeps_boxes_on_objects(scale_range, translate, out_size, channels):
  scenes = _scenes(channels)
  outputs = set()
  for seed in range(3):
    apply = lambda e: ba.random_affine(e[0], np.random.default_rng(seed),
                                       scale_range=scale_range, translate=translate,
                                       out_size=out_size)
    out, _ = _check_boxes_on_objects(apply, scenes)
    assert out['image'].shape == (out_size or (64, 64)) + (channels,)
    outputs.add(out['image'].tobytes())
  assert len(outputs) == 3  # Seeds differ.


def test_random_affine_drop_counts_match_the_visible_pixels():
  """Scale 1 moves whole pixels, so an object's visible fraction is its pixel count on
  the canvas over its area: exactly what decides the drop."""
  [scene] = _scenes()
  total_dropped = 0
  for seed in range(12):
    apply = lambda e: ba.random_affine(e[0], np.random.default_rng(seed),
                                       scale_range=(1.0, 1.0), translate=0.5)
    out, dropped = _check_boxes_on_objects(apply, [scene])
    expected = []
    for k, (x0, y0, x1, y1) in enumerate(RECTS):
      single = apply([{**scene, 'image': _scene(only=k)['image']}])[0]['image'][..., 0]
      ys, xs = np.nonzero(single)
      visible = (len(ys) and len(ys) >= 0.25 * (x1 - x0) * (y1 - y0)
                 and xs.max() + 1 - xs.min() >= 2 and ys.max() + 1 - ys.min() >= 2)
      expected.append(not visible)
      if visible:  # Whole pixels: the box is exactly the visible pixels' extent.
        np.testing.assert_array_equal(out['boxes'][out['classes'].tolist().index(k)],
                                      [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert dropped == sum(expected), seed
    assert out['classes'].tolist() == [k for k in range(4) if not expected[k]]
    total_dropped += dropped
  assert total_dropped > 0  # The seeds push some boxes mostly off the canvas.


def test_drop_difficult_keeps_the_other_boxes_in_order():
  out = ba.drop_difficult(_scene())  # Rectangles 1 and 3 are difficult.
  assert out['classes'].tolist() == [0, 2] and out['difficult'].tolist() == [False, False]
  np.testing.assert_array_equal(out['boxes'], np.array(RECTS, np.float32)[[0, 2]])
  np.testing.assert_array_equal(out['image'], _scene()['image'])
  unflagged = {k: v for k, v in _scene().items() if k != 'difficult'}
  assert len(ba.drop_difficult(unflagged)['boxes']) == len(RECTS)
  assert len(ba.drop_difficult(_empty())['boxes']) == 0


def test_resize_and_place_drops_boxes_pushed_off_the_canvas():
  scene = _scene()
  # Right by 30: B (34..60) is wholly off, D (30..56 -> 60..86) keeps 4/26 < 1/4.
  out, dropped = ba.resize_and_place(scene, 64, (0, 30), 64)
  assert dropped == 2 and out['classes'].tolist() == [0, 2]
  np.testing.assert_array_equal(out['boxes'], [[34, 6, 54, 20], [36, 32, 50, 58]])
  np.testing.assert_array_equal(out['difficult'], [False, False])
  # Left by 20: A keeps 4/20 < 1/4 and C nothing; B, D (difficult) stay.
  out, dropped = ba.resize_and_place(scene, 64, (0, -20), 64)
  assert dropped == 2 and out['classes'].tolist() == [1, 3]
  np.testing.assert_array_equal(out['difficult'], [True, True])
  np.testing.assert_array_equal(out['boxes'], [[14, 4, 40, 28], [10, 40, 36, 56]])
  # Up by 16: A keeps 4/14 >= 1/4 and is kept, clipped.
  out, dropped = ba.resize_and_place(scene, 64, (-16, 0), 64)
  assert dropped == 0
  np.testing.assert_array_equal(out['boxes'][0], [4, 0, 24, 4])
  # Up by 19: A keeps 1 row, < min_size even when any fraction is enough.
  out, dropped = ba.resize_and_place(scene, 64, (-19, 0), 64, min_visible=0.0)
  assert dropped == 1 and out['classes'].tolist() == [1, 2, 3]
  out, dropped = ba.resize_and_place(scene, 64, (-19, 0), 64, min_visible=0.0,
                                     min_size=1.0)
  assert dropped == 0
  # Half size, offset (8, 4): x / 2 + 4, y / 2 + 8; the image pasted there.
  out, dropped = ba.resize_and_place(scene, 32, (8, 4), (48, 40), fill=114)
  assert dropped == 0 and out['image'].shape == (48, 40, 1)
  np.testing.assert_array_equal(out['boxes'][1], [21, 10, 34, 22])
  assert (out['image'][:8] == 114).all() and (out['image'][:, :4] == 114).all()
  assert (out['image'][40:] == 114).all() and (out['image'][:, 36:] == 114).all()
  assert (out['image'][11:21, 23:32] == 120).all()


@pytest.mark.parametrize('resized_size,offset', [((32, 48), (5, -6)), ((80, 56), (-9, 3))])
def test_resize_and_place_keeps_boxes_on_objects_when_stretched(resized_size, offset):
  out, _ = _check_boxes_on_objects(
      lambda e: ba.resize_and_place(e[0], resized_size, offset, (56, 60)), _scenes())
  # B (34, 4, 60, 28): x * w' / 64 + left, y * h' / 64 + top, clipped to 60 x 56.
  (h, w), (top, left) = resized_size, offset
  expected = np.array([34 * w / 64 + left, 4 * h / 64 + top, 60 * w / 64 + left,
                       28 * h / 64 + top])
  np.testing.assert_allclose(out['boxes'][out['classes'].tolist().index(1)],
                             np.clip(expected, 0, [60, 56, 60, 56]), rtol=1e-6)


def test_clip_boxes_by_hand():
  example = {'image': np.zeros((10, 64, 1), np.uint8),
             'boxes': np.array([[-10, 0, 10, 10], [-30, 0, 10, 10], [-40, 0, 10, 10],
                                [62.5, 0, 70, 10], [5, 2, 9, 8]], np.float32),
             'classes': np.array([0, 1, 2, 3, 4], np.int32),
             'difficult': np.array([1, 0, 1, 0, 1], bool)}
  out, dropped = ba.clip_boxes(example, 10, 64)
  # Kept: 1/2 and exactly 1/4 visible, and the inside one. Dropped: 1/5 visible, and
  # one 1.5 px wide after clipping.
  assert dropped == 2
  assert out['classes'].tolist() == [0, 1, 4]
  assert out['difficult'].tolist() == [True, False, True]
  np.testing.assert_array_equal(out['boxes'], [[0, 0, 10, 10], [0, 0, 10, 10], [5, 2, 9, 8]])


@pytest.mark.parametrize('size,channels', [(48, 1), (96, 3), ((64, 48), 1)])
def test_letterbox_keeps_boxes_on_objects_and_unletterbox_inverts(size, channels):
  [scene] = _scenes(channels, sizes=((40, 64),))
  out, _ = _check_boxes_on_objects(lambda e: (ba.letterbox(e[0], size)[0], 0), [scene])
  out_h, out_w = (size, size) if isinstance(size, int) else size
  assert out['image'].shape == (out_h, out_w, channels)
  _, info = ba.letterbox(scene, size)
  scale = min(out_h / 40, out_w / 64)
  assert info['scale'] == pytest.approx(scale)
  rh, rw = round(40 * scale), round(64 * scale)
  assert info['pad'] == ((out_h - rh) // 2, (out_w - rw) // 2)
  # The whole image lands on the canvas between the pads, the rest is fill.
  top, left = info['pad']
  np.testing.assert_allclose(
      ba.letterbox({**scene, 'image': np.full((40, 64, channels), 255, np.uint8)},
                   size)[0]['image'][..., 0], np.pad(np.full((rh, rw), 255),
                                                     ((top, out_h - rh - top),
                                                      (left, out_w - rw - left))))
  np.testing.assert_allclose(ba.unletterbox_boxes(out['boxes'], info), scene['boxes'],
                             atol=1e-4)
  rng = np.random.default_rng(0)
  corners = np.sort(rng.uniform(0, 40, (5, 2, 2)), axis=1)  # Random boxes in the image.
  boxes = np.stack([corners[:, 0, 0] * 1.6, corners[:, 0, 1], corners[:, 1, 0] * 1.6,
                    corners[:, 1, 1]], axis=1).astype(np.float32)
  moved = ba.letterbox({**scene, 'boxes': boxes}, size)[0]['boxes']
  np.testing.assert_allclose(ba.unletterbox_boxes(moved, info), boxes, atol=1e-4)
  # Predictions reaching into the padding are clipped to the original image.
  np.testing.assert_allclose(ba.unletterbox_boxes([[0, 0, out_w, out_h]], info),
                             [[0, 0, 64, 40]], atol=1e-4)


def test_letterbox_by_hand():
  out, info = ba.letterbox(_scene(WIDE_RECTS, size=(40, 64)), 48)
  assert info['pad'] == (9, 0) and info['scale_yx'] == (0.75, 0.75)
  np.testing.assert_allclose(out['boxes'][0], [1.5, 12, 16.5, 22.5])  # 0.75 x + (0, 9).
  assert out['difficult'].tolist() == [False, True, False] and out['id'] == 7
  # No resize at scale 1; 3 spare columns: 1 on the left, 2 on the right.
  scene = _scene(WIDE_RECTS, size=(40, 64))
  out, info = ba.letterbox(scene, (40, 67), fill=9)
  assert info['pad'] == (0, 1) and info['scale'] == 1.0
  np.testing.assert_array_equal(out['image'][:, 1:65], scene['image'])
  assert (out['image'][:, [0, 65, 66]] == 9).all()
  np.testing.assert_array_equal(out['boxes'], scene['boxes'] + [1, 0, 1, 0])


@pytest.mark.parametrize('channels', [1, 3])
def test_mosaic_keeps_boxes_on_objects(channels):
  scenes = _scenes(channels, sizes=((64, 64), (40, 64), (64, 64), (64, 64)))
  centres = set()
  for seed in range(3):
    apply = lambda e: ba.mosaic(e, np.random.default_rng(seed), 64)
    out, dropped = _check_boxes_on_objects(apply, scenes)
    assert out['image'].shape == (64, 64, channels) and 'id' not in out
    assert len(out['classes']) + dropped == 15
    centres.add(out['image'].tobytes())
  assert len(centres) == 3


def test_mosaic_by_hand():
  """Each 64 x 64 tile becomes 32 x 32 with one corner on the centre; a tile's pixels
  are exactly where its corner says."""
  tiles = [{'image': np.full((64, 64, 1), 50 * (i + 1), np.uint8),
            'boxes': np.array([[0, 0, 64, 64]], np.float32),
            'classes': np.array([i], np.int32)} for i in range(4)]
  out, dropped = ba.mosaic(tiles, np.random.default_rng(1), (64, 80), fill=7)
  u = np.random.default_rng(1).uniform(0.25, 0.75, size=2)  # The centre's draws.
  cy, cx = int(u[0] * 64), int(u[1] * 80)
  assert 16 <= cy < 48 and 20 <= cx < 60
  expected = np.full((64, 80), 7)
  expected[max(cy - 32, 0):cy, max(cx - 32, 0):cx] = 50
  expected[max(cy - 32, 0):cy, cx:cx + 32] = 100
  expected[cy:cy + 32, max(cx - 32, 0):cx] = 150
  expected[cy:cy + 32, cx:cx + 32] = 200
  np.testing.assert_array_equal(out['image'][..., 0], expected)
  np.testing.assert_array_equal(out['boxes'], [
      [max(cx - 32, 0), max(cy - 32, 0), cx, cy], [cx, max(cy - 32, 0), min(cx + 32, 80), cy],
      [max(cx - 32, 0), cy, cx, cy + 32], [cx, cy, min(cx + 32, 80), cy + 32]])
  assert dropped == 0 and 'difficult' not in out
  # Mixed: 'difficult' where any has it, False for the others.
  tiles[2] = {**tiles[2], 'difficult': np.array([True])}
  out, _ = ba.mosaic(tiles, np.random.default_rng(1), (64, 80))
  assert out['difficult'].tolist() == [False, False, True, False]
  with pytest.raises(ValueError, match='4 examples'):
    ba.mosaic(tiles[:3], np.random.default_rng(0), 64)
  with pytest.raises(ValueError, match='channels'):
    ba.mosaic(tiles[:3] + [_empty(channels=3)], np.random.default_rng(0), 64)


def _fit(x, y):
  """Least-squares (slope, intercept) of y on x."""
  slope, intercept = np.polyfit(x.ravel().astype(np.float64), y.ravel().astype(np.float64), 1)
  return slope, intercept


def test_color_jitter_formulas():
  ramp = np.arange(40, 216, dtype=np.uint8).reshape(1, -1, 1)  # No clipping at 0.7-1.3.
  slopes = set()
  for seed in range(4):
    rng = lambda: np.random.default_rng(seed)
    out = ba.color_jitter(ramp, rng(), brightness=0.3, contrast=0.0, saturation=0.0)
    slope, intercept = _fit(ramp, out)
    assert 0.7 <= slope <= 1.3 and abs(intercept) < 0.5  # x f.
    np.testing.assert_allclose(out, np.rint(ramp * slope), atol=1)
    slopes.add(round(slope, 4))
    out = ba.color_jitter(ramp, rng(), brightness=0.0, contrast=0.3, saturation=0.0)
    slope, intercept = _fit(ramp, out)
    mean = ramp.mean()  # m + f (x - m): the mean is the fixed point.
    assert 0.7 <= slope <= 1.3 and intercept == pytest.approx(mean * (1 - slope), abs=0.5)
    # Saturation is a no-op on 1 channel; on 3 it keeps grey pixels and each pixel's
    # luma, and scales the colour around it.
    np.testing.assert_array_equal(ba.color_jitter(ramp, rng(), 0.0, 0.0, 0.9), ramp)
    rgb = np.random.default_rng(seed).integers(60, 200, (8, 8, 3)).astype(np.uint8)
    rgb[0] = 128
    out = ba.color_jitter(rgb, rng(), brightness=0.0, contrast=0.0, saturation=0.3)
    np.testing.assert_array_equal(out[0], rgb[0])
    luma = lambda x: x.astype(np.float64) @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(luma(out), luma(rgb), atol=0.6)
    slope, _ = _fit(rgb - luma(rgb)[..., None], out - luma(rgb)[..., None])
    assert 0.7 <= slope <= 1.3 and abs(slope - 1) > 1e-3
    np.testing.assert_allclose(out, np.clip(luma(rgb)[..., None] + slope * (
        rgb - luma(rgb)[..., None]), 0, 255), atol=1)
  assert len(slopes) == 4


@pytest.mark.parametrize('channels', [1, 3])
def test_color_jitter_leaves_objects_in_their_boxes(channels):
  scene = _scene(channels=channels)
  for seed in range(3):
    out = ba.color_jitter(scene['image'], np.random.default_rng(seed), 0.3, 0.3, 0.3)
    again = ba.color_jitter(scene['image'], np.random.default_rng(seed), 0.3, 0.3, 0.3)
    np.testing.assert_array_equal(out, again)
    assert out.dtype == np.uint8 and out.shape == scene['image'].shape
    # Each pixel's new colour depends only on its old one (and image statistics): each
    # rectangle stays one colour, distinct from the others and from the background.
    colours = []
    for x0, y0, x1, y1 in RECTS:
      region = out[y0:y1, x0:x1].reshape(-1, channels)
      assert (region == region[0]).all()
      colours.append(tuple(region[0]))
    background = np.ones((64, 64), bool)
    for x0, y0, x1, y1 in RECTS:
      background[y0:y1, x0:x1] = False
    colours.append(tuple(out[background][0]))
    assert (out[background] == out[background][0]).all()
    assert len(set(colours)) == 5


def test_cap_and_pad_boxes():
  example = _scene()
  capped, dropped = ba.cap_boxes(example, 3)
  assert dropped == 1 and capped['classes'].tolist() == [0, 1, 2]
  assert capped['difficult'].tolist() == [False, True, False]
  np.testing.assert_array_equal(capped['boxes'], example['boxes'][:3])
  same, dropped = ba.cap_boxes(example, 4)
  assert dropped == 0 and len(same['boxes']) == 4
  boxes, classes, mask = ba.pad_boxes(capped['boxes'], capped['classes'], 5)
  assert boxes.shape == (5, 4) and boxes.dtype == np.float32
  assert classes.shape == (5,) and classes.dtype == np.int32
  assert mask.dtype == np.float32 and mask.tolist() == [1, 1, 1, 0, 0]
  np.testing.assert_array_equal(boxes[:3], example['boxes'][:3])
  assert not boxes[3:].any() and classes.tolist() == [0, 1, 2, 0, 0]
  padded = ba.pad_example(example, 6)
  assert padded['difficult'].tolist() == [False, True, False, True, False, False]
  assert padded['box_mask'].tolist() == [1, 1, 1, 1, 0, 0] and padded['id'] == 7
  with pytest.raises(ValueError, match='cap_boxes'):
    ba.pad_boxes(example['boxes'], example['classes'], 3)


def test_check_boxes_errors_name_the_example():
  good = _scene()
  ba.check_boxes(good, 4, 'train example 17')
  ba.check_boxes(_empty(), 1, 'train example 17')
  ba.check_boxes({**good, 'boxes': np.array(RECTS[:1] * 4, np.float32) * [1, 1, 0, 1]
                  + [0, 0, 4, 0]}, 4, 'x')  # Zero width is allowed.
  cases = [
      ({'boxes': good['boxes'][:, [2, 1, 0, 3]]}, 'x1 < x0'),
      ({'boxes': good['boxes'][:, [0, 3, 2, 1]]}, 'y1 < y0'),
      ({'boxes': np.where([[False] * 4, [False, False, True, False]] + [[False] * 4] * 2,
                          np.nan, good['boxes'])}, 'box 1 .*non-finite'),
      ({'boxes': good['boxes'] + [0, 0, np.inf, 0]}, 'non-finite'),
      ({'classes': np.array([0, 1, 4, 2], np.int32)}, r'box 2 has class 4 outside \[0, 4\)'),
      ({'classes': np.array([0, -1, 2, 3], np.int32)}, 'class -1'),
      ({'classes': np.array([0, 1, 2], np.int32)}, 'classes of shape'),
      ({'classes': np.array([0., 1., 2., 3.])}, 'integers'),
      ({'boxes': good['boxes'][:, :3]}, r'need \[n, 4\]'),
      ({'difficult': np.array([True])}, 'difficult of shape'),
  ]
  for change, message in cases:
    with pytest.raises(ValueError, match='train example 17: .*' + message):
      ba.check_boxes({**good, **change}, 4, 'train example 17')


@pytest.mark.parametrize('channels', [1, 3])
def test_zero_box_examples_pass_through_everything(channels):
  empty = _empty(channels=channels)
  rng = np.random.default_rng(0)

  def assert_empty(example):
    assert example['boxes'].shape == (0, 4) and example['boxes'].dtype == np.float32
    assert example['classes'].shape == (0,) and example['classes'].dtype == np.int32
    assert example['difficult'].shape == (0,)

  for out, dropped in [ba.clip_boxes(empty, 64, 64), ba.random_affine(empty, rng),
                       ba.mosaic([empty] * 4, rng, 48), ba.cap_boxes(empty, 3),
                       ba.resize_and_place(empty, 32, (-5, 40), 64)]:
    assert_empty(out)
    assert dropped == 0
  for out in [ba.hflip(empty), ba.random_flip(empty, rng), ba.letterbox(empty, 32)[0]]:
    assert_empty(out)
  ba.check_boxes(empty, 3, 'x')
  padded = ba.pad_example(empty, 2)
  assert padded['box_mask'].tolist() == [0, 0] and padded['boxes'].shape == (2, 4)
  assert ba.unletterbox_boxes(np.zeros((0, 4)), ba.letterbox(empty, 32)[1]).shape == (0, 4)
  assert ba.color_jitter(empty['image'], rng).shape == (64, 64, channels)


def test_bad_arguments():
  scene = _scene()
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match='scale_range'):
    ba.random_affine(scene, rng, scale_range=(0.0, 1.0))
  with pytest.raises(ValueError, match='translate'):
    ba.random_affine(scene, rng, translate=-0.1)
  with pytest.raises(ValueError, match='out_size'):
    ba.random_affine(scene, rng, out_size=(0, 4))
  with pytest.raises(ValueError, match='fill'):
    ba.letterbox(scene, 32, fill=300)
  with pytest.raises(ValueError, match='uint8'):
    ba.hflip({**scene, 'image': scene['image'].astype(np.float32)})
  with pytest.raises(ValueError, match='color_jitter'):
    ba.color_jitter(np.zeros((4, 4, 2), np.uint8), rng)
