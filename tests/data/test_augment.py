"""Augmentations: time warping on feature batches, speed perturbation and noise on waveforms,
and where each level is allowed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_layouts import build, recordings, write_layout
from torch.utils.data import DataLoader

from speechforge import registry
from speechforge.data.augment import AdditiveNoise, SpeedPerturb, domain, warp_time
from speechforge.data.batching import BucketBatchSampler, UtteranceDataset, collate
from speechforge.data.normalization import Normalizer
from speechforge.recipe import RecipeError, validate_component


def test_every_augmentation_is_registered_with_its_level():
    levels = {name: domain(registry.resolve("augmentations", name)()) for name in registry.names("augmentations")}
    assert levels == {"specaugment": "features", "time_warp": "features", "speed_perturb": "waveform",
                      "noise": "waveform", "vtlp": "filterbank", "tempo": "filterbank", "mel_warp": "features", "level_tilt": "features",
                      "pad_silence": "waveform"}


# --- time warping ----------------------------------------------------------------------


def _ramp_batch(lengths: list[int], width: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel 0 holds the frame index, the others random values; padding is -1."""
    g = torch.Generator().manual_seed(0)
    feats = torch.full((len(lengths), max(lengths), width), -1.0)
    for b, n in enumerate(lengths):
        feats[b, :n, 0] = torch.arange(n, dtype=torch.float32)
        feats[b, :n, 1:] = torch.randn(n, width - 1, generator=g)
    return feats, torch.tensor(lengths)


def test_time_warp_is_a_piecewise_linear_resampling_in_time():
    feats, lens = _ramp_batch([100, 61, 7])
    out = warp_time(feats, lens, 10, torch.Generator().manual_seed(3))
    assert out.shape == feats.shape
    for b, n in enumerate(lens.tolist()):
        src = out[b, :n, 0].numpy()  # where each output frame reads from
        assert src[0] == 0 and src[-1] == pytest.approx(n - 1)
        assert np.all(np.diff(src) > 0)
        kinks = np.abs(np.diff(src, 2)) > 1e-3
        assert kinks.sum() <= 1  # two stretched pieces
        # every channel was read at those times: NumPy's interpolation is the oracle
        for ch in range(1, feats.shape[2]):
            np.testing.assert_allclose(out[b, :n, ch].numpy(), np.interp(src, np.arange(n), feats[b, :n, ch].numpy()),
                                       atol=1e-5)
        assert torch.equal(out[b, n:], feats[b, n:])  # padding untouched
    assert not torch.equal(out[0], feats[0])  # it did warp the long one


def test_time_warp_moves_one_frame_by_at_most_max_warp():
    feats, lens = _ramp_batch([200] * 64)
    out = warp_time(feats, lens, 7, torch.Generator().manual_seed(0))
    moved = (out[..., 0] - torch.arange(200.0)).abs().amax(dim=1)
    assert moved.max() <= 7 + 1e-4 and moved.max() > 3


def test_time_warp_of_zero_is_the_identity():
    feats, lens = _ramp_batch([30, 20])
    assert torch.equal(warp_time(feats, lens, 0), feats)


# --- waveform augmentations ------------------------------------------------------------------


def _peak_hz(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spectrum)) * sr / len(wav)


def test_speed_perturbation_shortens_and_raises_pitch_by_the_factor():
    sr = 16000
    tone = np.sin(2 * np.pi * 440 * np.arange(sr) / sr).astype(np.float32)
    rng = np.random.default_rng(0)
    for factor in (0.9, 1.1):
        out = SpeedPerturb([factor])(tone, sr, rng)
        assert abs(len(out) - sr / factor) <= 1
        assert _peak_hz(out, sr) == pytest.approx(440 * factor, abs=2)
    assert SpeedPerturb([1.0])(tone, sr, rng) is tone


def test_noise_is_added_at_the_drawn_snr(tmp_path):
    sr = 16000
    speech = np.sin(2 * np.pi * 300 * np.arange(8000) / sr).astype(np.float32) * 0.3
    sf.write(tmp_path / "hum.wav", 0.1 * np.sin(2 * np.pi * 50 * np.arange(3000) / sr), sr)
    for files in ([], [tmp_path / "hum.wav"]):
        aug = AdditiveNoise((12.0, 12.0), prob=1.0, noise_files=files)
        out = aug(speech, sr, np.random.default_rng(1))
        noise = out - speech
        snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
        assert snr == pytest.approx(12.0, abs=0.01)
    assert _peak_hz(noise, sr) == pytest.approx(50, abs=3)  # the file's hum, looped to length
    assert AdditiveNoise((0.0, 5.0), prob=0.0, noise_files=[])(speech, sr, np.random.default_rng(1)) is speech


