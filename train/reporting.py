"""Run reporting: console lines, TensorBoard scalars (tensorboardX, no TensorFlow) and
<workdir>/metrics.jsonl (one JSON object per logged point: step, split, metrics).

After a resume at step s, the files hold each (step, split) once, as if the run had
never been interrupted: rows the interrupted run logged after s are moved from
metrics.jsonl to metrics_superseded.jsonl (kept, not deleted), and TensorBoard is
told to hide its events from step s + 1 on (`purge_step`, a SessionLog START event).

Only process 0 writes; the other processes get a writer that does nothing.
"""

import json
import os
import time

import jax
from absl import logging


def format_duration(seconds: float) -> str:
  """3725 -> '1h02m05s', 65 -> '1m05s', 5.2 -> '5s'."""
  seconds = int(round(max(seconds, 0)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


class MetricWriter:
  """Writes scalar metrics to the console, TensorBoard and metrics.jsonl.

  Args:
    workdir: the run directory.
    start_step: the step the run starts (resumes) from; rows of a previous run after
      it are superseded (module docstring).
    tensorboard: also write TensorBoard event files.
  """

  def __init__(self, workdir: str, start_step: int = 0, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._jsonl = self._tb = None
    self._logged = set()  # (step, split) already in metrics.jsonl.
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'metrics.jsonl')
    self._logged = _supersede_rows_after(path, start_step)
    self._jsonl = open(path, 'a', encoding='utf-8')
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                               purge_step=start_step + 1)

  def write(self, step: int, split: str, metrics: dict, console_suffix: str = '') -> None:
    """Records `metrics` (name -> float) at `step` for `split` ('train' or 'eval').
    A (step, split) already recorded is shown on the console only."""
    if not self.active:
      return
    shown = ' | '.join(_format(k, v) for k, v in metrics.items())
    logging.info('[%s] step %d | %s%s', split, step, shown, console_suffix)
    if (int(step), split) in self._logged:
      return
    self._logged.add((int(step), split))
    record = {'step': int(step), 'split': split, 'time': time.time(),
              **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in metrics.items():
        self._tb.add_scalar(f'{split}/{name}', float(value), int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _supersede_rows_after(path: str, step: int) -> set:
  """Moves the rows of metrics.jsonl at `path` with a step after `step` to
  metrics_superseded.jsonl next to it; returns the (step, split) pairs kept."""
  if not os.path.exists(path):
    return set()
  with open(path, encoding='utf-8') as f:
    rows = [json.loads(line) for line in f if line.strip()]
  kept = [r for r in rows if r['step'] <= step]
  superseded = [r for r in rows if r['step'] > step]
  if superseded:
    logging.warning('metrics.jsonl: %d rows after step %d were logged by an interrupted '
                    'run; moved to metrics_superseded.jsonl.', len(superseded), step)
    with open(os.path.join(os.path.dirname(path), 'metrics_superseded.jsonl'), 'a',
              encoding='utf-8') as f:
      f.writelines(json.dumps(r) + '\n' for r in superseded)
    write_atomically(path, ''.join(json.dumps(r) + '\n' for r in kept))
  return {(r['step'], r['split']) for r in kept}


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through `path`.tmp and a rename: a crash leaves the old file
  or the new one whole, never a cut one (a restart reads these files)."""
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def _format(name: str, value: float) -> str:
  if name in ('learning_rate',):
    return f'{name} {value:.3e}'
  if name.endswith('per_sec'):
    return f'{name} {value:.1f}'
  return f'{name} {value:.4f}'


def parameter_table(total: int, table: list[tuple[str, int]]) -> str:
  """A printable per-module parameter table."""
  width = max([len(name) for name, _ in table] + [6])
  lines = [f'{"module":<{width}}  {"params":>12}']
  lines += [f'{name:<{width}}  {count:>12,}' for name, count in table]
  lines.append(f'{"total":<{width}}  {total:>12,}')
  return '\n'.join(lines)


class _LibraryInfoFilter:
  """Drops INFO records emitted from inside library packages (Orbax logs every save
  in detail); warnings and errors always pass."""
  _NOISY = ('/orbax/', '/grain/', '/jax/', '/jaxlib/', '/tensorflow_datasets/', '/etils/')

  def filter(self, record) -> bool:
    return record.levelno > 20 or not any(p in record.pathname for p in self._NOISY)


def quiet_library_logs() -> None:
  """Keeps the console to this project's INFO lines plus everyone's warnings."""
  import logging as std_logging  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.get_absl_handler().addFilter(_LibraryInfoFilter())
  std_logging.getLogger('absl').addFilter(_LibraryInfoFilter())
