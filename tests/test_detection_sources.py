"""Detection sources: VOC XML parsing, NEON tree tiles (from a fake deepforest wheel),
TFDS VOC / COCO records (hand-made and under tfds.testing.mock_data), Fashion-MNIST
scenes as detection examples, build_source / class_names errors (no network)."""

import io
import json
import os
import subprocess
import zipfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data import box_augment, detection_sources, scenes, sources, trees, wheels
from tests.conftest import make_fashion_mnist_dir

YELL_BIG, YELL_SMALL = trees.IMAGES[:2]
# Fake images (width, height) and VOC boxes (1-based inclusive xmin, ymin, xmax, ymax).
FAKE = {
    YELL_BIG: ((64, 48), [(21, 5, 40, 14),    # Pixel edges [20, 4, 40, 14]: hand-checked.
                          (25, 21, 40, 28),   # [24, 20, 40, 28]: exactly half in some tiles.
                          (1, 1, 10, 10), (55, 30, 64, 48), (30, 33, 45, 47)]),
    YELL_SMALL: ((40, 36), [(3, 4, 20, 19), (18, 10, 38, 30), (1, 30, 8, 36)]),
    trees.VALIDATION_IMAGE: ((32, 32), [(5, 5, 12, 12), (20, 2, 32, 30)]),
    trees.TEST_IMAGE: ((24, 24), [(1, 1, 24, 24), (4, 6, 9, 11)]),
}


def voc_xml(width, height, boxes, names=None, difficult=None) -> str:
  objects = ''.join(
      f'<object><name>{(names or ["Tree"] * len(boxes))[k]}</name><difficult>'
      f'{int((difficult or [0] * len(boxes))[k])}</difficult><bndbox><xmin>{b[0]}</xmin>'
      f'<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>'
      for k, b in enumerate(boxes))
  return (f'<annotation><filename>x.tif</filename><size><width>{width}</width><height>'
          f'{height}</height><depth>3</depth></size>{objects}</annotation>')


def fake_image(k: int, width: int, height: int) -> np.ndarray:
  """Random channels 0 and 1; channel 2 = 50 k tells which image a pixel came from."""
  image = np.random.default_rng(k).integers(0, 256, (height, width, 3)).astype(np.uint8)
  image[..., 2] = 50 * k
  return image


def png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def make_wheel(path, skip=(), xml_override=None) -> str:
  """A zip laid out like the deepforest wheel: the fake annotated pairs, an unannotated
  PNG and a Python file."""
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('deepforest/__init__.py', '')
    archive.writestr('deepforest/data/SOAP_031.png', png_bytes(fake_image(4, 8, 8)))
    for k, (name, ((width, height), boxes)) in enumerate(FAKE.items()):
      if name + '.png' not in skip:
        archive.writestr(f'deepforest/data/{name}.png', png_bytes(fake_image(k, width, height)))
      if name + '.xml' not in skip:
        xml = (xml_override or {}).get(name) or voc_xml(width, height, boxes)
        archive.writestr(f'deepforest/data/{name}.xml', xml)
  return str(path)


@pytest.fixture(scope='module')
def trees_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('trees')
  return trees.prepare(str(tmp / 'data'), wheel=make_wheel(tmp / 'deepforest-2.1.0-fake.whl'))


# VOC XML.

def test_voc_xml_one_based_inclusive_indices_become_pixel_edges():
  xml = voc_xml(6, 4, [(1, 1, 6, 4), (2, 3, 2, 3), (3, 1, 5, 2)], names=['Tree', 'Dead', 'x'],
                difficult=[0, 1, 0])
  parsed = trees.parse_voc_xml(xml)
  assert (parsed['width'], parsed['height'], parsed['depth']) == (6, 4, 3)
  # The whole image; the single pixel at 1-based (column 2, row 3) = 0-based (1, 2), which
  # covers [1, 2) x [2, 3); columns 3..5 and rows 1..2 (1-based) = edges [2, 5) x [0, 2).
  np.testing.assert_array_equal(parsed['boxes'], [[0, 0, 6, 4], [1, 2, 2, 3], [2, 0, 5, 2]])
  assert parsed['boxes'].dtype == np.float32
  assert parsed['names'] == ['Tree', 'Dead', 'x']
  np.testing.assert_array_equal(parsed['difficult'], [False, True, False])
  # Width = number of 1-based columns xmin..xmax: the box's pixels are exactly those.
  mask = np.zeros((4, 6), bool)
  mask[3 - 1:3, 2 - 1:2] = True  # 1-based rows 3..3, columns 2..2.
  x0, y0, x1, y1 = parsed['boxes'][1].astype(int)
  covered = np.zeros((4, 6), bool)
  covered[y0:y1, x0:x1] = True
  np.testing.assert_array_equal(covered, mask)
  empty = trees.parse_voc_xml(voc_xml(5, 5, []))
  assert empty['boxes'].shape == (0, 4) and empty['difficult'].shape == (0,)


