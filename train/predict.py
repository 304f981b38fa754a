r"""Predictions of a trained run (its latest checkpoint by default), and the timed
evaluation of a whole eval split. What an input is depends on the task
(tasks/<task>.predict_cli):

  python -m train.predict --config=configs/transformer_g2p.py --text=hello --text=jax
  python -m train.predict --config=configs/unetpp_fashion_mnist_scenes.py \
      --image=scene.png [--out=overlay.png]
  python -m train.predict --config=configs/yolov3_fashion_mnist_scenes.py \
      --image=scene.png [--out=boxes.png]
  python -m train.predict --config=configs/transformer_g2p.py --eval \
      [--split=test] [--config.decode.beam_size=4] [--checkpoint=best|last|STEP] \
      [--average_last=3] [--weights=ema|trained] \
      [--workdir=runs/transformer_g2p]

--eval runs the task's evaluators (decoding + WER/PER or BLEU, the segmentation
confusion matrix, detections + COCO AP, ...) over every example of the --split eval set ('test':
config.data.test_split, 'validation': config.data.validation_split) and prints their
metrics and the speed in examples (words, sentences, images) per second,
compilation excluded.
"""

import json
import os

import jax
from absl import app, flags
from ml_collections import config_flags

import tasks
from train import reporting, run_config
from train.restore import Predictor

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file of the run.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default runs/<config name>).')
_TEXT = flags.DEFINE_multi_string('text', [], 'Input strings (seq2seq tasks).')
_IMAGE = flags.DEFINE_multi_string('image', [], 'Input image files (image tasks).')
_OUT = flags.DEFINE_string('out', None, 'Output file or folder for image predictions '
                           '(default: next to the input, *_pred.png).')
_EVAL = flags.DEFINE_bool('eval', False, 'Evaluate the --split eval set, timed.')
_SPLIT = flags.DEFINE_enum('split', 'test', ['validation', 'test'],
                           'Which eval set --eval evaluates.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'last', "Which checkpoint: 'last', 'best' or "
                                  'a step number.')
_AVERAGE = flags.DEFINE_integer('average_last', 1, 'Average the params of this many newest '
                                'checkpoints (Vaswani et al. 2017, Sec. 6.1); 1: the latest.')
_WEIGHTS = flags.DEFINE_enum('weights', 'ema', ['ema', 'trained'],
                             "Of a run that kept a moving average of its weights "
                             "(config.optim.ema_decay > 0): predict with it ('ema') or with the "
                             "optimizer's weights ('trained'). Other runs have only the latter.")
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  reporting.quiet_library_logs()
  config = _CONFIG.value
  inputs = {'text': _TEXT.value, 'image': _IMAGE.value, 'out': _OUT.value}
  reads = tasks.get(config.task).PREDICT_INPUTS
  unread = [f'--{name}' for name, value in inputs.items() if value and name not in reads]
  if unread:
    raise app.UsageError(f'{", ".join(unread)}: not read by task {config.task!r}, which '
                         f'reads {", ".join(f"--{name}" for name in reads)}')
  if not (_TEXT.value or _IMAGE.value or _EVAL.value):
    raise app.UsageError('Nothing to predict: give --text (seq2seq tasks), --image (image '
                         'tasks) or --eval')
  missing = [path for path in _IMAGE.value if not os.path.isfile(path)]
  if missing:
    raise app.UsageError(f'--image: no such file: {", ".join(missing)}')
  workdir = run_config.workdir_of(_WORKDIR.value, flags.FLAGS['config'].config_filename)
  predictor = Predictor(config, workdir, _CHECKPOINT.value, _AVERAGE.value,
                        roles=(_SPLIT.value,) if _EVAL.value else (), weights=_WEIGHTS.value)
  predictor.task_module.predict_cli(config, predictor.data, predictor.predict_batch, inputs)
  if _EVAL.value:
    result = predictor.timed_eval(_SPLIT.value)
    print(json.dumps({'device': f'{jax.device_count()}x {jax.devices()[0].device_kind}',
                      'split': predictor.data.eval_splits[_SPLIT.value], 'step': predictor.step,
                      'average_last': _AVERAGE.value, 'weights': _WEIGHTS.value, **result}))


if __name__ == '__main__':
  app.run(main, flags_parser=run_config.parse_flags)
