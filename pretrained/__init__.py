"""Pretrained weights: import from other codebases' files, then start runs from them.

  python -m pretrained.convert --format=vit_npz --weights=ViT-B_16.npz --model=vit_b16 \
      --out=weights/vit_b16_in21k
  python launch.py --config=configs/vit_b16_cifar10_finetune.py \
      --config.init_from=pretrained/vit_b16_in21k

A format is one module (FORMATS) that maps the file's tensor names to this codebase's
variables explicitly (pretrained.mapping); `pretrained.convert` writes the result once
as an Orbax checkpoint plus pretrained.json (format, source file, model and the model
fields the file fixed). `config.init_from` loads such a directory, or the workdir of a
run of this codebase (pretrained/run.py: its newest checkpoint), into a fresh run
(`initialise`): every variable is taken from it, except
  * the classifier `head`, when its size differs (another number of classes) or the
    weights have none (a backbone converted from a file without a classifier): kept at
    its initialisation, and the log says so;
  * ViT position embeddings for another resolution: resized bilinearly (Dosovitskiy et
    al. 2021, Sec. 3.2);
anything else that differs is an error listing the differences. A run that resumes from
its own checkpoints ignores init_from.

`config.init_into` (a module path such as 'encoder', '' = the whole model) loads the
weights into that part of the model only, e.g. a ResNet classifier into UNet++'s ResNet
encoder: the rest keeps its initialisation, the source's classifier `head` is left out
(the log says so), and everything else must fit that module exactly.
"""

import importlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

import nets
from nets import vit
from pretrained import mapping, run
from train import parallel, run_config
from train import state as state_lib

# Format name -> module (imported when used: the readers' optional dependencies such
# as torch load only for their own format).
FORMATS = {
    'vit_npz': 'pretrained.vit_npz',        # google-research/vision_transformer, big_vision
    'timm_vit': 'pretrained.timm_vit',      # timm VisionTransformer state_dict
    'torchvision': 'pretrained.torchvision',  # torchvision ResNet-18...152, MobileNetV2
}
INFO_FILE = 'pretrained.json'
VARIABLES_DIR = 'variables'
# Model fields a converted checkpoint may differ in: handled by `merge`.
ADAPTED_FIELDS = ('num_classes', 'image_size')


def _fixed_by_weights(field: str) -> bool:
  """Whether a model field is part of what trained weights compute and not one of those
  merge adapts."""
  return field not in ADAPTED_FIELDS and nets.changes_computation(field)


def get_format(name: str):
  """The format module `name`. Raises ValueError listing the valid names."""
  if name not in FORMATS:
    raise ValueError(f'Unknown weight format {name!r}; valid: {sorted(FORMATS)}')
  return importlib.import_module(FORMATS[name])


def read_info(directory: str) -> dict:
  """The pretrained.json of a converted directory, or its equivalent for a run's workdir.

  Raises FileNotFoundError naming the directory and how to make one."""
  if run.is_run(directory):
    return run.info(directory)
  path = os.path.join(directory, INFO_FILE)
  if not os.path.isfile(path) or not os.path.isdir(os.path.join(directory, VARIABLES_DIR)):
    raise FileNotFoundError(
        f'{os.path.abspath(directory)} is neither a converted weight directory (no '
        f'{INFO_FILE} and {VARIABLES_DIR}/) nor a run\'s workdir (no {run.CONFIG_FILE} and '
        f'{run.CHECKPOINTS_DIR}/); make one with python -m pretrained.convert '
        '--format=... --weights=FILE --model=NAME --out=DIR, or train one with launch.py')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def check(config, model) -> None:
  """Cheap checks of config.init_from before anything is initialised: the directory is
  a converted one, of the config's model, and the model fields the weights fixed at
  conversion (e.g. ViT's `approximate_gelu`, `classifier`) agree with those of `model`,
  the config's model as its task's `check` built it with placeholder sizes (the number
  of classes and the resolution may differ: see the module docstring; so may
  regularisation, initialisation-only and implementation fields such as
  drop_path_rate, zero_init_last and attention_impl).
  With config.init_into the weights fill a module of another model: only the directory
  is checked here, the shapes by `check_shapes`.
  Raises FileNotFoundError, ValueError."""
  if not config.get('init_from'):
    if config.get('init_into'):
      raise ValueError(f'config.init_into={config.init_into!r} needs config.init_from (the '
                       'weights to load into it)')
    return
  info = read_info(config.init_from)
  if config.get('init_into'):
    return
  if info['model'] != config.model.name:
    raise ValueError(f'config.init_from={config.init_from!r} holds weights for model '
                     f'{info["model"]!r} ({info.get("architecture", "")}), but '
                     f'config.model.name is {config.model.name!r}')
  # Only the fields the file or run recorded: a converted file leaves the sizes to the
  # caller (the shape check compares them), and a run records all of its model's.
  differing = {k: (v, getattr(model, k, None)) for k, v in info.get('model_kwargs', {}).items()
               if _fixed_by_weights(k) and getattr(model, k, None) != v}
  if differing:
    raise ValueError(f'config.init_from={config.init_from!r} holds weights for model fields '
                     'the config sets otherwise: ' + '; '.join(
                         f'{k}: weights {a!r}, config {b!r}' for k, (a, b) in differing.items())
                     + '. Set them with --config.model.FIELD=VALUE.')