@pytest.mark.parametrize('box', [(0, 1, 3, 3), (1, 1, 7, 3), (3, 1, 2, 3), (1, 1, 3, 5)])
def test_voc_xml_rejects_boxes_outside_the_one_based_image(box):
  with pytest.raises(ValueError, match=r'f\.xml: object 1 box .*1-based 6x4'):
    trees.parse_voc_xml(voc_xml(6, 4, [(1, 1, 2, 2), box]), 'f.xml')


def test_voc_xml_rejects_malformed_annotations():
  with pytest.raises(ValueError, match='not a VOC annotation'):
    trees.parse_voc_xml('<annotation><size></size></annotation>')
  with pytest.raises(ValueError, match='not a VOC annotation'):
    trees.parse_voc_xml('<annotation')
  with pytest.raises(ValueError, match='object 0 lacks'):
    trees.parse_voc_xml(voc_xml(6, 4, [(1, 1, 2, 2)]).replace('<xmax>2</xmax>', ''))


# Preparation.

def test_prepare_takes_only_the_annotated_pairs_and_is_idempotent(trees_dir, tmp_path):
  assert sorted(os.listdir(trees_dir)) == sorted(
      f'{name}.{ext}' for name in trees.IMAGES for ext in ('png', 'xml'))
  loaded = trees.load(trees_dir)
  assert list(loaded) == list(trees.IMAGES)
  for k, (name, ((width, height), boxes)) in enumerate(FAKE.items()):
    example = loaded[name]
    np.testing.assert_array_equal(example['image'], fake_image(k, width, height))
    expected = np.array(boxes, np.float32) - np.array([1, 1, 0, 0], np.float32)
    np.testing.assert_array_equal(example['boxes'], expected)
    assert example['classes'].dtype == np.int32 and not example['classes'].any()
  # Second call: files already there, the wheel is not even opened.
  assert trees.prepare(trees_dir, wheel=str(tmp_path / 'gone.whl')) == trees_dir


def test_prepare_rejects_incomplete_or_inconsistent_wheels(tmp_path):
  wheel = make_wheel(tmp_path / 'a.whl', skip=(trees.TEST_IMAGE + '.xml',))
  with pytest.raises(ValueError, match='OSBS_029.xml'):
    trees.prepare(str(tmp_path / 'a'), wheel=wheel)
  assert not os.path.exists(tmp_path / 'a' / 'OSBS_029.png')
  wheel = make_wheel(tmp_path / 'b.whl', xml_override={
      trees.VALIDATION_IMAGE: voc_xml(33, 32, [(1, 1, 2, 2)])})
  with pytest.raises(ValueError, match=r'SOAP_061.png: image of shape \(32, 32, 3\).*32x33'):
    trees.prepare(str(tmp_path / 'b'), wheel=wheel)
  assert not os.path.exists(tmp_path / 'b')  # Nothing moved before every pair was checked.
  with pytest.raises(FileNotFoundError, match='No deepforest wheel'):
    trees.prepare(str(tmp_path / 'c'), wheel=str(tmp_path / 'missing.whl'))


def test_failed_pip_download_says_how_to_do_it_by_hand(tmp_path, monkeypatch):
  failed = subprocess.CompletedProcess([], 1, stdout='', stderr='ERROR: no network')
  monkeypatch.setattr(wheels.subprocess, 'run', lambda *a, **k: failed)
  with pytest.raises(RuntimeError, match=r'(?s)no network.*pip download --no-deps deepforest'):
    trees.prepare(str(tmp_path / 'data'))


def test_missing_data_gives_the_prepare_command(tmp_path):
  with pytest.raises(sources.DatasetNotFoundError,
                     match=r'python -m data.prepare --dataset=neon_trees'):
    trees.TreesSource(str(tmp_path), 'test', 32)
  assert issubclass(sources.DatasetNotFoundError, FileNotFoundError)


