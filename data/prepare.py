"""Prepares a dataset once, before training (needs network access).

TFDS datasets, in ArrayRecord format (needs tensorflow-cpu):

  pip install tensorflow-cpu
  python -m data.prepare --dataset=cifar10 [--data_dir=~/tensorflow_datasets]

Oxford-IIIT Pet is prepared like the other TFDS datasets: `--dataset=oxford_iiit_pet`.

The StarDist nuclei image and mask (data/nuclei.py; no TensorFlow, no stardist install):
two files are taken out of the stardist==0.9.2 wheel, which is pip-downloaded unless
--wheel names one already downloaded:

  python -m data.prepare --dataset=stardist_nuclei [--data_dir=~/.cache/jax_classics/stardist_nuclei] [--wheel=PATH.whl]

Training itself never imports TensorFlow; only this one-off TFDS preparation does.
"""

from absl import app, flags

_DATASET = flags.DEFINE_string('dataset', 'cifar10',
                               'TFDS name (e.g. cifar10, cifar100, oxford_iiit_pet) or '
                               'stardist_nuclei.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'TFDS data dir (default ~/tensorflow_datasets); for '
                                'stardist_nuclei the folder for its two files (default '
                                'nuclei.DEFAULT_DIR).')
_WHEEL = flags.DEFINE_string('wheel', None,
                             'stardist_nuclei only: a downloaded stardist-0.9.2 wheel to '
                             'read (default: pip download it).')


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


def main(argv):
  del argv
  if _DATASET.value == 'stardist_nuclei':
    prepare_nuclei()
    return
  if _WHEEL.value:
    raise SystemExit('--wheel is only used with --dataset=stardist_nuclei.')
  try:
    import tensorflow  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError as e:
    raise SystemExit('Preparing a TFDS dataset needs TensorFlow: `pip install tensorflow-cpu`, '
                     'then run this command again.') from e
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(_DATASET.value, data_dir=_DATA_DIR.value)
  builder.download_and_prepare(file_format='array_record')
  print(f'Prepared {_DATASET.value} in {builder.data_dir}')


if __name__ == '__main__':
  app.run(main)
