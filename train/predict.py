r"""Predictions of a trained run (its latest checkpoint), and the timed evaluation of a
whole eval split. What an input is depends on the task (tasks/<task>.predict_cli):

  python -m train.predict --config=configs/transformer_g2p.py --text=hello --text=jax
  python -m train.predict --config=configs/unetpp_fashion_mnist_scenes.py \
      --image=scene.png [--out=overlay.png]
  python -m train.predict --config=configs/yolov3_fashion_mnist_scenes.py \
      --image=scene.png [--out=boxes.png]
  python -m train.predict --config=configs/transformer_g2p.py --eval \
      [--split=test] [--config.decode.beam_size=4] [--average_last=3] \
      [--workdir=runs/transformer_g2p]

--eval runs the task's evaluators (decoding + WER/PER or BLEU, the segmentation
confusion matrix, detections + COCO AP, ...) over every example of the --split eval set ('test':
config.data.test_split, 'validation': config.data.validation_split) and prints their
metrics and the speed in examples (words, sentences, images) per second,
compilation excluded.
"""

import functools
import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import tasks
from train import checkpoint as checkpoint_lib
from train import parallel, reporting, trainer

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
_AVERAGE = flags.DEFINE_integer('average_last', 1, 'Average the params of this many newest '
                                'checkpoints (Vaswani et al. 2017, Sec. 6.1); 1: the latest.')
flags.mark_flags_as_required(['config'])


class Predictor:
  """A trained run, restored: `data`, `task`, the state, the task's `evaluators`, and
  `predict_batch(host_batch) -> numpy predictions` (rows of this process).

  Raises FileNotFoundError when `workdir` has no (readable) checkpoint, ValueError for
  bad config fields.
  """

  def __init__(self, config, workdir: str, average_last: int = 1):
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory):
      raise FileNotFoundError(f'No checkpoints in {directory}; train first: '
                              f'python launch.py --config=... --workdir={workdir}')
    self.config = config
    self.engine = engine = parallel.build(config.parallel)
    trainer.validate(config, engine.num_devices)
    self.task_module = tasks.get(config.task)
    self.data = self.task_module.build_data(config)
    total_steps = trainer.total_train_steps(config, self.data.num_train_examples)
    model, self.task, _, _, init_fn = trainer.build_components(config, total_steps,
                                                               self.data.spec, engine.axis_name)
    abstract = trainer.abstract_state(init_fn, engine)
    ckpt = checkpoint_lib.Checkpointer(workdir, best_metric='', async_save=False)
    state = (ckpt.restore_latest(abstract, None) if average_last == 1
             else ckpt.restore_average(abstract, average_last))
    ckpt.close()
    if state is None:
      raise FileNotFoundError(f'No readable checkpoint in {directory}')
    self.state = engine.from_canonical(state)
    predict_fn = functools.partial(self.task.predict, model)
    self._predict = engine.compile(predict_fn, reduce=False)
    self.evaluators = self.task_module.evaluators(config, self.data, predict_fn, engine)

  def predict_batch(self, batch: dict) -> np.ndarray:
    """Host batch (eval_batch_size rows) -> the task's predictions as numpy."""
    return self.engine.to_local(self._predict(self.state, self.engine.put_batch(batch)))

  def timed_eval(self, role: str = 'test') -> dict:
    """The evaluators' metrics on eval set `role`, the number of examples, seconds and
    examples per second (after a first, compiling batch).

    Raises ValueError when the config has no such eval set."""
    if role not in self.data.eval_splits:
      raise ValueError(f'No {role!r} split in this config; valid: {list(self.data.eval_splits)}')
    first = next(iter(self.data.eval_batches(role, jax.process_index(), jax.process_count())))
    for evaluator in self.evaluators:  # Compiles.
      evaluator.update(self.state, self.engine.put_batch(first), first)
    start = time.perf_counter()
    result = trainer.evaluate(self.state, self.engine, self.data, role, None, self.evaluators)
    seconds = time.perf_counter() - start
    n = int(result['num_examples'])
    return {**result, 'examples': n, 'seconds': round(seconds, 2),
            'examples_per_s': round(n / seconds, 1)}


def main(argv):
  del argv
  reporting.quiet_library_logs()
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0]
  predictor = Predictor(config, _WORKDIR.value or os.path.join('runs', name), _AVERAGE.value)
  predictor.task_module.predict_cli(config, predictor.data, predictor.predict_batch,
                                    {'text': _TEXT.value, 'image': _IMAGE.value,
                                     'out': _OUT.value})
  if _EVAL.value:
    result = predictor.timed_eval(_SPLIT.value)
    print(json.dumps({'device': f'{jax.device_count()}x {jax.devices()[0].device_kind}',
                      'split': predictor.data.eval_splits[_SPLIT.value],
                      'average_last': _AVERAGE.value, **result}))


if __name__ == '__main__':
  app.run(main)
