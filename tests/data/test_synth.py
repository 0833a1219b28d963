"""The built-in synthetic corpus: sentences, espeak speech, the HW4P2 layout."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from speechforge.data.errors import DataError
from speechforge.data.features import fbank, read_audio
from speechforge.data.synth import build_corpus
from speechforge.data.synth.corpus import SPLITS, plan_corpus, split_variants
from speechforge.data.synth.speech import Channel, Voice, apply_channel, espeak, synthesize
from speechforge.data.synth.text import SentenceGenerator, spell_number, spell_ordinal, spell_year

TRANSCRIPT = re.compile(r"^[A-Z']+( [A-Z']+)*$")
SIZES = {"train-clean-100": 6, "dev-clean": 2, "test-clean": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    stats = build_corpus(out, *SIZES.values(), seed=0, save_wav=True, workers=1, progress=False)
    return out, stats


# ---------------------------------------------------------------- text


def test_same_seed_gives_the_same_sentences_and_another_seed_others():
    first = SentenceGenerator(7).sentences(50)
    assert SentenceGenerator(7).sentences(50) == first
    assert SentenceGenerator(8).sentences(50) != first


def test_sentences_are_librispeech_style_and_3_to_15_words():
    sentences = SentenceGenerator(0).sentences(2000)
    for s in sentences:
        assert TRANSCRIPT.match(s), s
        assert 3 <= len(s.split()) <= 15, s
    words = {w for s in sentences for w in s.split()}
    assert len(words) > 300
    assert {"DON'T", "IT'S", "O'CLOCK", "JULY", "TWENTY", "TURN", "OFF", "LIGHTS"} <= words
    assert set("".join(sentences)) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")


def test_numbers_dates_and_years_are_spelled_as_spoken():
    assert spell_number(0) == "ZERO"
    assert spell_number(23) == "TWENTY THREE"
    assert spell_number(105) == "ONE HUNDRED AND FIVE"
    assert spell_number(3050) == "THREE THOUSAND AND FIFTY"
    assert spell_number(7845) == "SEVEN THOUSAND EIGHT HUNDRED AND FORTY FIVE"
    assert spell_ordinal(4) == "FOURTH"
    assert spell_ordinal(21) == "TWENTY FIRST"
    assert spell_ordinal(30) == "THIRTIETH"
    assert spell_year(1987) == "NINETEEN EIGHTY SEVEN"
    assert spell_year(1905) == "NINETEEN OH FIVE"
    assert spell_year(2005) == "TWO THOUSAND AND FIVE"


# ---------------------------------------------------------------- speech


def test_espeak_output_depends_only_on_the_utterance_not_on_what_ran_before():
    voice = Voice("en-gb-scotland", "klatt4", rate=160, pitch=40)
    first, rate = espeak("TURN OFF THE KITCHEN LIGHTS", voice)
    espeak("SOMETHING ELSE IN BETWEEN", Voice("en-us", "f3"))
    again, _ = espeak("TURN OFF THE KITCHEN LIGHTS", voice)
    assert rate == 22050
    assert len(first) > 0.5 * rate
    np.testing.assert_array_equal(first, again)


def test_voice_settings_change_the_speech():
    text = "I DON'T KNOW WHAT TIME IT IS"
    slow = synthesize(text, Voice("en-us", "m3", rate=130))
    fast = synthesize(text, Voice("en-us", "m3", rate=210))
    assert len(slow) > 1.3 * len(fast)


def test_unknown_voice_or_variant_is_an_error_not_a_silent_default():
    with pytest.raises(ValueError, match="variant 'nosuchvariant'"):
        espeak("HELLO", Voice("en-us", "nosuchvariant"))
    with pytest.raises(ValueError, match="voice 'xx-nowhere'"):
        espeak("HELLO", Voice("xx-nowhere", "m1"))


@pytest.mark.parametrize("noise", ["white", "pink"])
def test_channel_adds_noise_at_the_asked_snr_and_sets_the_peak(noise):
    sr = 16000
    speech = 0.3 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)  # steady, so every sample is "active"
    channel = Channel(snr_db=10.0, noise=noise, peak_dbfs=-6.0, lead_s=0.25, trail_s=0.5)
    out = apply_channel(speech, channel, np.random.default_rng(0))
    assert out.dtype == np.float32 and len(out) == sr + int(0.25 * sr) + int(0.5 * sr)
    assert 20 * np.log10(np.abs(out).max()) == pytest.approx(-6.0, abs=0.01)
    # Undo the gain with the known clean part, then measure the noise.
    lead = slice(0, int(0.25 * sr))
    body = slice(int(0.25 * sr), int(0.25 * sr) + sr)
    gain = np.dot(out[body], speech) / np.dot(speech, speech)
    noise_power = np.mean((out[body] / gain - speech) ** 2)
    snr = 10 * np.log10(np.mean(speech**2) / noise_power)
    assert snr == pytest.approx(10.0, abs=0.5)
    assert np.std(out[lead]) > 0  # the padding is noise, not digital silence


# ---------------------------------------------------------------- corpus


def test_tiny_corpus_has_the_hw4p2_layout(tiny):
    out, stats = tiny
    for split, n in SIZES.items():
        fbank_ids = sorted(p.stem for p in (out / split / "fbank").glob("*.npy"))
        text_ids = sorted(p.stem for p in (out / split / "text").glob("*.npy"))
        wav_ids = sorted(p.stem for p in (out / split / "wav").glob("*.wav"))
        assert len(fbank_ids) == n
        assert fbank_ids == text_ids == wav_ids  # test-clean keeps its text, for CER
        assert all(i.startswith("synth-") for i in fbank_ids)
        assert stats["splits"][split]["utterances"] == n
    assert json.loads((out / "corpus.json").read_text()) == stats
    assert stats["seed"] == 0 and stats["generator"].startswith("speechforge.synth")


def test_features_are_80_bin_float32_and_hold_speech(tiny):
    out, _ = tiny
    for path in sorted(out.glob("*/fbank/*.npy")):
        feats = np.load(path)
        assert feats.dtype == np.float32 and feats.ndim == 2 and feats.shape[0] == 80
        assert 100 <= feats.shape[1] <= 800  # 1 to 8 seconds at 100 frames/s
        assert feats.std() > 1.0
        # Speech lives in the low mel bins; there the loudest frame stands
        # well above the quietest (noise-only padding). At the lowest SNR (5 dB)
        # this gap measured 2.0 (natural log, i.e. 8.7 dB).
        low_band = feats[3:30].mean(axis=0)
        assert low_band.max() - np.percentile(low_band, 5) > 1.5, path.name


def test_saved_wav_gives_back_the_saved_features(tiny):
    out, _ = tiny
    wav_path = sorted((out / "dev-clean" / "wav").glob("*.wav"))[0]
    feats = np.load(out / "dev-clean" / "fbank" / f"{wav_path.stem}.npy")
    np.testing.assert_allclose(fbank(read_audio(wav_path)), feats, atol=1e-5)


def test_transcripts_are_character_arrays_of_uppercase_and_apostrophe(tiny):
    out, _ = tiny
    for path in sorted(out.glob("*/text/*.npy")):
        chars = np.load(path)
        assert chars.ndim == 1 and chars.dtype.kind == "U" and chars.dtype.itemsize == 4  # '<U1'
        assert TRANSCRIPT.match("".join(chars)), path.name


def test_speakers_and_sentences_do_not_cross_splits(tiny):
    _, stats = tiny
    voices = [set(stats["splits"][s]["voices"]) for s in SPLITS]
    assert not (voices[0] & voices[1] or voices[0] & voices[2] or voices[1] & voices[2])
    # The default-size plan, without synthesis: whole variants are held out.
    plan = plan_corpus(1500, 100, 100, seed=0)
    variants = {s: {u.voice.variant for u in plan if u.split == s} for s in SPLITS}
    texts = {s: {u.text for u in plan if u.split == s} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not variants[a] & variants[b]
                assert not texts[a] & texts[b]
    assert sum(len(v) for v in split_variants(0).values()) == len(set().union(*split_variants(0).values()))


def test_same_seed_plans_the_same_corpus():
    first = plan_corpus(20, 5, 5, seed=3)
    assert plan_corpus(20, 5, 5, seed=3) == first
    other = plan_corpus(20, 5, 5, seed=4)
    assert [u.text for u in other] != [u.text for u in first]
    assert [u.voice.speaker for u in other] != [u.voice.speaker for u in first]


def test_corpus_is_identical_with_one_worker_or_two(tiny, tmp_path):
    out, _ = tiny
    build_corpus(tmp_path, *SIZES.values(), seed=0, workers=2, progress=False)
    for path in sorted(out.glob("*/*/*.npy")):
        np.testing.assert_array_equal(np.load(tmp_path / path.relative_to(out)), np.load(path))


def test_refuses_to_write_over_an_existing_corpus(tiny):
    out, _ = tiny
    with pytest.raises(DataError, match="already holds train-clean-100"):
        build_corpus(out, 1, 1, 1, progress=False)


def test_a_corpus_made_with_other_sizes_is_refused_by_name(tiny):
    from speechforge.data.hw4p2 import synth

    out, _ = tiny
    synth(root=str(out), train_utterances=6, dev_utterances=2, test_utterances=2).prepare()  # its own sizes: fine
    with pytest.raises(DataError, match=r"corpus\.json: holds a corpus of 6/2/2 .* asks for 4000/2/2, seed 0"):
        synth(root=str(out), train_utterances=4000, dev_utterances=2, test_utterances=2).prepare()


def test_each_synthetic_utterance_is_spoken_by_its_voice_for_speaker_normalization(tiny):
    from speechforge.data.hw4p2 import synth

    out, _ = tiny
    corpus = synth(root=str(out), train_utterances=6, dev_utterances=2, test_utterances=2)
    listed = {json.loads(line)["id"]: json.loads(line)["speaker"]
              for line in (out / "train-clean-100" / "utterances.jsonl").read_text().splitlines()}
    utterances = corpus.split("train").utterances
    assert {u.id: u.speaker for u in utterances} == listed
    assert all("+" in u.speaker for u in utterances)  # language+variant
