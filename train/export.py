r"""A trained run's predict function as a portable, serialised JAX program
(`jax.export`): the computation as StableHLO plus the weights, loadable without this
codebase by train/export_loader.py (one file: jax, numpy, flax.serialization).

  python -m train.export --config=configs/vit_fashion_mnist.py --out=exported/vit \
      [--workdir=runs/vit_fashion_mnist] [--checkpoint=last|best|STEP] [--platforms=cpu,cuda]

writes to --out:
  predict.jaxexport   `jax.export.Exported.serialize()` of the task's predict function
                      (variables, batch) -> outputs, jitted, with the batch dimension
                      symbolic ('b': any batch size >= 1, one compilation per size).
  variables.msgpack   the restored checkpoint's variables ({'params': ...,
                      'batch_stats': ...}), `flax.serialization.msgpack_serialize`.
  signature.json      inputs (name -> shape with 'b' for the batch, dtype, what the values
                      are: for images the normalisation), outputs (the same, as a tree),
                      the run's model, task, step, checkpoint and the export's platforms.

The exported function is the task's own `predict` (tasks/<task>.py), so it returns
what evaluation scores: class ids [b] int32 (classification), class ids per pixel
[b, h, w] int32 (segmentation), {'boxes', 'scores', 'classes', 'valid'} after NMS
(detection), decoded token ids (seq2seq). Its inputs are the eval pipeline's:
images already normalised, (pixels / 255 - mean) / std with the config's data.mean /
data.std (data.transforms.normalize), at the training size (detection: letterboxed to
the square data.image_size, data.box_augment.letterbox); signature.json spells this out.

Which batch keys are inputs: those the task's predict looks up (`input_keys`), found by
tracing it once on an eval batch whose dict records the keys read; the others
('label', 'mask', 'index', ...) are not part of the exported signature. Every input's
first dimension is the batch.

Seq2seq exports too (greedy and beam-search decoding lower with a symbolic batch); its
input is 'inputs' [b, max_length] int32 source token ids of the run's vocabulary
(data/seq2seq.py: ending with </s> = 1, 0-padded), which the user must tokenize alike.
"""

import dataclasses
import functools
import json
import os
from typing import Callable

import flax
import jax
import numpy as np
from absl import app, flags

SIGNATURE_VERSION = 1
FILES = ('predict.jaxexport', 'variables.msgpack', 'signature.json')
# What jax.export lowers for (--platforms).
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


class _RecordingDict(dict):
  """A batch dict that records the keys looked up in it (iteration reads them all)."""

  def __init__(self, batch: dict, seen: set):
    super().__init__(batch)
    self._seen = seen

  def __getitem__(self, key):
    self._seen.add(key)
    return super().__getitem__(key)

  def get(self, key, default=None):
    self._seen.add(key)
    return super().get(key, default)

  def __contains__(self, key):
    self._seen.add(key)
    return super().__contains__(key)

  def __iter__(self):
    self._seen.update(super().keys())
    return super().__iter__()

  def keys(self):
    self._seen.update(super().keys())
    return super().keys()

  def values(self):
    self._seen.update(super().keys())
    return super().values()

  def items(self):
    self._seen.update(super().keys())
    return super().items()


def input_keys(fn: Callable, variables, batch: dict) -> list[str]:
  """The keys of `batch` that `fn(variables, batch)` reads, sorted.

  fn is traced abstractly (jax.eval_shape: nothing runs) with `batch` wrapped in a dict
  that records every key looked up, tested (`in`) or iterated over. A key fn only
  tests for counts as read: its presence can change the result. Raises what fn raises,
  and ValueError when fn reads no key or fails on the batch reduced to the keys it read.
  """
  seen = set()
  jax.eval_shape(lambda v, b: fn(v, _RecordingDict(b, seen)), variables, batch)
  keys = sorted(k for k in seen if k in batch)
  if not keys:
    raise ValueError(f'The predict function reads none of the batch keys {sorted(batch)}')
  jax.eval_shape(fn, variables, {k: batch[k] for k in keys})  # The reduced batch suffices.
  return keys


