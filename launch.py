r"""Trains a model described by a config file, or evaluates a run's checkpoint.

  python launch.py --config=configs/vit_fashion_mnist.py [--workdir=runs/NAME] \
      [--config.batch_size=256 --config.learning_rate=3e-3 ...]
  python launch.py --config=configs/vit_fashion_mnist.py --mode=eval \
      [--checkpoint=best|last|STEP] [--split=test|validation] [--workdir=runs/NAME]

Any config field can be overridden with --config.FIELD=VALUE. Runs resume from the
checkpoints in --workdir. --mode=eval evaluates one checkpoint on the whole --split
eval set (any dataset split via --config.data.test_split=...) and writes
<workdir>/eval/<split>_step<N>.json; it creates, moves or changes nothing else.
Multi-process (multi-host) jobs are detected from srun / mpirun / JAX coordinator
variables (train.parallel.launcher_detected), or asked for with --coordinator_address.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default runs/<config name>).')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train: train (resuming) then test; eval: evaluate one checkpoint.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "--mode=eval: 'best' (on validation; "
                                  "the last one without validation metrics), 'last' or a step.")
_SPLIT = flags.DEFINE_enum('split', 'test', ['validation', 'test'], '--mode=eval: the eval set.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0; starts a multi-process job.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from train import parallel, reporting, restore, run_config, trainer
  reporting.quiet_library_logs()
  given = [f'--{name}' for name in ('checkpoint', 'split') if flags.FLAGS[name].present]
  if _MODE.value == 'train' and given:
    raise app.UsageError(f'{" and ".join(given)} only apply with --mode=eval (training '
                         'resumes from the newest checkpoint); add --mode=eval to evaluate')
  workdir = run_config.workdir_of(_WORKDIR.value, flags.FLAGS['config'].config_filename)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif parallel.launcher_detected(os.environ):
    jax.distributed.initialize()
  logging.info('Process %d/%d, %d devices: %s; workdir %s', jax.process_index(),
               jax.process_count(), jax.device_count(), jax.devices()[0].platform, workdir)
  if _MODE.value == 'eval':
    restore.evaluate_checkpoint(_CONFIG.value, workdir, _CHECKPOINT.value, _SPLIT.value)
  else:
    trainer.run(_CONFIG.value, workdir)


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  from train import run_config  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=run_config.parse_flags)