def save(directory: str, variables: dict, info: dict) -> None:
  """Writes converted `variables` ({'params': ..., 'batch_stats': ...?} numpy) and
  `info` to `directory`, which must not exist yet (nothing is overwritten)."""
  run_config.require_new_directory(directory)
  os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(os.path.join(directory, VARIABLES_DIR)), variables)
  checkpointer.wait_until_finished()
  checkpointer.close()
  with open(os.path.join(directory, INFO_FILE), 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=2)


def _variables_item(directory: str):
  """(the Orbax item holding the weights, tree -> variables) of a converted directory
  (its variables/) or a run (its newest checkpoint's state, pretrained.run.variables)."""
  if run.is_run(directory):
    return run.latest_state_dir(directory)[1], run.variables
  return os.path.abspath(os.path.join(directory, VARIABLES_DIR)), lambda tree: tree


def _saved_tree(checkpointer, path: str):
  """The metadata tree (shapes, dtypes) of the Orbax item at `path`."""
  metadata = checkpointer.metadata(path)
  saved = getattr(metadata, 'item_metadata', metadata)
  return getattr(saved, 'tree', saved)


def load(directory: str) -> tuple[dict, dict]:
  """(variables as nested dicts of numpy arrays, info) of a converted directory or a run.

  The arrays are restored on the host: a run's checkpoint records the devices it was
  saved from (8 GPUs, say), which the process loading it need not have."""
  info = read_info(directory)
  path, select = _variables_item(directory)
  checkpointer = ocp.StandardCheckpointer()
  host = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype),
                      dict(_saved_tree(checkpointer, path)))
  variables = select(checkpointer.restore(path, host))
  checkpointer.close()
  return variables, info


def _decide(path: tuple, saved_shape: tuple, model_shape: tuple) -> str:
  """'load', 'resize' (ViT position embeddings), 'reinit' (a head of another size) or
  '' (a difference that is an error) for one variable present on both sides."""
  if tuple(saved_shape) == tuple(model_shape):
    return 'load'
  if (path[-1] == 'pos_embedding' and len(saved_shape) == len(model_shape) == 3
      and saved_shape[::2] == model_shape[::2]):  # Another grid of the same width.
    return 'resize'
  return 'reinit' if len(path) > 1 and path[1] in mapping.HEADS else ''


def _headless(path: tuple, theirs: dict) -> bool:
  """Whether `path` is in a head module of which the loaded weights have nothing."""
  return (len(path) > 1 and path[1] in mapping.HEADS
          and not any(p[1:2] == path[1:2] for p in theirs))


def _problems(ours: dict, theirs: dict, source: str) -> None:
  """Raises mapping.WeightMismatchError for variables missing on either side and shape
  differences that are neither a resize nor a head reinitialisation."""
  problems = [f'{"/".join(p)}: missing in the checkpoint' for p in ours
              if p not in theirs and not _headless(p, theirs)]
  problems += [f'{"/".join(p)}: checkpoint {list(theirs[p].shape)}, model '
               f'{list(ours[p].shape)}' for p in ours
               if p in theirs and not _decide(p, theirs[p].shape, ours[p].shape)]
  problems += [f'{"/".join(p)}: not in the model' for p in theirs if p not in ours]
  if problems:
    raise mapping.WeightMismatchError(f'{source} does not fit the model ({len(problems)} '
                                      'differences):\n  ' + '\n  '.join(problems))


def _split_into(into: str) -> tuple:
  return tuple(part for part in into.split('/') if part)


# A classifier's modules that a backbone (init_into) may lack: the head, and
# MobileNetV2's last 1x1 convolution to 1280 channels (torchvision's features.18), which
# its features_only backbone (the YOLOv3 detector's) does not have.
_CLASSIFIER_MODULES = mapping.HEADS + ('head_conv',)


