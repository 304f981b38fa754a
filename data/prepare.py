"""Prepares a dataset once, before training (needs network access).

TFDS datasets, in ArrayRecord format (needs tensorflow-cpu):

  pip install tensorflow-cpu
  python -m data.prepare --dataset=cifar10 [--data_dir=~/tensorflow_datasets]

Oxford-IIIT Pet is prepared like the other TFDS datasets: `--dataset=oxford_iiit_pet`.

The StarDist nuclei image and mask (data/nuclei.py; no TensorFlow, no stardist install):
two files are taken out of the stardist==0.9.2 wheel, which is pip-downloaded unless
--wheel names one already downloaded:

  python -m data.prepare --dataset=stardist_nuclei [--data_dir=~/.cache/jax_classics/stardist_nuclei] [--wheel=PATH.whl]

The NEON tree-crown images (data/trees.py; no TensorFlow, no deepforest install): four
annotated images and their Pascal VOC XML files are taken out of the deepforest==2.1.0
wheel, pip-downloaded unless --wheel names one already downloaded:

  python -m data.prepare --dataset=neon_trees [--data_dir=~/.cache/jax_classics/neon_trees] [--wheel=PATH.whl]

Detection datasets from TFDS: --dataset=voc/2007, voc/2012, coco/2017
(data/detection_sources.py).

Training itself never imports TensorFlow; only this one-off TFDS preparation does.
"""

from absl import app, flags

_DATASET = flags.DEFINE_string('dataset', 'cifar10',
                               'TFDS name (e.g. cifar10, cifar100, oxford_iiit_pet, '
                               'voc/2007, coco/2017), stardist_nuclei or neon_trees.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'TFDS data dir (default ~/tensorflow_datasets); for '
                                'stardist_nuclei the folder for its two files (default '
                                'nuclei.DEFAULT_DIR); for neon_trees the folder for its '
                                'images and XML files (default trees.DEFAULT_DIR).')
_WHEEL = flags.DEFINE_string('wheel', None,
                             'stardist_nuclei / neon_trees only: a downloaded '
                             'stardist-0.9.2 / deepforest-2.1.0 wheel to read (default: pip '
                             'download it).')


def prepare_nuclei():
  from data import nuclei  # pylint: disable=import-outside-toplevel
  directory = nuclei.prepare(_DATA_DIR.value or nuclei.DEFAULT_DIR, _WHEEL.value)
  _, instances = nuclei.load(directory)
  print(f'Prepared stardist_nuclei in {directory}: image {instances.shape}, '
        f'{len(set(instances[instances > 0].tolist()))} nuclei')
  for split in nuclei.SPLITS:
    stats = nuclei.split_stats(instances, split)
    try:
      tiles = f'{len(nuclei.NucleiSource(directory, split, 64))} tiles of 64x64'
    except ValueError:
      tiles = 'tile_size 64 does not fit'
    print(f'  {split}: columns {stats["columns"]}, {stats["num_nuclei"]} '
          f'nuclei, {stats["nucleus_pixels"]} of {stats["num_pixels"]} pixels nucleus '
          f'({stats["nucleus_fraction"]:.4f}), {tiles}')


def prepare_trees():
  from data import trees  # pylint: disable=import-outside-toplevel
  directory = trees.prepare(_DATA_DIR.value or trees.DEFAULT_DIR, _WHEEL.value)
  print(f'Prepared neon_trees in {directory}:')
  for name, example in trees.load(directory).items():
    height, width = example['image'].shape[:2]
    print(f'  {name}: {width}x{height} pixels, {len(example["boxes"])} boxes')
  for tile_size in (256, 320, 400):
    for split, (_, tiled) in trees.SPLITS.items():
      if tiled:
        stats = trees.TreesSource(directory, split, tile_size).stats()
        print(f'  tile_size {tile_size}, {split}: {stats["num_tiles"]} tiles, '
              f'{stats["boxes"]} boxes, {stats["dropped"]} cut below half dropped, '
              f'{stats["lost"]} boxes in no tile, {stats["empty_tiles"]} empty tiles')
  for split, (names, tiled) in trees.SPLITS.items():
    if not tiled:
      print(f'  {split}: whole image(s) {", ".join(names)}')


def main(argv):
  del argv
  if _DATASET.value == 'stardist_nuclei':
    prepare_nuclei()
    return
  if _DATASET.value == 'neon_trees':
    prepare_trees()
    return
  if _WHEEL.value:
    raise SystemExit('--wheel is only used with --dataset=stardist_nuclei or neon_trees.')
  try:
    import tensorflow  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError as e:
    raise SystemExit(f'--dataset={_DATASET.value!r} is not one of the offline datasets '
                     '(stardist_nuclei, neon_trees), so it is prepared through TFDS, which '
                     'needs TensorFlow: `pip install tensorflow-cpu`, then run this command '
                     'again (TFDS then checks the name).') from e
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(_DATASET.value, data_dir=_DATA_DIR.value)
  builder.download_and_prepare(file_format='array_record')
  print(f'Prepared {_DATASET.value} in {builder.data_dir}')


if __name__ == '__main__':
  app.run(main)
