r"""Learning curves of one or more runs, from their <workdir>/metrics.jsonl, as one image.

  python -m train.plot runs/A runs/B ... [--out=curves.png] [--x=steps|epochs] \
      [--metrics=loss,top1,learning_rate]

One subplot per metric; each run one colour (the legend names it by its directory's
basename); train rows solid, validation rows dashed, the test result (one row, at the
selected checkpoint's step) a single star. metrics.jsonl is written by
train.reporting.MetricWriter: one JSON object per logged point, {'step', 'split'
('train' | 'validation' | 'test'), 'time', metric: float, ...}; train rows also carry
'epoch' (step * batch_size / num_train_examples).

Default metrics (--metrics empty): every metric some run logged with a finite value, in
the order 'loss', the task's metrics (top1, top5, miou, AP, wer, bleu, ...: first
appearance), 'learning_rate' last; left out are bookkeeping (`BOOKKEEPING`:
num_examples, examples_per_sec), the optimiser diagnostics `DIAGNOSTICS` (grad_norm,
param_norm) and per-class breakdowns (names with a '/', e.g. 'iou/cat', 'AP50/person'),
which --metrics can ask for; 'step', 'split', 'time' and 'epoch' are not metrics.

--x=epochs puts train rows at their 'epoch' and validation/test rows at the epoch of
the train row of the same step (interpolated in step if a step has no train row).
Runs from before 'epoch' was logged have none: use --x=steps for them.

matplotlib is imported only when a figure is drawn (the Agg canvas, no pyplot: no
display, no global backend change), so nothing else in the codebase needs it.
"""

import json
import math
import os
from typing import Callable, Sequence

import numpy as np
from absl import app, flags

NOT_METRICS = ('step', 'split', 'time', 'epoch')
BOOKKEEPING = ('num_examples', 'examples_per_sec')
DIAGNOSTICS = ('grad_norm', 'param_norm')
X_CHOICES = ('steps', 'epochs')
SPLITS = ('train', 'validation', 'test')
_STYLE = {'train': dict(linestyle='-', linewidth=1.5),
          'validation': dict(linestyle='--', linewidth=1.5, marker='o', markersize=3),
          'test': dict(linestyle='none', marker='*', markersize=11)}


def read_run(run_dir: str) -> list[dict]:
  """The rows of <run_dir>/metrics.jsonl, in file order.

  Raises:
    FileNotFoundError: `run_dir` or its metrics.jsonl does not exist (named).
    ValueError: a line is not JSON, lacks 'step' / 'split', or the file has no rows. A
      last line without its newline that is not JSON is a row being written by a live
      run: skipped.
  """
  path = os.path.join(run_dir, 'metrics.jsonl')
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f'Run directory {run_dir!r} does not exist')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{run_dir!r} has no metrics.jsonl ({os.path.abspath(path)} is '
                            'missing): not a run directory, or the run has not logged yet')
  rows = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        if not line.endswith('\n'):  # The last line, still being written.
          break
        raise ValueError(f'{path}:{number} is not valid JSON ({e})') from None
      if 'step' not in row or 'split' not in row:
        raise ValueError(f"{path}:{number} has no 'step' or 'split': {line.strip()[:200]}")
      rows.append(row)
  if not rows:
    raise ValueError(f'{path} has no rows yet')
  return rows


def metric_names(rows: Sequence[dict]) -> list[str]:
  """Every metric in `rows` (fields other than `NOT_METRICS`), in order of first
  appearance."""
  names = {}
  for row in rows:
    for name in row:
      if name not in NOT_METRICS:
        names.setdefault(name, None)
  return list(names)


def default_metrics(runs: dict[str, list[dict]]) -> list[str]:
  """The metrics plotted when none are asked for (module docstring): 'loss', the task's
  metrics, 'learning_rate'; no diagnostics, per-class values or all-NaN metrics."""
  names = []
  for rows in runs.values():
    names += [n for n in metric_names(rows) if n not in names]
  finite = {n for rows in runs.values() for row in rows for n, v in row.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}
  chosen = [n for n in names if n in finite and n not in BOOKKEEPING + DIAGNOSTICS
            and '/' not in n and n != 'learning_rate']
  chosen.sort(key=lambda n: n != 'loss')  # Stable: 'loss' first, the rest as they came.
  return chosen + (['learning_rate'] if 'learning_rate' in finite else [])


def run_labels(run_dirs: Sequence[str]) -> list[str]:
  """Legend names: the directories' basenames, or the paths as given when two runs
  share a basename."""
  names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in run_dirs]


def epoch_function(name: str, rows: Sequence[dict]) -> Callable:
  """step array -> epoch array for run `name`, from its train rows' 'epoch': linear in
  the step between them (from step 0 at epoch 0), beyond the last at its epoch / step
  ratio. A validation or test row thus gets the epoch of the train row of its step.
  Raises ValueError when the run has no 'epoch' values (suggesting --x=steps)."""
  known = sorted({(r['step'], float(r['epoch'])) for r in rows
                  if r['split'] == 'train' and 'epoch' in r})
  if not known:
    raise ValueError(f"Run {name!r} has no 'epoch' values in its metrics.jsonl (it was "
                     "logged before train rows carried 'epoch'); plot it with --x=steps")
  steps = np.asarray([0] + [s for s, _ in known], np.float64)
  epochs = np.asarray([0.0] + [e for _, e in known], np.float64)
  last_ratio = epochs[-1] / steps[-1] if steps[-1] > 0 else 0.0

  def epoch(step):
    step = np.asarray(step, np.float64)
    return np.where(step <= steps[-1], np.interp(step, steps, epochs), step * last_ratio)
  return epoch