@pytest.mark.parametrize("section,where,reason", [
    ({"name": "noise", "snr_db": [20, 5]}, "data.augment[0].snr_db", "low <= high"),
    ({"name": "speed_perturb", "factors": []}, "data.augment[0].factors", "non-empty list of positive factors"),
    ({"name": "noise", "noise_dir": "."}, "data.augment[0].noise_dir", "no audio files"),
    ({"name": "time_warp", "max_warp": -1}, "data.augment[0].max_warp", "greater than or equal to 0"),
])
def test_augmentation_keys_are_checked_with_their_path(tmp_path, section, where, reason):
    with pytest.raises(RecipeError) as e:
        validate_component("augmentations", section, "data.augment[0]")
    assert str(e.value).startswith(where) and reason in str(e.value)


# --- where each level applies -------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["hw4p2", "synth"])
def test_a_feature_source_refuses_a_waveform_augmentation_by_key(tmp_path, dataset):
    section = {"name": dataset, "root": str(tmp_path),
               "augment": [{"name": "specaugment"}, {"name": "speed_perturb"}]}
    spec = validate_component("datasets", section, "data")
    with pytest.raises(RecipeError) as e:
        spec.build()
    assert str(e.value).startswith("data.augment[1].name: 'speed_perturb' changes the waveform")


def test_stored_manifest_features_cannot_take_a_waveform_augmentation(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((80, 30), np.float32))
    (tmp_path / "train.jsonl").write_text('{"id": "a", "features": "a.npy", "text": "A"}\n')
    corpus = build("jsonl", tmp_path, dev=None, augment=[{"name": "noise"}])
    with pytest.raises(RecipeError, match=r"^data.augment\[0\].name: 'noise' changes the waveform, but 1 training"):
        corpus.split("train")


def _items(corpus, role: str) -> list[dict]:
    dataset = UtteranceDataset(corpus.split(role).utterances, Normalizer(), None)
    return [dataset[i] for i in range(len(dataset))]


def test_waveform_augmentation_recomputes_training_features_only(tmp_path):
    root = write_layout("librispeech", tmp_path / "ls", recordings("george", range(4)), recordings("theo", range(2)))
    plain = build("librispeech", root)
    faster = build("librispeech", root, augment=[{"name": "speed_perturb", "factors": [1.25]}, {"name": "specaugment"}])
    assert [s.name for s in faster.augment] == ["specaugment"]  # the trainer's batch-level list
    for utt, item in zip(faster.split("train").utterances, _items(faster, "train")):
        assert abs(item["feats"].shape[0] - utt.num_frames / 1.25) <= 2
    for a, b in zip(_items(plain, "dev"), _items(faster, "dev")):
        assert torch.equal(a["feats"], b["feats"])  # dev reads the cache


def test_an_augmentation_that_does_nothing_gives_the_cached_features(tmp_path):
    """The on-the-fly pipeline and prepare compute the same thing."""
    root = write_layout("kaldi", tmp_path / "k", recordings("jackson", range(3)))
    corpus = build("kaldi", root, dev=None,
                   augment=[{"name": "speed_perturb", "factors": [1.0]}, {"name": "noise", "prob": 0.0}])
    for utt, item in zip(corpus.split("train").utterances, _items(corpus, "train")):
        np.testing.assert_array_equal(item["feats"].numpy(), np.load(utt.feats).T)


def test_augmented_loading_is_reproducible_from_the_seed_with_workers(tmp_path):
    root = write_layout("jsonl", tmp_path / "m", recordings("nicolas", range(6)))
    corpus = build("jsonl", root, dev=None, augment=[{"name": "speed_perturb"}, {"name": "noise", "prob": 1.0}])
    split = corpus.split("train")
    dataset = UtteranceDataset(split.utterances, Normalizer(), None)
    sampler = BucketBatchSampler([u.num_frames for u in split.utterances], None, 2, seed=0)

    def epoch(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [b.feats for b in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2)]

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))


