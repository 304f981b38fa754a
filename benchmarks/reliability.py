r"""The reliability table: faults injected into real runs of the offline default (the
ViT on Fashion-MNIST, shortened), what happened, and whether each run ended with the
parameters of an uninterrupted run.

  python -m benchmarks.reliability [--steps=300] [--root=/tmp/reliability]

Every run is `python launch.py --config=configs/vit_fashion_mnist.py` in a subprocess
(1 CPU device, or two processes joined by jax.distributed), as a user starts it; the
transient-I/O case runs train.trainer.run in this process to inject the errors.
Prints a markdown table.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

# Imported before anything here computes with JAX: the `train` package sets the XLA
# flags launch.py runs with, so that the in-process run compiles as the subprocesses
# do (otherwise its convolutions go to YNNPACK and its parameters differ in the last
# bits from an uninterrupted launch.py run).
import train  # noqa: F401  pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEPS = flags.DEFINE_integer('steps', 300, 'Train steps of every run.')
_DIR = flags.DEFINE_string('root', '/tmp/reliability', 'Where the runs go (emptied first).')
_CHECKPOINT_EVERY = 50


def _args(workdir: str, steps: int) -> list:
  return [f'--workdir={workdir}', f'--config.num_train_steps={steps}',
          f'--config.checkpoint_every_steps={_CHECKPOINT_EVERY}', '--config.log_every_steps=25']


def _start(workdir: str, steps: int, *extra, processes: int = 1, port: int = 0) -> list:
  """launch.py as `processes` processes, output to <workdir>.<i>.log."""
  command = [sys.executable, 'launch.py', '--config=configs/vit_fashion_mnist.py',
             *_args(workdir, steps), *extra]
  if processes > 1:
    command += [f'--coordinator_address=localhost:{port}', f'--num_processes={processes}']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  procs = []
  for i in range(processes):
    with open(f'{workdir}.{i}.log', 'w', encoding='utf-8') as log:
      procs.append(subprocess.Popen(command + ([f'--process_id={i}'] if processes > 1 else []),
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    procs[-1].log_path = log.name
  return procs


def _wait(procs) -> tuple[list, list]:
  """Exit codes and outputs of `procs`."""
  codes = [p.wait() for p in procs]
  outputs = []
  for p in procs:
    with open(p.log_path, encoding='utf-8') as f:
      outputs.append(f.read())
  return codes, outputs


def _run(workdir, steps, *extra, **kwargs):
  return _wait(_start(workdir, steps, *extra, **kwargs))


def _params(workdir: str, step: int) -> dict:
  """The checkpointed params at `step`, on this process's first device (whatever the
  number of processes that wrote them)."""
  import jax  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, target)['params']


def _max_difference(a: str, b: str, step: int) -> float:
  import jax  # pylint: disable=import-outside-toplevel
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                       _params(a, step), _params(b, step))
  return max(jax.tree.leaves(diffs))


def _rows_once(workdir: str) -> bool:
  """metrics.jsonl holds each (step, split) once, steps ascending within each split."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  keys = [(r['step'], r['split']) for r in rows]
  ascending = all(np.all(np.diff([r['step'] for r in rows if r['split'] == s]) > 0)
                  for s in {r['split'] for r in rows})
  return len(set(keys)) == len(keys) and ascending


def _wait_for(predicate, timeout=600):
  start = time.time()
  while not predicate():
    if time.time() - start > timeout:
      raise TimeoutError
    time.sleep(0.05)


def _stopped_run(workdir: str, steps: int, sig, after_checkpoints: int, **kwargs) -> list:
  """Starts a run, sends `sig` to its last process once `after_checkpoints` checkpoints
  exist; returns the exit codes and outputs."""
  procs = _start(workdir, steps, **kwargs)
  directory = os.path.join(workdir, 'checkpoints')
  _wait_for(lambda: os.path.isdir(directory) and len(
      [n for n in os.listdir(directory) if n.isdigit()]) >= after_checkpoints)
  procs[-1].send_signal(sig)
  return _wait(procs)


def _resumed(output: str) -> str:
  """The step a run's log says it resumed from ('none' if it started afresh)."""
  steps = re.findall(r'Resumed from checkpoint at step (\d+)', output)
  return steps[0] if steps else 'none'