# Tiles.

def test_hand_computed_tile_boxes(trees_dir):
  """YELL_BIG is 64x48; tile 32, overlap 16: lefts 0, 16, 32, tops 0, 16, row-major."""
  source = trees.TreesSource(trees_dir, 'train', 32, overlap=16)
  assert [source.window(i) for i in range(6)] == [
      (YELL_BIG, w) for w in [(0, 0, 32, 32), (16, 0, 48, 32), (32, 0, 64, 32),
                              (0, 16, 32, 48), (16, 16, 48, 48), (32, 16, 64, 48)]]
  def boxes(i):
    return {tuple(b) for b in source[i]['boxes'].tolist()}
  # Box [20, 4, 40, 14] keeps 12/20 of its width in tile 0, all in tile 1, 8/20 in tile 2
  # (dropped). Box [24, 20, 40, 28] keeps exactly half in tiles 0 and 2 (kept), all in 1.
  # Box [0, 0, 10, 10] is whole in tile 0.
  assert boxes(0) == {(20, 4, 32, 14), (24, 20, 32, 28), (0, 0, 10, 10)}
  assert boxes(1) == {(4, 4, 24, 14), (8, 20, 24, 28)}
  # Tile 2 also drops [54, 29, 64, 48], 3 of whose 19 rows are in it.
  assert boxes(2) == {(0, 20, 8, 28)}
  # Tile 4 (16..48 x 16..48): [24, 20, 40, 28] and [29, 32, 45, 47] whole.
  assert boxes(4) == {(8, 4, 24, 12), (13, 16, 29, 31)}
  yell_big = trees.load(trees_dir, [YELL_BIG])[YELL_BIG]['boxes']
  assert [trees.crop_boxes(yell_big, source.window(i)[1])[2] for i in range(3)] == [0, 0, 2]


