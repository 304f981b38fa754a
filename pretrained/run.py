"""A run of this codebase (a launch.py workdir) as a source of pretrained weights:
`config.init_from=runs/NAME` starts a new run from that run's newest checkpoint, with
no conversion step (its variables are already this codebase's).

With `config.init_into` (pretrained/__init__.py) the weights of one model fill a part of
another: a classifier trained here becomes the encoder or backbone of a segmentation or
detection model, the usual ImageNet-pretraining recipe at the scale of this codebase's
offline data (e.g. README: UNet++ from a Fashion-MNIST ResNet-18).
"""

import json
import os

CONFIG_FILE = 'config.json'
CHECKPOINTS_DIR = 'checkpoints'
# What a checkpoint's 'state' item holds besides the model's variables (train/state.py).
_VARIABLE_FIELDS = ('params', 'model_state')


def is_run(directory: str) -> bool:
  """Whether `directory` looks like a launch.py workdir (config.json + checkpoints/)."""
  return (os.path.isfile(os.path.join(directory, CONFIG_FILE))
          and os.path.isdir(os.path.join(directory, CHECKPOINTS_DIR)))


def latest_state_dir(directory: str) -> tuple[int, str]:
  """(step, path of its 'state' item) of the newest complete checkpoint of the run.

  Raises FileNotFoundError when the run has none (it never reached a checkpoint)."""
  root = os.path.join(directory, CHECKPOINTS_DIR)
  steps = sorted((int(n) for n in os.listdir(root)
                  if n.isdigit() and os.path.isdir(os.path.join(root, n, 'state'))),
                 reverse=True)
  if not steps:
    raise FileNotFoundError(f'The run {os.path.abspath(directory)} has no checkpoint yet; '
                            'train it first (python launch.py --config=... '
                            f'--workdir={directory})')
  return steps[0], os.path.abspath(os.path.join(root, str(steps[0]), 'state'))


def info(directory: str) -> dict:
  """pretrained.json's fields for a run: its model name and fields from config.json."""
  with open(os.path.join(directory, CONFIG_FILE), encoding='utf-8') as f:
    # JSON has lists where the config had tuples (ViT's conv_stem): back to tuples, so
    # pretrained.check compares them equal to the fields of the loading run's model.
    model = {k: tuple(v) if isinstance(v, list) else v
             for k, v in json.load(f)['model'].items()}
  step, _ = latest_state_dir(directory)
  name = model.pop('name')
  return {'format': 'run', 'weights': os.path.abspath(directory), 'model': name,
          'model_kwargs': model, 'step': step,
          'architecture': f'{name} trained by launch.py, checkpoint of step {step}'}


def variables(state: dict) -> dict:
  """{'params': ..., <model_state collections>} of a checkpoint's 'state' tree (or of
  its metadata tree): the optimizer state, step and rng are not weights."""
  missing = [f for f in _VARIABLE_FIELDS if f not in state]
  if missing:
    raise ValueError(f'A checkpoint state without {missing}: not a launch.py checkpoint')
  return {'params': state['params'], **(state['model_state'] or {})}
