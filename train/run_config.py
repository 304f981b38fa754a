"""The run's resolved config in its workdir, and what changed at a restart; and the
entry points' checks of their command line (`parse_flags`) and of the directories they
are given (`workdir_of`, `require_new_directory`).

<workdir>/config.json holds the config of the latest start that passed the checkpoint
check (written at the first start); each restart with changed fields appends
{time, step, changes: {field: [old, new]}} to <workdir>/config_changes.jsonl.
Only process 0 writes.
"""

import json
import os
import sys
import time

import jax
from absl import app

from train import reporting

# Fields that give the training data position a checkpoint saves its meaning: Grain
# saves the number of batches read from the (seeded) shuffled order, per worker
# process, so under another value a resumed run would skip or repeat examples. A
# restart that changes one of them is refused (trainer.run).
DATA_POSITION_FIELDS = ('batch_size', 'seed', 'data.train_split', 'data.num_workers')


def parse_flags(argv: list[str]) -> list[str]:
  """The flags parser of the entry points with a --config flag: `app.run(main,
  flags_parser=run_config.parse_flags)`. absl's own (app.parse_flags_with_usage), except
  that an override naming a field the config does not have (--config.learning_rat=0.1)
  ends like any other flag error, on one message with ml_collections' "Did you mean"
  hint and exit status 1, where absl would print ml_collections' KeyError/AttributeError
  as a traceback. Returns the arguments left after the flags."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    hint = e  # ml_collections wraps a KeyError(message) in an AttributeError.
    while isinstance(hint, BaseException) and hint.args:
      hint = hint.args[0]
    field = str(hint).split('\n', 1)[0].strip("'")
    if not any(arg.startswith('--config.') and field in arg for arg in argv):
      raise  # Not an override's field: an error of the config file itself, say.
    sys.stderr.write(f'FATAL Flags parsing error: the config has no field {hint}\n')
    sys.exit(1)


def workdir_of(workdir: str | None, config_path: str) -> str:
  """The run directory of the entry points: `workdir` (--workdir), or runs/<name of the
  config file>. Raises ValueError when it names something other than a directory."""
  workdir = workdir or os.path.join('runs', os.path.splitext(os.path.basename(config_path))[0])
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'--workdir={workdir} is a file, not a run directory')
  return workdir


def require_new_directory(path: str) -> None:
  """For an output directory that must not hold anything yet (--out of pretrained.convert
  and train.export). Raises FileExistsError when `path` is a file or a non-empty
  directory; nothing is overwritten."""
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise FileExistsError(f'{os.path.abspath(path)} exists and is not an empty directory; '
                          'choose another --out (nothing was overwritten)')


def flatten(tree: dict) -> dict:
  """A nested config dict (as JSON loads it) -> {'model.hidden_size': 64, ...}."""
  out = {}
  def visit(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        visit(value, f'{prefix}{key}.')
      else:
        out[f'{prefix}{key}'] = value
  visit(tree, '')
  return out


def _as_json(config) -> dict:
  """The ConfigDict as config.json holds it (tuples become lists), so saved and live
  configs compare equal."""
  return json.loads(config.to_json_best_effort())


def load(workdir: str) -> dict | None:
  """The flattened config saved in `workdir` (None at a first start)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return flatten(json.load(f))


def diff(saved: dict | None, config) -> dict:
  """{field: (saved value, current value)} for the fields that differ (a field added
  or removed shows None on the side that lacks it)."""
  if saved is None:
    return {}
  current = flatten(_as_json(config))
  return {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
          if saved.get(k) != current.get(k)}


def describe(changes: dict) -> str:
  """'model.hidden_size: 16 -> 32; num_train_steps: 6 -> 9' ('none' when empty)."""
  return '; '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changes.items()) or 'none'


def record(workdir: str, config, step: int, changes: dict) -> None:
  """Writes config.json and, for a restart with `changes`, a config_changes.jsonl row."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  if changes:
    with open(os.path.join(workdir, 'config_changes.jsonl'), 'a', encoding='utf-8') as f:
      f.write(json.dumps({'time': time.time(), 'step': step,
                          'changes': {k: list(v) for k, v in changes.items()}}) + '\n')
  reporting.write_atomically(os.path.join(workdir, 'config.json'),
                             config.to_json_best_effort(indent=2))