def reference_tile(image_boxes: np.ndarray, window, height, width, min_kept=0.5):
  """Independent reference by pixel counting: each box rasterised, its pixels in the
  window counted, the clipped box taken from the extent of those pixels."""
  x0, y0, x1, y1 = window
  kept, dropped = set(), 0
  for box in image_boxes.astype(int):
    mask = np.zeros((height, width), bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    inside = mask[y0:y1, x0:x1]
    if not inside.any():
      continue
    if inside.sum() < min_kept * mask.sum():
      dropped += 1
      continue
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    kept.add((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
  return kept, dropped


@pytest.mark.parametrize('tile_size,overlap', [(16, None), (20, 5), (24, 0)])
def test_tiles_match_a_pixel_counting_reference(trees_dir, tile_size, overlap):
  loaded = trees.load(trees_dir)
  source = trees.TreesSource(trees_dir, 'train', tile_size, overlap=overlap)
  stride = tile_size - (tile_size // 2 if overlap is None else overlap)
  total_kept = total_dropped = 0
  covered = {name: np.zeros((h, w), bool) for name, ((w, h), _) in FAKE.items()}
  def windows(length):  # Grid steps to cover `length`, rounded up, plus the first.
    return -(-(length - tile_size) // stride) + 1
  assert len(source) == sum(windows(w) * windows(h) for (w, h), _ in
                            (FAKE[n] for n in trees.SPLITS['train'][0]))
  if (tile_size, overlap) == (16, None):
    assert len(source) == 7 * 5 + 4 * 4 + 3 * 3  # By hand: 64x48, 40x36, 32x32 at stride 8.
  for i in range(len(source)):
    example = source[i]
    assert example['image'].shape == (tile_size, tile_size, 3)
    # Channel 2 tells the source image; the pixels are that image's window.
    k = int(example['image'][0, 0, 2]) // 50
    name = list(FAKE)[k]
    assert name != trees.TEST_IMAGE and (example['image'][..., 2] == 50 * k).all()
    image = loaded[name]['image']
    (width, height), _ = FAKE[name]
    starts = np.argwhere((image[:height - tile_size + 1, :width - tile_size + 1]
                          == example['image'][0, 0]).all(-1))
    matches = [(x0, y0) for y0, x0 in starts.tolist()
               if np.array_equal(image[y0:y0 + tile_size, x0:x0 + tile_size], example['image'])]
    assert len(matches) == 1
    x0, y0 = matches[0]
    assert source.window(i) == (name, (x0, y0, x0 + tile_size, y0 + tile_size))
    covered[name][y0:y0 + tile_size, x0:x0 + tile_size] = True
    kept, dropped = reference_tile(loaded[name]['boxes'], source.window(i)[1], height, width)
    assert {tuple(b) for b in example['boxes'].tolist()} == kept
    assert len(example['boxes']) == len(kept)  # No duplicates hidden by the set.
    assert example['boxes'].dtype == np.float32 and example['classes'].dtype == np.int32
    assert example['classes'].shape == (len(kept),) and not example['classes'].any()
    total_kept, total_dropped = total_kept + len(kept), total_dropped + dropped
  for name in trees.SPLITS['train'][0]:
    assert covered[name].all()  # The flush windows reach the right and bottom edges.
  stats = source.stats()
  assert stats['num_tiles'] == len(source) and stats['num_images'] == 3
  assert (stats['boxes'], stats['dropped']) == (total_kept, total_dropped)
  assert stats['image_boxes'] == sum(len(FAKE[n][1]) for n in trees.SPLITS['train'][0])
  assert total_dropped > 0


def test_test_and_validation_are_whole_held_out_images(trees_dir):
  loaded = trees.load(trees_dir)
  for split, name in (('test', trees.TEST_IMAGE), ('validation', trees.VALIDATION_IMAGE)):
    source = trees.TreesSource(trees_dir, split, 16)
    assert len(source) == 1
    np.testing.assert_array_equal(source[0]['image'], loaded[name]['image'])
    np.testing.assert_array_equal(source[0]['boxes'], loaded[name]['boxes'])
  train = trees.TreesSource(trees_dir, 'train', 16)
  train_images = {int(train[i]['image'][0, 0, 2]) // 50 for i in range(len(train))}
  assert train_images == {0, 1, 2}  # OSBS_029 (image 3) never in training.
  held = trees.TreesSource(trees_dir, 'train_minus_validation', 16)
  assert {int(held[i]['image'][0, 0, 2]) // 50 for i in range(len(held))} == {0, 1}


def test_tiles_are_pure_functions_of_the_index(trees_dir):
  a = trees.TreesSource(trees_dir, 'train', 16)
  b = trees.TreesSource(trees_dir, 'train', 16)
  forward = [a[i] for i in range(len(a))]
  backward = [b[i] for i in reversed(range(len(b)))][::-1]
  for x, y, z in zip(forward, backward, [a[i] for i in range(len(a))]):
    for key in ('image', 'boxes', 'classes'):
      np.testing.assert_array_equal(x[key], y[key])
      np.testing.assert_array_equal(x[key], z[key])
  forward[0]['image'][:] = 0  # A returned tile is a copy: the source is unchanged.
  assert a[0]['image'].any()


def test_bad_splits_and_tile_sizes(trees_dir):
  with pytest.raises(ValueError, match=r"Unknown NEON trees split 'val'.*'train', 'test', "
                     r"'validation', 'train_minus_validation'"):
    trees.TreesSource(trees_dir, 'val', 16)
  with pytest.raises(ValueError, match=r'tile_size 33 does not fit image SOAP_061 of 32x32.*'
                     r'smallest image there is 32'):
    trees.TreesSource(trees_dir, 'train', 33)
  with pytest.raises(ValueError, match=r'overlap 16 must be in \[0, tile_size=16\)'):
    trees.TreesSource(trees_dir, 'train', 16, overlap=16)
  with pytest.raises(IndexError):
    trees.TreesSource(trees_dir, 'test', 16)[1]


# TFDS records.

def test_voc_record_to_pixel_edges_by_hand():
  image = np.zeros((10, 20, 3), np.uint8)  # h = 10, w = 20.
  # TFDS stores VOC (xmin, ymin, xmax, ymax) = (1, 1, 10, 10) as (ymin, xmin, ymax, xmax)
  # / (h, w, h, w): the 1-based pixels 1..10 -> edges [0, 10); and (5, 3, 20, 4).
  record = {'image': image, 'objects': {
      'bbox': np.array([[1 / 10, 1 / 20, 10 / 10, 10 / 20], [3 / 10, 5 / 20, 4 / 10, 20 / 20]],
                       np.float32),
      'label': np.array([14, 0]), 'is_difficult': np.array([False, True])}}
  example = detection_sources.voc_example(record)
  np.testing.assert_allclose(example['boxes'], [[0, 0, 10, 10], [4, 2, 20, 4]], atol=1e-5)
  assert example['boxes'].dtype == np.float32 and example['classes'].dtype == np.int32
  np.testing.assert_array_equal(example['classes'], [14, 0])
  np.testing.assert_array_equal(example['difficult'], [False, True])
  assert detection_sources.VOC_CLASS_NAMES[14] == 'person'
  assert example['image'] is image


def test_coco_record_to_pixel_edges_by_hand():
  image = np.zeros((10, 20, 3), np.uint8)
  # COCO [x, y, width, height] = [1.5, 2, 8, 3] -> TFDS (2/10, 1.5/20, 5/10, 9.5/20).
  record = {'image': image, 'objects': {
      'bbox': np.array([[0.2, 0.075, 0.5, 0.475], [0, 0, 1, 1]], np.float32),
      'label': np.array([0, 79]), 'is_crowd': np.array([False, True]),
      'area': np.array([24, 200]), 'id': np.array([7, 8])}}
  example = detection_sources.coco_example(record)
  np.testing.assert_allclose(example['boxes'], [[1.5, 2, 9.5, 5], [0, 0, 20, 10]], atol=1e-5)
  np.testing.assert_array_equal(example['classes'], [0, 79])
  np.testing.assert_array_equal(example['difficult'], [False, True])
  assert detection_sources.COCO_CLASS_NAMES[79] == 'toothbrush'


def test_crowd_boxes_are_scored_by_cocos_rule_difficult_ones_by_vocs():
  from configs import (yolov3_coco, yolov3_fashion_mnist_scenes,  # pylint: disable=import-outside-toplevel
                       yolov3_voc)
  assert detection_sources.difficult_overlap(yolov3_coco.get_config()) == 'iod'
  assert detection_sources.difficult_overlap(yolov3_voc.get_config()) == 'iou'
  assert detection_sources.difficult_overlap(yolov3_fashion_mnist_scenes.get_config()) == 'iou'


def test_records_without_objects_and_with_mismatched_objects():
  image = np.zeros((4, 6, 3), np.uint8)
  empty = {'bbox': np.zeros((0, 4), np.float32), 'label': np.zeros(0, np.int64)}
  example = detection_sources.voc_example(
      {'image': image, 'objects': {**empty, 'is_difficult': np.zeros(0, bool)}})
  assert example['boxes'].shape == (0, 4) and example['classes'].shape == (0,)
  assert example['difficult'].shape == (0,)
  bad = {'bbox': np.zeros((3, 4), np.float32), 'label': np.zeros(2, np.int64),
         'is_crowd': np.zeros(3, bool)}
  with pytest.raises(ValueError, match=r'coco record: objects bbox \(3, 4\), label \(2,\)'):
    detection_sources.coco_example({'image': image, 'objects': bad})


def test_malformed_boxes_are_passed_on_not_repaired():
  """A box with ymin > ymax stays so; the pipeline's check_boxes rejects it."""
  record = {'image': np.zeros((10, 10, 3), np.uint8), 'objects': {
      'bbox': np.array([[0.8, 0.1, 0.2, 0.5]], np.float32), 'label': np.array([3]),
      'is_crowd': np.array([False])}}
  example = detection_sources.coco_example(record)
  np.testing.assert_allclose(example['boxes'], [[1, 8, 5, 2]], atol=1e-5)
  with pytest.raises(ValueError, match='x1 < x0 or y1 < y0'):
    box_augment.check_boxes(example, 80, 'test example 0')


def _tfds_config(name, **data):
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(source='tfds', name=name, tfds_data_dir='',
                                          num_classes=len(detection_sources.TFDS_DATASETS[name])))
  c.data.update(data)
  return c


def test_voc_under_tfds_random_mock_data():
  """TFDS's random mock records draw the lengths of objects' bbox, label and is_difficult
  independently (5..49 each; with tfds 4.9.10 all five records here disagree) and each
  box coordinate uniformly in [0, 1), so min > max about half the time. Records whose
  lengths disagree are refused with ValueError; malformed boxes are passed on
  (test_malformed_boxes_are_passed_on_not_repaired). Valid records: the
  as_data_source_fn tests."""
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    source = detection_sources.build_source(_tfds_config('voc/2007'), 'test')
    raw = tfds.data_source('voc/2007', split='test')
    assert len(source) == 5
    mismatched = 0
    for i in range(5):
      objects = raw[i]['objects']
      n = {len(objects['bbox']), len(objects['label']), len(objects['is_difficult'])}
      if len(n) > 1:
        mismatched += 1
        with pytest.raises(ValueError, match='need \\[n, 4\\], \\[n\\], \\[n\\]'):
          source[i]  # pylint: disable=pointless-statement
      else:
        example = source[i]
        assert example['boxes'].shape == (n.pop(), 4)
        assert example['classes'].min() >= 0 and example['classes'].max() < 20
        assert example['difficult'].dtype == bool
    assert mismatched > 0  # The refusal was exercised.


def _fake_records(rng, n, height, width, num_classes, flag):
  """Valid TFDS-style records: boxes with min <= max, known classes."""
  records = []
  for _ in range(n):
    k = int(rng.integers(0, 4))
    lo, hi = np.sort(rng.random((2, k, 2)), axis=0)
    bbox = np.concatenate([lo, hi], axis=-1).astype(np.float32)  # (ymin, xmin, ymax, xmax)
    records.append({'image': rng.integers(0, 256, (height, width, 3)).astype(np.uint8),
                    'objects': {'bbox': bbox, 'label': rng.integers(0, num_classes, k),
                                flag: rng.random(k) < 0.5}})
  return records


def test_voc_07_plus_12_trainval_as_one_source_under_mock_data():
  rng = np.random.default_rng(0)
  made = {}

  def as_data_source(builder, split, **kwargs):
    del kwargs
    key = (builder.builder_config.name, split)
    made[key] = _fake_records(rng, {'2007': 2, '2012': 3}[key[0]], 12, 16, 20, 'is_difficult')
    return made[key]

  c = _tfds_config('voc/2007', train_split='voc/2007:train,voc/2012:validation')
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source):
    source = detection_sources.build_source(c, c.data.train_split)
  assert isinstance(source, detection_sources.ConcatSource) and len(source) == 5
  order = made[('2007', 'train')] + made[('2012', 'validation')]
  for i, record in enumerate(order):
    example = source[i]
    assert example['image'] is record['image']
    bbox = record['objects']['bbox'].astype(np.float64)
    expected = np.stack([bbox[:, 1] * 16 - 1, bbox[:, 0] * 12 - 1, bbox[:, 3] * 16,
                         bbox[:, 2] * 12], axis=-1).reshape(-1, 4)
    np.testing.assert_allclose(example['boxes'], expected, atol=1e-5)
    box_augment.check_boxes(example, 20, f'example {i}')  # Valid boxes stay valid.
    np.testing.assert_array_equal(example['difficult'], record['objects']['is_difficult'])
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=lambda *a, **k: []):
    with pytest.raises(ValueError, match="Split 'test' of voc/2007 has no examples"):
      detection_sources.build_source(c, 'test')


def write_coco_metadata(data_dir: str) -> None:
  """What `python -m data.prepare --dataset=coco/2017` leaves besides the ArrayRecord
  shards: coco.py's features (tf.int64 written as np.int64) and a dataset_info.json."""
  directory = os.path.join(data_dir, 'coco', '2017', '1.1.0')
  os.makedirs(directory, exist_ok=True)
  tfds.features.FeaturesDict({
      'image': tfds.features.Image(encoding_format='jpeg'),
      'image/filename': tfds.features.Text(), 'image/id': np.int64,
      'objects': tfds.features.Sequence({
          'id': np.int64, 'area': np.int64, 'bbox': tfds.features.BBoxFeature(),
          'label': tfds.features.ClassLabel(names=detection_sources.COCO_CLASS_NAMES),
          'is_crowd': np.bool_})}).save_config(directory)
  with open(os.path.join(directory, 'dataset_info.json'), 'w', encoding='utf-8') as f:
    json.dump({'name': 'coco', 'version': '1.1.0', 'configName': '2017',
               'fileFormat': 'array_record', 'splits': [
                   {'name': 'validation', 'shardLengths': ['4'], 'numBytes': '1',
                    'filepathTemplate': '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'}]}, f)


def test_coco_reads_from_files_without_tensorflow_under_mock_data(tmp_path):
  """coco.py's own features need TensorFlow; 'coco/2017:1.1.0' is read from the prepared
  files instead (here: their metadata, with mock records)."""
  write_coco_metadata(str(tmp_path))
  records = _fake_records(np.random.default_rng(1), 4, 8, 10, 80, 'is_crowd')
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path),
                              as_data_source_fn=lambda *a, **k: records):
    source = detection_sources.build_source(_tfds_config('coco/2017'), 'validation')
  assert len(source) == 4
  for record, i in zip(records, range(4)):
    example = source[i]
    bbox = record['objects']['bbox'].astype(np.float64).reshape(-1, 4)
    np.testing.assert_allclose(example['boxes'], bbox[:, [1, 0, 3, 2]] * [10, 8, 10, 8],
                               atol=1e-5)
    box_augment.check_boxes(example, 80, f'example {i}')
    np.testing.assert_array_equal(example['difficult'], record['objects']['is_crowd'])
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path)):  # TFDS's random records.
    source = detection_sources.build_source(_tfds_config('coco/2017'), 'validation')
    raw = tfds.data_source('coco/2017:1.1.0', split='validation')
    for i in range(3):
      objects = raw[i]['objects']
      if len({len(objects['bbox']), len(objects['label']), len(objects['is_crowd'])}) > 1:
        with pytest.raises(ValueError, match='coco record'):
          source[i]  # pylint: disable=pointless-statement
      else:
        assert source[i]['classes'].max() < 80