def _dims(shape) -> list:
  """A shape as JSON: ints, and the symbolic batch dimension as its name ('b')."""
  return [d if isinstance(d, int) else str(d) for d in shape]


def _describe(tree):
  """Abstract values (a pytree) -> the same tree of {'shape', 'dtype'} (JSON)."""
  return jax.tree.map(lambda a: {'shape': _dims(a.shape), 'dtype': str(np.dtype(a.dtype))},
                      tree)


def export_function(fn: Callable, variables, batch: dict, *, platforms=None):
  """Exports `fn(variables, batch) -> outputs` for any batch size.

  Args:
    fn: a pure function of (variables, batch).
    variables: the variables (pytree of arrays; fixed shapes in the export).
    batch: an example batch: name -> [n, ...] array; only the keys fn reads become
      inputs (`input_keys`), each with its first dimension symbolic ('b').
    platforms: platforms to lower for (e.g. ('cpu', 'cuda')); None: the default backend.
  Returns:
    (jax.export.Exported, inputs: name -> {'shape': ['b', ...], 'dtype': str}).
  Raises:
    ValueError: inputs whose first dimensions differ (not all batch-major).
  """
  keys = input_keys(fn, variables, batch)
  sizes = {k: np.shape(batch[k])[0] if np.ndim(batch[k]) else None for k in keys}
  if len(set(sizes.values())) != 1 or None in sizes.values():
    raise ValueError(f'The inputs must all have the batch as their first dimension; '
                     f'got first dimensions {sizes}')
  b, = jax.export.symbolic_shape('b')
  specs = {k: jax.ShapeDtypeStruct((b,) + np.shape(batch[k])[1:], np.asarray(batch[k]).dtype)
           for k in keys}
  var_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), variables)
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(var_specs, specs)
  return exported, _describe(specs)


def write(directory: str, exported, variables, signature: dict) -> None:
  """Writes FILES (module docstring) to `directory` (created); everything is serialised
  before the first file is opened, so a failure leaves no partial export."""
  blobs = {'predict.jaxexport': bytes(exported.serialize()),
           'variables.msgpack': flax.serialization.msgpack_serialize(variables),
           'signature.json': (json.dumps(signature, indent=2) + '\n').encode('utf-8')}
  os.makedirs(directory, exist_ok=True)
  for name, blob in blobs.items():
    with open(os.path.join(directory, name), 'wb') as f:
      f.write(blob)


def host_variables(predictor) -> dict:
  """The restored variables as one host copy: numpy nested dicts (pmap's per-device copies
  reduced to one by the engine's `to_host`)."""
  variables = predictor.engine.to_host(predictor.state.variables)
  return jax.tree.map(np.asarray, flax.core.unfreeze(variables))


def _input_notes(config, keys) -> dict:
  """What each input holds, for signature.json."""
  notes = {}
  data = config.data
  if 'image' in keys and 'mean' in data and 'std' in data:
    notes['image'] = (
        'float32 images as the eval pipeline makes them: pixels p in [0, 255] at the shape '
        'given, normalised per channel to (p / 255 - mean) / std (data.transforms.normalize)'
        f' with mean {list(data.mean)}, std {list(data.std)} (config.data.mean / std)')
    if config.task == 'detection':
      notes['image'] += ('; the image letterboxed into the square canvas (aspect kept, '
                         'centred, pixel value 0 around it before normalisation: '
                         'data.box_augment.letterbox); boxes come back in canvas pixels')
  if 'inputs' in keys and config.task == 'seq2seq':
    notes['inputs'] = ('int32 source token ids of the run\'s vocabulary (data/seq2seq.py: '
                       f'{config.data.name}), each sequence ending with </s> = 1 and '
                       '0-padded to the length given; 2 is <s>, 3 <unk>')
  return notes