def test_time_mask_ratio_bounds_each_mask_by_its_own_utterance_length():
    # ESPnet's time_mask_width_ratio_range: a mask is up to ratio x the length, so a 40-frame
    # utterance gets masks of at most 2 frames while a 400-frame one gets up to 20
    aug = validate_component("augmentations", {"name": "specaugment", "freq_masks": 0, "time_masks": 1,
                                               "time_width_ratio": 0.05}, "augment").build()
    lengths = torch.tensor([400, 40, 19])
    widest = torch.zeros(3, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        masked = aug(torch.ones(3, 400, 4), lengths, generator=g)[..., 0] == 0  # (B, T)
        widest = torch.maximum(widest, masked.sum(1))
        assert not masked[1, 40:].any() and not masked[2].any()  # inside the utterance; 19 x 0.05 < 1 frame
    assert widest.tolist() == [20, 2, 0]


def test_time_mask_ratio_is_checked_with_its_path():
    with pytest.raises(RecipeError, match=r"augment\[0\]\.time_width_ratio"):
        validate_component("augmentations", {"name": "specaugment", "time_width_ratio": 1.5}, "augment[0]")


# --- level and tilt ------------------------------------------------------------------------


def test_level_tilt_adds_one_straight_line_per_utterance_to_real_frames_only():
    feats = torch.randn(4, 30, 80, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([30, 25, 10, 1])
    aug = registry.resolve("augmentations", "level_tilt")(level=1.0, tilt=0.5)
    out = aug(feats, lengths, torch.Generator().manual_seed(1))
    for i, n in enumerate(lengths.tolist()):
        added = out[i, :n] - feats[i, :n]  # (n, F): the same line in every real frame
        assert torch.allclose(added, added[:1].expand_as(added), atol=1e-6)
        line = added[0]
        steps = line[1:] - line[:-1]
        assert torch.allclose(steps, steps[:1].expand_as(steps), atol=1e-5)  # straight
        assert abs(float(line.mean())) <= 1.0 + 1e-5 and abs(float(line[-1] - line.mean())) <= 0.5 + 1e-5
        assert torch.equal(out[i, n:], feats[i, n:])  # the padding untouched
    assert not torch.allclose(out[0] - feats[0], out[1] - feats[1])  # each utterance its own


def test_level_tilt_bends_add_a_smooth_curve_and_leave_the_line_alone_without_them():
    feats = torch.zeros(3, 5, 40)
    lengths = torch.tensor([5, 5, 5])
    plain = registry.resolve("augmentations", "level_tilt")(level=1.0, tilt=0.5)
    bent = registry.resolve("augmentations", "level_tilt")(level=1.0, tilt=0.5, bends=0.3, orders=3)
    line = plain(feats, lengths, torch.Generator().manual_seed(1))[:, 0]  # (B, F)
    curve = bent(feats, lengths, torch.Generator().manual_seed(1))[:, 0]
    extra = curve - line  # the same level and tilt were drawn first: the rest is the curve
    assert not torch.allclose(extra, torch.zeros_like(extra))
    assert float(extra.abs().max()) <= 3 * 0.3 + 1e-5
    # the curve has no mean and no straight-line part: cosines of 2+ half-periods only
    assert torch.allclose(extra.mean(1), torch.zeros(3), atol=1e-5)
    jumps = (extra[:, 1:] - extra[:, :-1]).abs().max()
    assert float(jumps) < 0.3 * 3 * math.pi * 4 / 40  # smooth: slope of the 4-half-period cosine at most


# --- silence padding -------------------------------------------------------------------------


def test_pad_silence_keeps_the_recording_and_surrounds_it_with_quiet_noise():
    wav = (0.3 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)
    aug = registry.resolve("augmentations", "pad_silence")(max_seconds=0.5, level_db=(-40.0, -40.0), prob=1.0)
    rng = np.random.default_rng(0)
    out = aug(wav, 16000, rng)
    lead, trail = (int(s * 16000) for s in np.random.default_rng(0).uniform(0.0, 0.5, 3)[1:])
    assert out.dtype == np.float32 and len(out) == len(wav) + lead + trail
    np.testing.assert_array_equal(out[lead : lead + len(wav)], wav)
    pad = np.concatenate([out[:lead], out[lead + len(wav):]])
    level_db = 10 * np.log10(np.mean(pad.astype(np.float64) ** 2) / np.mean(wav.astype(np.float64) ** 2))
    assert abs(level_db - -40.0) < 1.0
    never = registry.resolve("augmentations", "pad_silence")(prob=0.0)
    assert never(wav, 16000, np.random.default_rng(0)) is wav
