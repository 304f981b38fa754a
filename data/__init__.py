"""Input data: `data.build(config)` returns what the trainer reads for config.task."""


def build(config):
  """pipeline.ImageData (task 'classification') or seq2seq.Seq2SeqData ('seq2seq').

  Raises ValueError for other tasks; the datasets' own errors (missing data) propagate.
  """
  # Imported here so that image-only runs never import the text stack and vice versa.
  if config.task == 'classification':
    from data import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.ImageData(config)
  if config.task == 'seq2seq':
    from data import seq2seq  # pylint: disable=import-outside-toplevel
    return seq2seq.Seq2SeqData(config)
  raise ValueError(f"Unknown task {config.task!r}; valid: ['classification', 'seq2seq']")
