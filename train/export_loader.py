"""Loads a predict function exported by train/export.py and runs it: a self-contained file
(jax, numpy, flax.serialization only; nothing of this codebase), to copy next to your
own code.

  import export_loader
  predict = export_loader.load('exported/vit')
  classes = predict({'image': images})   # images: [b, 28, 28, 1] float32, normalised
  predict.signature                      # signature.json: inputs, outputs, model, step

The directory holds predict.jaxexport (jax.export.Exported.serialize()),
variables.msgpack (flax.serialization) and signature.json, which names each input with
its shape ('b' for the batch: any size >= 1), dtype and, for images, the normalisation
the function expects. Each new batch size compiles once.
"""

import json
import os

import flax.serialization
import jax
import numpy as np

_FILES = ('predict.jaxexport', 'variables.msgpack', 'signature.json')


def _read(directory: str, name: str, mode: str = 'rb'):
  with open(os.path.join(directory, name), mode) as f:
    return f.read()


def _check_batch(batch, inputs: dict) -> dict:
  """`batch` validated against the signature's inputs: the inputs as numpy, extra keys
  dropped. Raises ValueError naming what is wrong."""
  if not isinstance(batch, dict):
    raise ValueError(f'The batch must be a dict of arrays with keys {sorted(inputs)}; got '
                     f'{type(batch).__name__}')
  missing = sorted(set(inputs) - set(batch))
  if missing:
    raise ValueError(f'The batch lacks input(s) {missing}; the inputs are '
                     + ', '.join(f'{k}: {v["shape"]} {v["dtype"]}' for k, v in inputs.items()))
  out, sizes = {}, {}
  for name, spec in inputs.items():
    value = np.asarray(batch[name])
    shape, dtype = spec['shape'], np.dtype(spec['dtype'])
    if value.dtype != dtype:
      raise ValueError(f'Input {name!r} must be {dtype}, got {value.dtype} (convert with '
                       f'.astype(np.{dtype}))')
    if value.ndim != len(shape):
      raise ValueError(f'Input {name!r} must have rank {len(shape)} (shape {shape}), got '
                       f'shape {list(value.shape)}')
    for axis, (want, got) in enumerate(zip(shape, value.shape)):
      if isinstance(want, str):
        if got < 1:
          raise ValueError(f'Input {name!r}: dimension {axis} ({want!r}) must be >= 1, got {got}')
        sizes.setdefault(want, {})[name] = got
      elif got != want:
        raise ValueError(f'Input {name!r} must have shape {shape}, got {list(value.shape)} '
                         f'(dimension {axis}: {got} instead of {want})')
    out[name] = value
  for symbol, by_input in sizes.items():
    if len(set(by_input.values())) > 1:
      raise ValueError(f'The inputs disagree on the dimension {symbol!r}: {by_input}')
  return out


def load(directory: str):
  """The exported predict function in `directory`, ready to call.

  Returns:
    predict(batch: dict of numpy arrays) -> outputs (a numpy array or pytree of them),
    with the attribute `signature` (signature.json as a dict). Keys of `batch` that are
    not inputs (e.g. 'label', 'mask') are ignored. predict raises ValueError for a
    missing input, a wrong dtype, rank or fixed dimension, or inputs whose batch sizes
    differ.
  Raises:
    FileNotFoundError: a file of the export is missing.
    ValueError: the export was not lowered for this machine's platform.
  """
  for name in _FILES:
    if not os.path.isfile(os.path.join(directory, name)):
      raise FileNotFoundError(f'{os.path.join(directory, name)} is missing: not a directory '
                              'written by train/export.py')
  signature = json.loads(_read(directory, 'signature.json', 'r'))
  exported = jax.export.deserialize(bytearray(_read(directory, 'predict.jaxexport')))
  platform = jax.export.default_export_platform()
  if platform not in exported.platforms:
    raise ValueError(f'{directory} was exported for {list(exported.platforms)}, not for this '
                     f"machine's {platform!r}: export again with --platforms="
                     f'{",".join(list(exported.platforms) + [platform])}')
  variables = jax.device_put(flax.serialization.msgpack_restore(
      _read(directory, 'variables.msgpack')))
  call = jax.jit(exported.call)
  inputs = signature['inputs']

  def predict(batch):
    outputs = call(variables, _check_batch(batch, inputs))
    return jax.tree.map(np.asarray, outputs)

  predict.signature = signature
  return predict