def curves(rows: Sequence[dict], metric: str, x_of: Callable = None) -> dict:
  """The points of `metric` in one run's `rows`, per split: {split: (x [n] float64,
  values [n] float64)}, by step (the last row of a step wins), NaN values kept
  (matplotlib leaves gaps); splits without the metric are left out.

  x_of: step array -> x array (an `epoch_function`); None: the steps.
  """
  out = {}
  for split in SPLITS:
    points = {r['step']: float(r[metric]) for r in rows
              if r['split'] == split and isinstance(r.get(metric), (int, float))}
    if points:
      steps = np.asarray(sorted(points), np.float64)
      values = np.asarray([points[s] for s in sorted(points)], np.float64)
      out[split] = (steps if x_of is None else np.asarray(x_of(steps), np.float64), values)
  return out


def plot(run_dirs: Sequence[str], out: str, x: str = 'steps',
         metrics: Sequence[str] | None = None, title: str = '') -> list[str]:
  """Draws the learning curves of the runs in `run_dirs` into the image file `out` (format
  from its extension: .png, .pdf, .svg, ...). Returns the metrics plotted, in order.

  Args:
    run_dirs: run directories (each with a metrics.jsonl).
    out: the image file to write (its directory is created).
    x: 'steps' or 'epochs' (module docstring).
    metrics: metric names, one subplot each; None or empty: `default_metrics`.
    title: the figure's title ('' for none).
  Raises:
    FileNotFoundError: a directory or its metrics.jsonl is missing (named).
    ValueError: no run directories, an unknown `x`, a metric no run logged (the
      available ones listed), --x=epochs for a run without 'epoch' values.
  """
  if not run_dirs:
    raise ValueError('No run directories given; e.g. python -m train.plot runs/A runs/B')
  if x not in X_CHOICES:
    raise ValueError(f'x={x!r} is not valid; choose one of {list(X_CHOICES)}')
  labels = run_labels(run_dirs)
  runs = {label: read_run(d) for label, d in zip(labels, run_dirs)}
  available = []
  for rows in runs.values():
    available += [n for n in metric_names(rows) if n not in available]
  metrics = list(metrics or default_metrics(runs))
  unknown = [m for m in metrics if m not in available]
  if unknown:
    raise ValueError(f'Unknown metric(s) {unknown}: no run logged them. Available: '
                     f'{available}')
  if not metrics:
    raise ValueError(f'No metric with a finite value to plot; available: {available}')
  to_x = ({label: epoch_function(label, rows) for label, rows in runs.items()}
          if x == 'epochs' else dict.fromkeys(runs))
  _draw(runs, to_x, metrics, out, x, title)
  return metrics


def _draw(runs, to_x, metrics, out, x, title):
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel

  cols = min(3, len(metrics))
  rows_n = math.ceil(len(metrics) / cols)
  fig = Figure(figsize=(4.8 * cols, 3.4 * rows_n + 0.6), layout='constrained')
  axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
  colours = [f'C{i % 10}' for i in range(len(runs))]
  splits_seen = set()
  for ax, metric in zip(axes, metrics):
    for colour, (label, rows) in zip(colours, runs.items()):
      for split, (xs, values) in curves(rows, metric, to_x[label]).items():
        splits_seen.add(split)
        ax.plot(xs, values, color=colour, **_STYLE[split])
    ax.set_title(metric)
    ax.set_xlabel(x)
    ax.grid(True, alpha=0.3)
    if metric == 'learning_rate':
      ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 3))
  for ax in axes[len(metrics):]:
    ax.set_visible(False)
  handles = [Line2D([], [], color=c, linewidth=2.5, label=label)
             for c, label in zip(colours, runs)]
  handles += [Line2D([], [], color='0.3', label=split, **_STYLE[split])
              for split in SPLITS if split in splits_seen]
  fig.legend(handles=handles, loc='outside lower center', ncols=min(len(handles), 6),
             frameon=False)
  if title:
    fig.suptitle(title)
  directory = os.path.dirname(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  fig.savefig(out, dpi=110)


def _define_flags() -> None:
  """The command's flags; defined only when run as a script, so that importing this
  module next to another command (train.predict, launch.py) defines nothing."""
  flags.DEFINE_string('out', 'curves.png', 'Image file to write (.png, .pdf, .svg, ...).')
  flags.DEFINE_enum('x', 'steps', list(X_CHOICES), 'Horizontal axis.')
  flags.DEFINE_string('metrics', '', 'Comma-separated metric names (default: loss, the '
                      "task's metrics and learning_rate; see the module docstring).")
  flags.DEFINE_string('title', '', 'Figure title.')


def main(argv):
  run_dirs = argv[1:]
  if not run_dirs:
    raise app.UsageError('Give run directories: python -m train.plot runs/A runs/B '
                         '--out=curves.png')
  values = flags.FLAGS
  metrics = [m.strip() for m in values.metrics.split(',') if m.strip()]
  plotted = plot(run_dirs, values.out, values.x, metrics, values.title)
  print(f'{values.out}: {", ".join(plotted)} of {len(run_dirs)} run(s) against {values.x}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