def test_split_strings():
  parse = detection_sources.parse_tfds_split
  assert parse('voc/2007:train+validation, voc/2012:train+validation', 'voc/2007') == [
      ('voc/2007', 'train+validation'), ('voc/2012', 'train+validation')]
  assert parse('train[:50%]', 'voc/2012') == [('voc/2012', 'train[:50%]')]
  assert parse('test,voc/2012:train[10:]', 'voc/2007') == [('voc/2007', 'test'),
                                                           ('voc/2012', 'train[10:]')]
  with pytest.raises(ValueError, match='VOC 2012 test annotations are not public'):
    parse('voc/2012:test', 'voc/2007')
  with pytest.raises(ValueError, match="mixes 'coco/2017' into 'voc/2007'"):
    parse('train,coco/2017:train', 'voc/2007')
  with pytest.raises(ValueError, match=r"Unknown TFDS detection dataset 'voc/2010'.*coco/2017"):
    parse('voc/2010:train', 'voc/2007')
  with pytest.raises(ValueError, match='Empty split'):
    parse('train,', 'voc/2007')
  with pytest.raises(ValueError, match="Unknown TFDS detection dataset 'kitti'"):
    parse('train', 'kitti')


class _Strict:
  """A source that refuses indices outside [0, len) (Python lists wrap negative ones)."""

  def __init__(self, items):
    self.items = items

  def __len__(self):
    return len(self.items)

  def __getitem__(self, index):
    if not 0 <= index < len(self.items):
      raise IndexError(index)
    return self.items[index]