def _latest(workdir: str) -> int:
  return max(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def main(argv):
  del argv
  steps, root = _STEPS.value, _DIR.value
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  path = lambda name: os.path.join(root, name)
  table = []
  def row(fault, happened, workdir=None, reference='reference'):
    equal = '-'
    if workdir is not None:
      difference = _max_difference(path(reference), workdir, steps)
      equal = 'yes (bitwise)' if difference == 0 else f'no (max |diff| {difference:.2e})'
      happened += '; metrics.jsonl: each step once' if _rows_once(workdir) else \
          '; metrics.jsonl: REPEATED steps'
    table.append((fault, happened, equal))
    print(table[-1], flush=True)

  start = time.time()
  codes, _ = _run(path('reference'), steps)
  assert codes == [0], 'the reference run failed'
  print(f'reference run: {time.time() - start:.0f}s', flush=True)

  # SIGTERM (preemption) at an arbitrary step, then restart.
  codes, outputs = _stopped_run(path('sigterm'), steps, signal.SIGTERM, 2)
  stop = re.findall(r'Preempted at step (\d+)', outputs[0])
  shutil.copytree(path('sigterm'), path('stopped'))  # The base of the faults below.
  _, outputs = _run(path('sigterm'), steps)
  row('SIGTERM mid-run, restart', f'exit {codes[0]}, saved at step {stop[0]}; resumed from '
      f'step {_resumed(outputs[0])}', path('sigterm'))

  # SIGKILL while asynchronous saves are in flight, then restart.
  codes, _ = _stopped_run(path('sigkill'), steps, signal.SIGKILL, 2)
  complete = _latest(path('sigkill'))
  interrupted = [n for n in os.listdir(path('sigkill/checkpoints')) if not n.isdigit()]
  _, outputs = _run(path('sigkill'), steps)
  row('SIGKILL mid-run (async saves), restart',
      f'killed (exit {codes[0]}); last complete checkpoint {complete}, interrupted saves '
      f'{interrupted}; resumed from step {_resumed(outputs[0])}', path('sigkill'))

  # The latest checkpoint truncated / left as an interrupted save.
  latest = _latest(path('stopped'))
  for name, fault, damage in (
      ('truncated', 'latest checkpoint truncated (manifest cut in half)',
       lambda d: os.truncate(os.path.join(d, 'state', 'manifest.ocdbt'),
                             os.path.getsize(os.path.join(d, 'state', 'manifest.ocdbt')) // 2)),
      ('interrupted', 'latest checkpoint an interrupted save (*.orbax-checkpoint-tmp-*)',
       lambda d: os.rename(d, d + '.orbax-checkpoint-tmp-0'))):
    workdir = path(name)
    shutil.copytree(path('stopped'), workdir)
    damage(os.path.join(workdir, 'checkpoints', str(latest)))
    codes, outputs = _run(workdir, steps)
    warned = re.search(rf'Checkpoint (at step )?{latest}\S* is (unreadable|an interrupted save)',
                       outputs[0])
    kept = os.listdir(os.path.join(workdir, 'checkpoints_corrupt'))
    row(fault, f'exit {codes[0]}; warning naming step {latest}: {bool(warned)}; kept in '
        f'checkpoints_corrupt/: {kept}; resumed from step {_resumed(outputs[0])}', workdir)

  # A changed model width at restart.
  workdir = path('width')
  shutil.copytree(path('stopped'), workdir)
  listing = lambda: sorted((os.path.relpath(os.path.join(r, f), workdir),
                            os.path.getsize(os.path.join(r, f)))
                           for r, _, fs in os.walk(workdir) for f in fs if '.log' not in f)
  before = listing()
  codes, outputs = _run(workdir, steps, '--config.model.hidden_size=96')
  named = 'CheckpointMismatchError' in outputs[0] and 'model.hidden_size: 64 -> 96' in outputs[0]
  row('model width changed at restart (64 -> 96)',
      f'exit {codes[0]} before training; error names leaves and field: {named}; '
      f'files identical: {listing() == before}')

  # Transient I/O errors while reading the checkpoint (in-process injection).
  workdir = path('eio')
  shutil.copytree(path('stopped'), workdir)
  row('EIO twice while reading the latest checkpoint, restart',
      _transient_run(workdir, steps), workdir)

  # Two processes; SIGTERM reaches only one of them.
  port = 23456
  _run(path('reference2'), steps, processes=2, port=port)
  codes, outputs = _stopped_run(path('two'), steps, signal.SIGTERM, 2, processes=2,
                                port=port + 1)
  stops = [re.findall(r'Preempted at step (\d+)', o) for o in outputs]
  _, outputs = _run(path('two'), steps, processes=2, port=port + 2)
  row('2 processes, SIGTERM to process 1 only, restart',
      f'exits {codes}; both saved and stopped at steps {stops}; resumed from steps '
      f'{[_resumed(o) for o in outputs]}', path('two'), 'reference2')

  print('\n| fault | what happened | final parameters equal the uninterrupted run |')
  print('|---|---|---|')
  for fault, happened, equal in table:
    print(f'| {fault} | {happened} | {equal} |')


def _transient_run(workdir: str, steps: int) -> str:
  """Resumes `workdir` in this process with two EIO errors injected into the read."""
  os.environ['JAX_PLATFORMS'] = 'cpu'
  from configs import vit_fashion_mnist  # pylint: disable=import-outside-toplevel
  from train import checkpoint, trainer  # pylint: disable=import-outside-toplevel
  config = vit_fashion_mnist.get_config()
  config.num_train_steps, config.checkpoint_every_steps = steps, _CHECKPOINT_EVERY
  config.log_every_steps = 25
  read, failures = checkpoint.Checkpointer._restore, []
  def flaky(self, *args, **kwargs):
    if len(failures) < 2:
      failures.append(1)
      raise OSError(errno.EIO, 'Input/output error')
    return read(self, *args, **kwargs)
  checkpoint.Checkpointer._restore = flaky
  try:
    metrics = trainer.run(config, workdir)
  finally:
    checkpoint.Checkpointer._restore = read
  moved = os.path.exists(os.path.join(workdir, 'checkpoints_corrupt'))
  return (f'{len(failures)} failed reads retried; nothing moved: {not moved}; ended at step '
          f'{metrics["step"]}')


if __name__ == '__main__':
  app.run(main)
