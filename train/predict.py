r"""Input strings -> output strings with a trained seq2seq model (the latest checkpoint
of a run), and the timed decoding of a whole eval split.

  python -m train.predict --config=configs/transformer_g2p.py --text=hello --text=jax
  python -m train.predict --config=configs/transformer_g2p.py --eval \
      [--split=test] [--config.decode.beam_size=4] [--average_last=3] \
      [--workdir=runs/transformer_g2p]

--eval decodes every example of the --split eval set ('test': config.data.test_split,
'validation': config.data.validation_split) and prints the task metrics
(WER/PER, BLEU) and the decoding speed in examples (words, sentences) per second,
compilation excluded. Decoding follows config.decode (beam_size 1: greedy).
"""

import json
import os
import time

import jax
from absl import app, flags
from ml_collections import config_flags

import data as data_lib
from train import checkpoint as checkpoint_lib
from train import parallel, reporting, trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file of the run.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default runs/<config name>).')
_TEXT = flags.DEFINE_multi_string('text', [], 'Input strings to translate.')
_EVAL = flags.DEFINE_bool('eval', False, 'Decode and score the --split eval set, timed.')
_SPLIT = flags.DEFINE_enum('split', 'test', ['validation', 'test'],
                           'Which eval set --eval decodes.')
_AVERAGE = flags.DEFINE_integer('average_last', 1, 'Average the params of this many newest '
                                'checkpoints (Vaswani et al. 2017, Sec. 6.1); 1: the latest.')
flags.mark_flags_as_required(['config'])


def load(config, workdir: str, average_last: int = 1):
  """(data, decode_fn) for the latest checkpoint in `workdir` (or the average of the
  `average_last` newest): decode_fn maps inputs [eval_batch_size, max_length] int32
  to decoded ids (numpy).

  Raises FileNotFoundError when `workdir` has no checkpoint, ValueError for a config
  that is not seq2seq (or bad fields).
  """
  if config.task != 'seq2seq':
    raise ValueError(f"train.predict needs a seq2seq config, got task={config.task!r}")
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'No checkpoints in {directory}; train first: '
                            f'python launch.py --config=... --workdir={workdir}')
  engine = parallel.build(config.parallel)
  trainer.validate(config, engine.num_devices)
  data = data_lib.build(config)
  total_steps = trainer.total_train_steps(config, data.num_train_examples)
  model, task, _, _, init_fn = trainer.build_components(config, total_steps, data.spec,
                                                        engine.axis_name)
  abstract = trainer.abstract_state(init_fn, engine)
  ckpt = checkpoint_lib.Checkpointer(workdir, best_metric='', async_save=False)
  state = (ckpt.restore_latest(abstract, None) if average_last == 1
           else ckpt.restore_average(abstract, average_last))
  ckpt.close()
  if state is None:
    raise FileNotFoundError(f'No readable checkpoint in {directory}')
  state = engine.from_canonical(state)
  predict = engine.predict_step(model=model, task=task)
  return data, lambda inputs: engine.to_local(predict(state, engine.put_batch({'inputs': inputs})))


def timed_eval(data, decode_fn, batch_size: int, role: str = 'test') -> dict:
  """Decodes eval set `role` in batches of `batch_size`; its metrics, the number of
  examples, seconds and examples per second (after one compiling batch).

  Raises ValueError when the config has no such eval set."""
  if role not in data.corpus.eval_sets:
    raise ValueError(f'No {role!r} eval set in this config; valid: {list(data.corpus.eval_sets)}')
  eval_set = data.corpus.eval_sets[role]
  data.translate(eval_set.sources[:1], decode_fn, batch_size)  # Compiles.
  start = time.perf_counter()
  outputs = data.translate(eval_set.sources, decode_fn, batch_size)
  seconds = time.perf_counter() - start
  n = len(outputs)
  return {**data.corpus.score(outputs, eval_set.references), 'examples': n,
          'seconds': round(seconds, 2), 'examples_per_s': round(n / seconds, 1)}


def main(argv):
  del argv
  reporting.quiet_library_logs()
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0]
  data, decode_fn = load(config, _WORKDIR.value or os.path.join('runs', name), _AVERAGE.value)
  for text, output in zip(_TEXT.value, data.translate(_TEXT.value, decode_fn,
                                                      config.eval_batch_size)):
    print(f'{text}\t{output}')
  if _EVAL.value:
    result = timed_eval(data, decode_fn, config.eval_batch_size, _SPLIT.value)
    print(json.dumps({'device': f'{jax.device_count()}x {jax.devices()[0].device_kind}',
                      'split': data.eval_splits[_SPLIT.value], 'beam_size': config.decode.beam_size,
                      'average_last': _AVERAGE.value,
                      **result}))


if __name__ == '__main__':
  app.run(main)
