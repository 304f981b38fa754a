"""CMUdict grapheme-to-phoneme data: split, vocabularies, WER / PER."""

import pytest

from data import g2p


@pytest.fixture(scope='module')
def lexicon():
  return g2p.load_lexicon()


def test_split_is_deterministic_disjoint_and_about_90_5_5(lexicon):
  splits = {s: g2p.split_lexicon(lexicon, s) for s in g2p.SPLITS}
  assert sum(map(len, splits.values())) == len(lexicon) > 100_000
  assert not set(splits['train']) & set(splits['dev'])
  assert not set(splits['train']) & set(splits['test'])
  assert not set(splits['dev']) & set(splits['test'])
  assert 0.04 < len(splits['test']) / len(lexicon) < 0.06
  assert 0.04 < len(splits['dev']) / len(lexicon) < 0.06
  # A function of the word alone (crc32), pinned so published numbers stay comparable:
  # 113,414 / 6,268 / 6,370 words with cmudict 1.1.3.
  assert [len(splits[s]) for s in g2p.SPLITS] == [113_414, 6_268, 6_370]
  assert {w: g2p.split_of(w) for w in ('read', 'jax', 'zebra')} == \
      {'read': 'dev', 'jax': 'dev', 'zebra': 'train'}
  with pytest.raises(ValueError, match=r"'valid'.*\['train', 'dev', 'test'\]"):
    g2p.split_lexicon(lexicon, 'valid')


def test_all_pronunciations_of_a_word_stay_together_and_stress_is_stripped(lexicon):
  assert lexicon['read'] == [('R', 'EH', 'D'), ('R', 'IY', 'D')]
  stressed = g2p.load_lexicon(keep_stress=True)
  assert stressed['read'] == [('R', 'EH1', 'D'), ('R', 'IY1', 'D')]
  assert not any(p[-1].isdigit() for prons in lexicon.values() for pron in prons for p in pron)


def test_vocabularies_map_unknown_tokens_to_unk(lexicon):
  graphemes, phonemes = g2p.vocabularies(g2p.split_lexicon(lexicon, 'train'))
  assert graphemes.tokens[:4] == list(g2p.SPECIALS)
  assert 26 + 4 <= len(graphemes) < 60
  assert len(phonemes) == 39 + 4  # The 39 ARPAbet phonemes without stress.
  ids = graphemes.encode('caté')
  assert ids[-1] == 1 and ids[3] == graphemes.encode([g2p.UNK], eos=False)[0]
  assert graphemes.decode(ids) == ['c', 'a', 't', g2p.UNK]
  assert phonemes.decode(phonemes.encode(['K', 'AE', 'T']) + [5, 6]) == ['K', 'AE', 'T']
  assert graphemes.encode('') == [1]  # An empty word is just </s>.


def test_edit_distance():
  assert g2p.edit_distance('kitten', 'sitting') == 3
  assert g2p.edit_distance([], ['A']) == 1
  assert g2p.edit_distance(['A', 'B'], ['A', 'B']) == 0


def test_wer_per_on_hand_made_cases():
  refs = [[('R', 'EH', 'D'), ('R', 'IY', 'D')],   # read: two pronunciations
          [('K', 'AE', 'T')],                      # cat
          [('D', 'AO', 'G')]]                      # dog
  # Right (second pronunciation), one substitution, one deletion.
  preds = [('R', 'IY', 'D'), ('K', 'AH', 'T'), ('D', 'AO')]
  m = g2p.wer_per(preds, refs)
  assert m['wer'] == pytest.approx(2 / 3)
  assert m['per'] == pytest.approx(2 / 9)
  assert g2p.wer_per([r[0] for r in refs], refs) == {'wer': 0.0, 'per': 0.0}
  with pytest.raises(ValueError, match='2 predictions for 3 references'):
    g2p.wer_per(preds[:2], refs)
