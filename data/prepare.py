"""Prepares a TFDS dataset in ArrayRecord format (needs network and tensorflow-cpu).

  pip install tensorflow-cpu
  python -m data.prepare --dataset=cifar10 [--data_dir=~/tensorflow_datasets]

Training itself never imports TensorFlow; only this one-off preparation does.
"""

from absl import app, flags

_DATASET = flags.DEFINE_string('dataset', 'cifar10', 'TFDS name, e.g. cifar10, cifar100.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default ~/tensorflow_datasets).')


def main(argv):
  del argv
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