def export_run(predictor, directory: str, *, checkpoint='last', platforms=None) -> dict:
  """Exports the restored run `predictor` (train.restore.Predictor): the task's predict
  function with the run's variables, to `directory`; returns the signature written.

  The example batch (shapes, dtypes and keys) is the first eval batch (the validation
  set's when the config has one, else the test set's). `checkpoint` is recorded in
  signature.json; `platforms` as in `export_function` (('cpu', 'cuda') lowers for both
  from any machine).

  Raises:
    ValueError: from `input_keys` / `export_function` (no input read, inputs not batch-major).
  """
  config = predictor.config
  model = predictor.model
  if 'axis_name' in {f.name for f in dataclasses.fields(model)}:
    model = model.clone(axis_name=None)  # pmap's named axis does not exist outside it.
  fn = functools.partial(predictor.task.predict, model)
  variables = host_variables(predictor)
  role = 'validation' if 'validation' in predictor.data.eval_splits else 'test'
  batch = next(iter(predictor.data.eval_batches(role, 0, 1)))
  exported, inputs = export_function(fn, variables, batch, platforms=platforms)
  notes = _input_notes(config, inputs)
  for name, note in notes.items():
    inputs[name]['values'] = note
  signature = {
      'version': SIGNATURE_VERSION,
      'model': config.model.name,
      'task': config.task,
      'step': predictor.step,
      'checkpoint': str(checkpoint),
      'inputs': inputs,
      'outputs': _describe(jax.tree.unflatten(exported.out_tree, exported.out_avals)),
      'outputs_doc': ' '.join((predictor.task.predict.__doc__ or '').split()),
      'platforms': list(exported.platforms),
      'jax_version': jax.__version__,
      'calling_convention_version': exported.calling_convention_version,
  }
  write(directory, exported, variables, signature)
  return signature


def portable_config(config):
  """`config` with attention computed by the matmul core where it names 'auto' or 'cudnn'
  (model.attention_impl): cuDNN's fused attention is a custom call that jax.export does not
  serialise (no compatibility guarantee) and that has no CPU lowering. Same values: the
  cores compute the same attention (nets.layers). Other configs are returned unchanged."""
  if config.model.get('attention_impl') in ('auto', 'cudnn'):
    config = config.copy_and_resolve_references()
    config.model.attention_impl = 'matmul'
  return config


def _define_flags() -> None:
  """The command's flags; defined only when run as a script (importing this module next
  to train.predict or launch.py, which define --config too, must not clash)."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file('config', None, 'Config file of the run.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory (default runs/<config name>).')
  flags.DEFINE_string('checkpoint', 'last', "Which checkpoint: 'last', 'best' or a step.")
  flags.DEFINE_string('out', None, 'Directory to write the export to.')
  flags.DEFINE_list('platforms', [], 'Platforms to lower for, e.g. cpu,cuda (default: the '
                    'backend this runs on).')
  flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  del argv
  from train import reporting, run_config  # pylint: disable=import-outside-toplevel
  from train.restore import Predictor  # pylint: disable=import-outside-toplevel
  reporting.quiet_library_logs()
  values = flags.FLAGS
  run_config.require_new_directory(values.out)
  unknown = sorted(set(values.platforms) - set(PLATFORMS))
  if unknown:
    raise app.UsageError(f'--platforms: unknown {unknown}; valid: {list(PLATFORMS)}')
  workdir = run_config.workdir_of(values.workdir, values['config'].config_filename)
  predictor = Predictor(portable_config(values.config), workdir, values.checkpoint)
  signature = export_run(predictor, values.out, checkpoint=values.checkpoint,
                         platforms=values.platforms or None)
  print(f'Exported {signature["model"]} ({signature["task"]}, step {signature["step"]}) to '
        f'{values.out}: inputs {json.dumps(signature["inputs"])}; outputs '
        f'{json.dumps(signature["outputs"])}')


if __name__ == '__main__':
  _define_flags()
  from train import run_config  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=run_config.parse_flags)