def test_concat_source_indexing():
  source = detection_sources.ConcatSource(
      [_Strict(['a0', 'a1']), _Strict([]), _Strict(['c0', 'c1', 'c2'])])
  assert len(source) == 5
  assert [source[i] for i in range(5)] == ['a0', 'a1', 'c0', 'c1', 'c2']
  with pytest.raises(IndexError):
    source[5]  # pylint: disable=pointless-statement
  with pytest.raises(IndexError):
    source[-1]  # pylint: disable=pointless-statement


# Fashion-MNIST scenes.

def _scenes_config(data_dir, **data):
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(
      source='fashion_mnist_scenes', name='fashion_mnist_scenes', dir=data_dir,
      train_split='train', num_train_scenes=8, num_eval_scenes=30, canvas_size=32,
      min_items=3, max_items=6, item_size=(12, 24), num_classes=10))
  c.data.update(data)
  return c


@pytest.mark.parametrize('min_visible', [0.25, 0.6, 0.0])
def test_scenes_as_detection_examples(tmp_path, min_visible):
  data_dir = make_fashion_mnist_dir(str(tmp_path / 'fm'))
  c = _scenes_config(data_dir, min_visible=min_visible)
  source = detection_sources.build_source(c, 'test')
  generator = scenes.load_split(c, 'test')
  assert len(source) == 30
  left_out = 0
  for i in range(30):
    scene, example = generator.scene(i), source[i]
    keep = (scene['visible'] >= min_visible) & (scene['visible'] > 0)
    np.testing.assert_array_equal(example['image'], scene['image'])
    visible = []  # The extent of each kept item's pixels in the instance map.
    for k in np.flatnonzero(keep):
      ys, xs = np.nonzero(scene['instances'] == k + 1)
      visible.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_array_equal(example['boxes'], np.reshape(visible, (-1, 4)))
    # Visible boxes lie inside the whole items' boxes.
    assert (example['boxes'][:, :2] >= scene['boxes'][keep][:, :2]).all()
    assert (example['boxes'][:, 2:] <= scene['boxes'][keep][:, 2:]).all()
    np.testing.assert_array_equal(example['classes'], scene['classes'][keep])
    assert example['image'].shape == (32, 32, 1) and example['classes'].dtype == np.int32
    box_augment.check_boxes(example, 10, f'scene {i}')
    left_out += int((~keep).sum())
  stats = source.stats()
  assert stats['left_out'] == left_out and stats['num_scenes'] == 30
  assert stats['items'] == sum(len(generator.scene(i)['boxes']) for i in range(30))
  if min_visible > 0:
    assert left_out > 0  # Occlusion happens with up to 6 items on 32x32 canvases.
  else:
    assert left_out == sum(int((generator.scene(i)['visible'] == 0).sum()) for i in range(30))


