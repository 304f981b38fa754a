r"""Converts another codebase's weight file once into a directory `--config.init_from`
loads (an Orbax checkpoint of the model's variables plus pretrained.json).

  python -m pretrained.convert --format=torchvision --weights=resnet50-11ad3fa6.pth \
      --model=resnet50 --out=weights/resnet50_tv
  python -m pretrained.convert --format=vit_npz --weights=ViT-B_16.npz --model=vit_b16 \
      --out=weights/vit_b16_in21k
  python -m pretrained.convert --format=timm_vit --weights=model.safetensors \
      --model=vit_b16 --out=weights/vit_b16_timm

The file fixes the model fields it determines (the number of classes; for ViT the
resolution of its position embeddings, the pooling and the GELU form: timm's is exact,
the original's the tanh approximation); --model_kwargs adds others as JSON. A run that
loads the directory must set the same fields, except the number of classes and the
resolution (pretrained/__init__.py). Every
tensor must map: a missing, extra or mis-shaped one is an error that lists them (with
the closest names) and says what architecture the file looks like; nothing is written.
Prints the parameter count and the read / convert / save times.
"""

import json
import os
import time

from absl import app, flags, logging

import nets
import pretrained
from train import run_config
from train import state as state_lib

_FORMAT = flags.DEFINE_enum('format', None, list(pretrained.FORMATS), 'Source format.')
_WEIGHTS = flags.DEFINE_string('weights', None, 'The weight file (.npz, .pth, .safetensors).')
_MODEL = flags.DEFINE_string('model', None, 'The model registry name (nets.REGISTRY).')
_MODEL_KWARGS = flags.DEFINE_string('model_kwargs', '{}', 'Further model fields, as JSON.')
_OUT = flags.DEFINE_string('out', None, 'Output directory (must not exist or be empty).')
flags.mark_flags_as_required(['format', 'weights', 'model', 'out'])


def convert(format_name: str, weights: str, model_name: str, out: str,
            model_kwargs: dict | None = None) -> dict:
  """Reads `weights` in format `format_name`, maps it onto `model_name` and writes `out`.

  Returns pretrained.json's content plus 'seconds' {read, convert, save} and
  'num_params'. Raises ValueError (unknown format or model, a model the format cannot
  fill), FileNotFoundError, FileExistsError (`out` not empty), and
  mapping.WeightMismatchError; nothing is written on an error.
  """
  fmt = pretrained.get_format(format_name)
  if model_name not in nets.REGISTRY:
    nets.build(model_name)  # Raises the registry's error with close matches.
  if not fmt.supports(model_name):
    raise ValueError(f'Format {format_name!r} ({fmt.DESCRIPTION}) cannot fill model '
                     f'{model_name!r}')
  run_config.require_new_directory(out)
  start = time.perf_counter()
  tensors = fmt.read(weights)
  read_s = time.perf_counter() - start
  kwargs = {**fmt.model_kwargs(tensors), **(model_kwargs or {})}
  # A file without a classifier gives no class count: its model is built with a
  # placeholder head, which the conversion leaves out (mapping.HEADS); a run that loads
  # it initialises its own head.
  model = nets.build(model_name, **{'num_classes': 1, **kwargs})
  start = time.perf_counter()
  variables = fmt.to_variables(tensors, model, weights)
  convert_s = time.perf_counter() - start
  info = {'format': format_name, 'weights': os.path.abspath(weights), 'model': model_name,
          'model_kwargs': kwargs, 'architecture': fmt.architecture(tensors)}
  start = time.perf_counter()
  pretrained.save(out, variables, info)
  save_s = time.perf_counter() - start
  num_params = state_lib.count_params(variables['params'])[0]
  return {**info, 'num_params': num_params,
          'seconds': {'read': round(read_s, 2), 'convert': round(convert_s, 2),
                      'save': round(save_s, 2)}}


def main(argv):
  del argv
  try:
    model_kwargs = json.loads(_MODEL_KWARGS.value)
  except json.JSONDecodeError as e:
    raise app.UsageError(f'--model_kwargs is not JSON: {e}') from None
  result = convert(_FORMAT.value, _WEIGHTS.value, _MODEL.value, _OUT.value, model_kwargs)
  logging.info('Wrote %s', _OUT.value)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
