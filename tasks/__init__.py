"""Tasks as plug-ins: `config.task` names a module that tells the engine everything
about a problem; train/trainer.py, train/bench.py and train/predict.py never name a task.

A task module defines:
  check(config)                  cheap config checks before any data is read; returns
                                 the model built (not initialised) with placeholder
                                 sizes; raises ValueError naming the field.
  build_data(config)             the data object: train_iterator(process_index,
                                 process_count), eval_batches(role, ...), eval_splits
                                 {'validation'?, 'test'}, num_train_examples, and spec
                                 (data.pipeline.DataSpec: model kwargs, init inputs).
  build_task(config, spec)       the Task (a tasks.common.Task): apply, per-example
                                 (token, pixel) loss, weights, (sum, count) metrics,
                                 predict (see tasks.classification), and augment (the
                                 identity unless it augments in the train step).
  evaluators(config, data, predict_fn, engine)
                                 metrics that are not per-example averages (WER/BLEU,
                                 mIoU, mAP), computed from `predict_fn(variables, batch)`
                                 (tasks.evaluators).
  bench_inputs(config, image_size, batch_size, rng)
                                 (spec, random host batch) for train.bench.
  predict_cli(config, data, predict_batch, inputs)
                                 what `python -m train.predict --text/--image` does.
  PREDICT_INPUTS                 the train.predict flags predict_cli reads ('text',
                                 'image', 'out'); others are refused.

Adding a task: write tasks/<name>.py with these functions (and its data module and
configs), then add one line to REGISTRY below.
"""

import difflib
import types

from tasks import classification, detection, segmentation, seq2seq

REGISTRY = {
    'classification': classification,
    'seq2seq': seq2seq,
    'segmentation': segmentation,
    'detection': detection,
}


def get(name: str) -> types.ModuleType:
  """The task module registered as `name`. Raises ValueError listing the valid names."""
  if name not in REGISTRY:
    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(f'Unknown task {name!r}.{hint} Valid: {sorted(REGISTRY)}')
  return REGISTRY[name]