def test_scene_items_without_foreground_are_left_out():
  instances = np.zeros((8, 8), np.int32)
  instances[1:5, 1:4] = 2  # Item 1 has no visible pixel; item 2 covers rows 1-4, cols 1-3.
  scene = {'image': np.zeros((8, 8, 1), np.uint8), 'classes': np.array([1, 2], np.int32),
           'instances': instances, 'visible': np.array([0, 1], np.float32)}
  example, left_out = detection_sources.scene_example(scene, min_visible=0.0)
  np.testing.assert_array_equal(example['boxes'], [[1, 1, 4, 5]])
  assert example['classes'].tolist() == [2] and left_out == 1


# Config errors and class names.

def test_unknown_sources_and_the_trees_validation_guard(trees_dir):
  with pytest.raises(ValueError, match=r"Unknown data.source 'kitti'.*'fashion_mnist_scenes', "
                     r"'neon_trees', 'tfds'"):
    detection_sources.build_source(_tfds_config('voc/2007', source='kitti'), 'train')
  c = _tfds_config('voc/2007')
  c.data.name = 'voc'
  with pytest.raises(ValueError, match=r"Unknown TFDS detection dataset 'voc'"):
    detection_sources.build_source(c, 'train')
  with pytest.raises(ValueError, match=r"Unknown TFDS detection dataset 'voc'"):
    detection_sources.class_names(c)
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(source='neon_trees', name='neon_trees', dir=trees_dir,
                                          image_size=16, train_split='train', num_classes=1))
  with pytest.raises(ValueError, match="'validation' \\(SOAP_061\\) is part of train_split"):
    detection_sources.build_source(c, 'validation')
  assert len(detection_sources.build_source(c, 'test')) == 1
  c.data.train_split = 'train_minus_validation'
  assert len(detection_sources.build_source(c, 'validation')) == 1
  c.data.tile_size = 24
  train = detection_sources.build_source(c, 'train_minus_validation')
  assert train[0]['image'].shape == (24, 24, 3)


