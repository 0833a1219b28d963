"""Normalizers, and the spectral-envelope smoothing (cepstral_order) each can do first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speechforge import recipe as recipe_mod
from speechforge.data.normalization import envelope_projection, from_state, global_mvn, none, speaker_mvn, utterance_mvn
from speechforge.recipe import RecipeError

BINS = 80
REPO = Path(__file__).resolve().parents[2]


def _frames(rng: np.random.Generator, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel frames: a slowly varying envelope (formants) plus a ripple of period 4 bins
    (resolved pitch harmonics). Returns (frames, envelope), both (n, BINS)."""
    bins = np.arange(BINS)
    envelope = (np.cos(2 * np.pi * bins / BINS * rng.uniform(0.5, 2.5, (n, 1))) * rng.uniform(1, 3, (n, 1))
                + rng.normal(0, 1, (n, 1)))
    ripple = 2.0 * np.cos(2 * np.pi * bins / 4.0 + rng.uniform(0, 2 * np.pi, (n, 1)))
    return (envelope + ripple).astype(np.float32), envelope.astype(np.float32)


def test_cepstral_order_keeps_the_envelope_and_drops_the_pitch_ripple():
    frames, envelope = _frames(np.random.default_rng(0))
    smoothed = none(cepstral_order=20)(frames)
    assert np.abs(frames - envelope).mean() > 1.0  # the ripple is there before
    assert np.abs(smoothed - envelope).mean() < 0.1  # and gone after, the envelope intact


def test_the_projection_keeps_what_it_keeps_and_all_of_it_at_full_order():
    p = envelope_projection(BINS, 20)
    np.testing.assert_allclose(p @ p, p, atol=1e-5)  # a projection: smoothing twice changes nothing
    assert np.trace(p) == pytest.approx(20.0, abs=1e-4)
    np.testing.assert_allclose(envelope_projection(BINS, BINS), np.eye(BINS), atol=1e-5)


@pytest.mark.parametrize("make", [lambda: global_mvn(cepstral_order=16), lambda: utterance_mvn(cepstral_order=16)])
def test_a_smoothing_normalizer_normalizes_alike_after_its_saved_state_is_loaded(make):
    frames, _ = _frames(np.random.default_rng(1))
    normalizer = make()
    normalizer.update(frames)
    out = normalizer(frames)
    assert np.abs(out.mean(0)).max() < 1e-4  # mean over the frames it saw: zero, smoothed or not
    reloaded = from_state(normalizer.state())
    assert reloaded.cepstral_order == 16
    np.testing.assert_allclose(reloaded(frames), out, atol=1e-5)


def test_cepstral_order_zero_leaves_frames_as_they_are():
    frames, _ = _frames(np.random.default_rng(2))
    np.testing.assert_array_equal(none()(frames), frames)


def test_cepstral_order_as_large_as_the_bins_is_refused_saying_why():
    frames, _ = _frames(np.random.default_rng(3))
    with pytest.raises(ValueError, match="cepstral_order 80 keeps every one of the 80 mel bins"):
        none(cepstral_order=80)(frames)


def test_a_negative_cepstral_order_is_refused_by_its_recipe_key():
    with pytest.raises(RecipeError) as err:
        recipe_mod.validate_component("normalizers", {"name": "global_mvn", "cepstral_order": -1}, "data.normalization")
    assert err.value.problems[0][0] == "data.normalization.cepstral_order"


# --- speaker_mvn ---------------------------------------------------------------------------


def _speaker_frames(offset: float, seed: int, n: int = 200) -> np.ndarray:
    return (offset + np.random.default_rng(seed).normal(0.0, 2.0, (n, BINS))).astype(np.float32)


def test_speaker_mvn_removes_each_speakers_own_mean_test_speakers_included():
    norm = speaker_mvn()
    norm.update(_speaker_frames(+3.0, 0), "a")  # training speakers
    norm.update(_speaker_frames(-3.0, 1), "b")
    norm.observe(_speaker_frames(+8.0, 2), "c")  # a test speaker: frames, no training
    for spk, offset, seed in (("a", 3.0, 0), ("b", -3.0, 1), ("c", 8.0, 2)):
        out = norm(_speaker_frames(offset, seed), spk)
        assert np.abs(out.mean(0)).max() < 1e-4
        assert abs(float(out.std(0).mean()) - 1.0) < 0.05  # the within-speaker spread, not the +-3 between them
    # a speaker the statistics never saw, or none named: the training mean (0 here)
    np.testing.assert_allclose(norm(_speaker_frames(0.0, 3), "z"), norm(_speaker_frames(0.0, 3)), atol=1e-6)
    assert abs(float(norm(_speaker_frames(0.0, 3)).mean())) < 0.05


def test_speaker_mvn_normalizes_alike_after_its_saved_state_is_loaded():
    norm = speaker_mvn(cepstral_order=16)
    norm.update(_speaker_frames(1.0, 0), "a")
    norm.observe(_speaker_frames(-2.0, 1), "b")
    reloaded = from_state(json.loads(json.dumps(norm.state())))
    for spk in ("a", "b", None):
        np.testing.assert_allclose(reloaded(_speaker_frames(0.5, 2), spk), norm(_speaker_frames(0.5, 2), spk), atol=1e-5)


def test_a_run_with_speaker_mvn_has_its_test_speakers_means_from_their_own_recordings(tmp_path):
    from audio_layouts import recordings, write_layout

    from speechforge import experiment

    root = write_layout("librispeech", tmp_path / "ls", recordings("theo") + recordings("george"), recordings("jackson"))
    raw = recipe_mod.read_toml(REPO / "recipes" / "char_tiny.toml")
    raw["data"] = {"name": "librispeech", "root": str(root), "test": None, "cache_dir": str(tmp_path / "cache"),
                   "normalization": {"name": "speaker_mvn"}}
    exp = experiment.build(recipe_mod.validate(raw), tmp_path / "run", log=lambda m: None)
    state = exp.normalizer.state()
    assert sorted(state["speakers"]) == ["11", "12", "14"]  # george, jackson (dev only), theo
    dev = exp.corpus.split("dev").utterances
    assert {u.speaker for u in dev} == {"12"}
    frames = np.concatenate([np.load(u.feats).T for u in dev])
    np.testing.assert_allclose(state["speakers"]["12"], frames.mean(0), atol=1e-3)

    # decoding later with statistics that never met jackson: his mean comes from the split decoded
    del state["speakers"]["12"]
    exp.normalizer = from_state(state)
    lines: list[str] = []
    experiment.meet_new_speakers(exp, ["dev"], lines.append)
    np.testing.assert_allclose(exp.normalizer.state()["speakers"]["12"], frames.mean(0), atol=1e-3)
    assert lines == ["data.normalization: 1 speaker(s) the run has not met (12): their means come from the "
                     "recordings decoded now"]