def _target(ours: dict, theirs: dict, into: tuple, source: str) -> tuple[dict, dict, list]:
  """The model's variables under module `into` (all of them for ()), the loaded ones
  placed there, and notes on what of the source is left out (its classifier `head`, and
  MobileNetV2's `head_conv`, when `into` has none).

  Raises ValueError when `into` names no module of the model, listing its modules."""
  if not into:
    return ours, theirs, []
  target = {p: v for p, v in ours.items() if p[1:1 + len(into)] == into}
  if not target:
    raise ValueError(f'config.init_into={"/".join(into)!r} is not a module of the model; '
                     f'its top-level modules: {sorted({p[1] for p in ours})}')
  placed, left_out = {}, set()
  for path, value in theirs.items():
    moved = (path[0], *into, *path[1:])
    if moved not in target and path[1] in _CLASSIFIER_MODULES:
      left_out.add(path[1])
    else:
      placed[moved] = value
  notes = [f'not loaded: {name} of {source} ({"/".join(into)} has none)'
           for name in sorted(left_out)]
  return target, placed, notes


def check_shapes(config, abstract_variables: dict) -> None:
  """What `merge` would raise for config.init_from (into config.init_into) and the
  model's variables (shapes only: reads the checkpoint's metadata, not its arrays),
  before anything is initialised or compiled."""
  if not config.get('init_from'):
    return
  path, select = _variables_item(config.init_from)
  checkpointer = ocp.StandardCheckpointer()
  saved = select(_saved_tree(checkpointer, path))
  checkpointer.close()
  target, placed, _ = _target(mapping.flatten(abstract_variables), mapping.flatten(saved),
                              _split_into(config.get('init_into', '')), config.init_from)
  _problems(target, placed, config.init_from)


def merge(fresh: dict, loaded: dict, source: str, into: str = '') -> tuple[dict, list[str]]:
  """`fresh` (a model's initial variables) with every variable under module `into`
  ('' = all of them) taken from `loaded`.

  Args:
    fresh, loaded: {collection: nested dict of arrays}.
    source: the converted directory or run, for messages.
    into: a module path of the model ('encoder', 'a/b'): `loaded` holds that module's
      variables (plus a classifier `head`, left out); the rest of `fresh` is kept.
  Returns:
    (merged variables as numpy, notes): notes say what was reinitialised, resized or
    left out.
  Raises:
    ValueError: `into` is not a module of the model.
    mapping.WeightMismatchError listing the variables missing on either side and the
    shape differences the module docstring does not allow.
  """
  ours = mapping.flatten(fresh)
  target, theirs, notes = _target(ours, mapping.flatten(loaded), _split_into(into), source)
  _problems(target, theirs, source)
  out = {path: np.asarray(value) for path, value in ours.items()}
  for path, value in target.items():
    name = '/'.join(path)
    if path not in theirs:  # _problems let only a head the weights lack through.
      notes.append(f'initialised {name}: {source} has no {path[1]}')
      continue
    saved = np.asarray(theirs[path])
    decision = _decide(path, saved.shape, value.shape)
    if decision == 'load':
      out[path] = saved
    elif decision == 'resize':
      side = int(np.sqrt(value.shape[1]))
      out[path] = np.asarray(vit.interpolate_position_embeddings(saved, (side, side)))
      notes.append(f'resized {name} from a {int(np.sqrt(saved.shape[1]))}^2 to a {side}^2 '
                   'grid (bilinear)')
    else:
      notes.append(f'reinitialised {name}: checkpoint {list(saved.shape)}, model '
                   f'{list(value.shape)}')
  return mapping.unflatten(out), notes


def initialise(config, state, sharding):
  """The canonical TrainState `state` (freshly initialised) with params and model state
  loaded from config.init_from and the optimizer state (and the moving average of the
  weights, when the state keeps one) initialised for them, placed
  with `sharding` (the engine's replicated sharding). Works with multi-process arrays:
  every process reads the same files and builds the same host values.

  Raises what `load` and `merge` raise."""
  loaded, info = load(config.init_from)
  host = lambda tree: jax.tree.map(parallel.replica, tree)
  fresh = host({'params': state.params, **state.model_state})
  into = config.get('init_into', '')
  variables, notes = merge(fresh, loaded, config.init_from, into)
  logging.info('Initialised %s from %s (%s, from %s).', f'module {into!r}' if into else
               'the model', config.init_from, info.get('architecture', info['model']),
               info.get('weights', '?'))
  for note in notes:
    logging.warning('init_from: %s', note)
  params = variables.pop('params')
  state = state.replace(step=parallel.replica(state.step), rng=parallel.replica(state.rng),
                        params=params, model_state=variables,
                        opt_state=jax.tree.map(np.asarray, state.tx.init(params)))
  return jax.device_put(state_lib.with_ema_reset(state, copy=np.array), sharding)
