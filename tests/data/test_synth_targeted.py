"""Targeted synthetic speech: the voices say a user's word list or sentences, recorded at the
user's rate."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from speechforge.cli import main
from speechforge.data.errors import DataError
from speechforge.data.features import fbank, read_audio
from speechforge.data.fsdd import WORDS
from speechforge.data.hw4p2 import synth
from speechforge.data.synth.corpus import plan_corpus
from speechforge.data.synth.targeted import TargetText


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny corpus of the ten digit words, at FSDD's 8 kHz, made through the command line."""
    out = tmp_path_factory.mktemp("digits")
    assert main(["--quiet", "data", "synth", "--out", str(out), "--train", "10", "--dev", "2", "--test", "2",
                 "--words", *WORDS, "--recording-rate", "8000", "--min-seconds", "0", "--wav"]) == 0
    return out


def test_a_word_list_is_dealt_evenly_in_a_seeded_order():
    deck = TargetText.from_words(list(WORDS)).deck("seed")
    said = [deck.sentence() for _ in range(100)]
    assert Counter(said) == {w: 10 for w in WORDS}
    again = TargetText.from_words(list(WORDS)).deck("seed")
    assert [again.sentence() for _ in range(100)] == said


def test_words_per_utterance_strings_that_many_words_together():
    deck = TargetText.from_words(["one", "Two"], (2, 4)).deck("s")
    lengths = {len(deck.sentence().split()) for _ in range(200)}
    assert lengths == {2, 3, 4}
    assert set(" ".join(deck.sentence() for _ in range(20)).split()) == {"ONE", "TWO"}


def test_a_sentence_file_is_cleaned_and_a_bad_line_named(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("turn on  the lights\n\nit's  late\n")
    assert TargetText.from_file(good).items == ("TURN ON THE LIGHTS", "IT'S LATE")
    bad = tmp_path / "bad.txt"
    bad.write_text("call mum\nset 7 timers\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: 'SET 7 TIMERS' holds '7'.*spell numbers out"):
        TargetText.from_file(bad)


def test_the_plan_says_only_the_users_text_and_keeps_voices_apart():
    plan = plan_corpus(40, 10, 10, seed=0, target=TargetText.from_words(list(WORDS)))
    assert {u.text for u in plan} == set(WORDS)
    train = {u.voice.variant for u in plan if u.split == "train-clean-100"}
    assert not train & {u.voice.variant for u in plan if u.split != "train-clean-100"}


def test_the_corpus_says_the_words_recorded_at_8khz_without_energy_above_4khz(digits):
    stats = json.loads((digits / "corpus.json").read_text())
    assert stats["text"] == {"kind": "words", "words": list(WORDS), "words_per_utterance": [1, 1]}
    assert stats["recording"] == {"rate": 8000, "min_seconds": 0.0}
    records = [json.loads(line) for line in (digits / "train-clean-100" / "utterances.jsonl").read_text().splitlines()]
    assert {r["text"] for r in records} == set(WORDS)
    assert max(r["seconds"] for r in records) < 1.5  # not padded to the grammar corpus's 1.5 s
    wav = sorted((digits / "train-clean-100" / "wav").glob("*.wav"))[0]
    assert sf.info(wav).samplerate == 8000
    feats = np.load(digits / "train-clean-100" / "fbank" / f"{wav.stem}.npy")  # (80, T) at 16 kHz
    # the corpus resamples with torch, read_audio with numpy: equal to rounding where there is
    # speech; in the empty band above 4 kHz, log energies near the floor drift by up to 0.08
    read = fbank(read_audio(wav, 16000))
    np.testing.assert_allclose(read[:62], feats[:62], atol=1e-4)
    np.testing.assert_allclose(read[62:], feats[62:], atol=0.2)
    # mel bins 62-79 lie above 4 kHz: an 8 kHz recording has nothing there, its speech band does
    assert feats[:40].mean() - feats[62:].mean() > 8.0


def test_a_corpus_made_from_other_text_or_at_another_rate_is_refused(digits):
    same = dict(root=str(digits), train_utterances=10, dev_utterances=2, test_utterances=2)
    synth(**same, words=list(WORDS), recording_rate=8000, min_seconds=0.0).prepare()  # its own: fine
    with pytest.raises(DataError, match=r"made from other text or recordings \(text .*grammar.* in the recipe"):
        synth(**same, recording_rate=8000, min_seconds=0.0).prepare()
    with pytest.raises(DataError, match=r"recording \{'rate': 8000, 'min_seconds': 0.0\} there, \{'rate': 16000"):
        synth(**same, words=list(WORDS), min_seconds=0.0).prepare()