def test_class_names():
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(source='fashion_mnist_scenes', name='scenes'))
  assert detection_sources.class_names(c) == scenes.CLASS_NAMES[1:]
  assert len(detection_sources.class_names(c)) == 10
  c.data.source = 'neon_trees'
  assert detection_sources.class_names(c) == ('tree',)
  for name, n in (('voc/2007', 20), ('voc/2012', 20), ('coco/2017', 80)):
    assert len(detection_sources.class_names(_tfds_config(name))) == n
  assert len(set(detection_sources.COCO_CLASS_NAMES)) == 80
  ids = detection_sources.COCO_CATEGORY_IDS
  assert len(ids) == 80 and list(ids) == sorted(set(ids)) and (ids[0], ids[-1]) == (1, 90)
  # Spot checks against the COCO 2017 instances categories (id: name).
  names = dict(zip(ids, detection_sources.COCO_CLASS_NAMES))
  assert (names[1], names[13], names[27], names[67], names[70], names[90]) == (
      'person', 'stop sign', 'backpack', 'dining table', 'toilet', 'toothbrush')
  with pytest.raises(ValueError, match=r'num_classes=21, but tfds voc/2007 has 20 classes'):
    detection_sources.class_names(_tfds_config('voc/2007', num_classes=21))
  with pytest.raises(ValueError, match='Unknown data.source'):
    detection_sources.class_names(_tfds_config('voc/2007', source='voc'))
