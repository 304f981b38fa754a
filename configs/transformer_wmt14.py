r"""Transformer base on WMT14 English -> German: the setup of Vaswani et al. 2017, Sec. 5.

  pip install tensorflow-cpu && python -m data.prepare --dataset=wmt14_translate/de-en
  python launch.py --config=configs/transformer_wmt14.py

6+6 layers, d_model 512, 8 heads, d_ff 2048, post-LN, dropout 0.1, label smoothing 0.1;
one shared 32k SentencePiece vocabulary (the paper: ~37k shared BPE) with all three
embedding matrices tied (Sec. 3.4). Adam beta1 0.9, beta2 0.98, eps 1e-9 and the
inverse-square-root schedule of Eq. 3 with 4000 warmup steps: peak lr =
512^-0.5 * 4000^-0.5 = 7.0e-4. 100k steps. Batches of 96 packed rows of 256 tokens:
24,576 source and 24,576 target token slots (the paper: ~25k source + 25k target
tokens). Validation (every 10k steps, selects the checkpoint by BLEU): newstest2013;
test, once at the end: newstest2014; beam 4, alpha 0.6, sacrebleu BLEU. The paper
reports the average of the last 5 checkpoints (Sec. 6.1, written every 10 minutes);
this config tests the checkpoint selected on newstest2013. For the paper's number,
train with --config.checkpoint.keep=5, then `python -m train.predict
--config=configs/transformer_wmt14.py --eval --average_last=5`.
"""

from configs import common


def get_config():
  c = common.get_seq2seq_config()
  c.model.name = 'transformer_base'
  c.model.share_embeddings = 'all'
  c.model.dropout_rate = 0.1
  c.model.max_length = 256
  c.data.source = 'tfds'
  c.data.name = 'wmt14_translate/de-en'
  c.data.source_lang = 'en'
  c.data.target_lang = 'de'
  c.data.validation_split = 'validation'  # newstest2013.
  c.data.test_split = 'test'       # newstest2014.
  c.data.vocab_size = 32000
  c.data.vocab_dir = ''            # '' = the TFDS data dir.
  c.data.vocab_train_pairs = 1000000  # Sentence pairs the SentencePiece model sees.
  c.data.max_length = 256
  c.data.length_policy = 'filter'
  c.data.pack = True
  c.decode.beam_size = 4
  c.decode.alpha = 0.6
  c.decode.max_length = 256
  c.batch_size = 96
  c.eval_batch_size = 96
  c.num_train_steps = 100000
  c.learning_rate = 512 ** -0.5 * 4000 ** -0.5
  c.warmup_steps = 4000
  c.optim.schedule = 'rsqrt'
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-9
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 0.0
  c.label_smoothing = 0.1
  c.compute_dtype = 'bfloat16'
  c.eval_every_steps = 10000
  c.checkpoint_every_steps = 5000
  c.checkpoint.best_metric = 'bleu'
  c.checkpoint.best_mode = 'max'
  return c
