"""Vocal tract length perturbation: Kaldi's VTLN warp of the mel filterbank, one factor an
utterance, computed while an audio source reads its training recordings."""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch
from audio_layouts import build, recordings, write_layout

from speechforge.data.augment import VTLP, MelWarp, OnTheFlyFeatures, Tempo, domain, warp_mel_bins
from speechforge.data.batching import UtteranceDataset
from speechforge.data.features import fbank_torch, kaldi_mel_banks
from speechforge.data.normalization import Normalizer
from speechforge.recipe import RecipeError, validate_component


@pytest.mark.parametrize("sample_rate, bins, fft", [(16000, 80, 512), (8000, 23, 256)])
@pytest.mark.parametrize("warp", [0.88, 1.0, 1.12])
def test_warped_mel_banks_are_kaldis_vtln_banks(sample_rate, bins, fft, warp):
    opts, frame = knf.MelBanksOptions(), knf.FrameExtractionOptions()
    opts.num_bins, frame.samp_freq = bins, sample_rate
    kaldi = np.array(knf.MelBanks(opts, frame, warp).get_matrix())  # (bins, fft / 2 + 1), the oracle
    ours = kaldi_mel_banks(bins, fft, sample_rate, vtln_warp=warp).numpy()
    np.testing.assert_allclose(ours[:, : kaldi.shape[1]], kaldi, atol=1e-4)


def test_a_warp_above_one_moves_a_tone_into_the_bin_of_a_higher_frequency():
    sr, t = 16000, np.arange(16000) / 16000

    def peak_bin(freq: float, warp: float) -> int:
        wav = torch.from_numpy((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32))[None]
        feats, _ = fbank_torch(wav, sample_rate=sr, vtln_warp=warp)
        return int(feats[0].mean(1).argmax())

    # the warp maps f to f / 1.1 in the middle of the band: a 1 kHz tone reads as 1.1 kHz does unwarped
    assert peak_bin(1000.0, 1.1) == peak_bin(1100.0, 1.0) > peak_bin(1000.0, 1.0)
    assert peak_bin(1000.0, 1 / 1.1) == peak_bin(1000.0 / 1.1, 1.0) < peak_bin(1000.0, 1.0)


def test_vtlp_draws_a_factor_per_utterance_from_its_range():
    wav = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    vtlp, rng = VTLP((0.9, 1.1)), np.random.default_rng(1)
    outputs = [vtlp(wav, 16000, 80, rng) for _ in range(3)]
    assert all(o.shape == (80, 48) for o in outputs)
    assert not np.allclose(outputs[0], outputs[1])
    factors = np.random.default_rng(1).uniform(0.9, 1.1, 3)
    expected, _ = fbank_torch(torch.from_numpy(wav)[None], vtln_warp=float(factors[2]))
    np.testing.assert_allclose(outputs[2], expected[0].numpy(), atol=1e-5)


def test_tempo_spaces_the_frames_by_its_factor_and_keeps_each_frames_spectrum():
    sr, t = 16000, np.arange(16000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 700.0 * t)).astype(np.float32)
    plain = fbank_torch(torch.from_numpy(wav)[None])[0][0].numpy()  # (80, 98)
    faster = Tempo((1.25, 1.25))(wav, sr, 80, np.random.default_rng(0))
    slower = Tempo((0.8, 0.8))(wav, sr, 80, np.random.default_rng(0))
    # 25 ms windows every 12.5 ms and every 8 ms: 1 s of audio in 1/1.25 and 1/0.8 the frames
    assert (faster.shape[1], plain.shape[1], slower.shape[1]) == (79, 98, 122)
    # a steady tone stays where it was (pitch kept): same peak bin, same level around it
    # (bins far from the tone hold window leakage, which varies with each frame's phase)
    peak = int(plain.mean(1).argmax())
    for other in (faster, slower):
        assert int(other.mean(1).argmax()) == peak
        np.testing.assert_allclose(other.mean(1)[peak - 2 : peak + 3], plain.mean(1)[peak - 2 : peak + 3], atol=0.1)


def test_filterbank_augmentations_combine_into_one_filterbank(tmp_path):
    wav = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    path = tmp_path / "take.wav"
    import soundfile
    soundfile.write(path, wav, 16000)
    torch.manual_seed(3)
    seed = int(torch.randint(0, 2**62, ()).item())  # what OnTheFlyFeatures draws its rng from
    rng = np.random.default_rng(seed)
    warp, speed = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.25)
    torch.manual_seed(3)
    feats = OnTheFlyFeatures([VTLP((0.8, 1.2)), Tempo((0.8, 1.25))], 16000, 80)(path)  # (T, F)
    expected, _ = fbank_torch(torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None], vtln_warp=float(warp),
                              frame_shift_ms=10.0 * float(speed))
    np.testing.assert_allclose(feats, expected[0].numpy().T, atol=1e-5)


def test_vtlp_of_one_reads_training_recordings_as_the_cache_holds_them(tmp_path):
    root = write_layout("jsonl", tmp_path / "m", recordings("theo", range(3)))
    corpus = build("jsonl", root, dev=None, augment=[{"name": "vtlp", "warp": [1.0, 1.0]}])
    assert corpus.augment == []  # not a batch-level augmentation
    dataset = UtteranceDataset(corpus.split("train").utterances, Normalizer(), None)
    for i, utt in enumerate(corpus.split("train").utterances):
        # our batched filterbank against kaldi-native-fbank's: within their measured agreement
        assert np.abs(dataset[i]["feats"].numpy() - np.load(utt.feats).T).mean() < 5e-3


def test_vtlp_and_tempo_need_recordings_and_a_sane_range(tmp_path):
    spec = validate_component("datasets", {"name": "hw4p2", "root": str(tmp_path), "augment": [{"name": "vtlp"}]}, "data")
    with pytest.raises(RecipeError, match=r"^data.augment\[0\].name: 'vtlp' changes the waveform"):
        spec.build()
    with pytest.raises(RecipeError, match=r"data.augment\[0\].warp: .*0.5 <= low <= high <= 2.0"):
        validate_component("augmentations", {"name": "vtlp", "warp": [1.2, 0.8]}, "data.augment[0]")
    with pytest.raises(RecipeError, match=r"data.augment\[1\].factors: .*0.5 <= low <= high <= 2.0"):
        validate_component("augmentations", {"name": "tempo", "factors": [1.3, 0.9]}, "data.augment[1]")
    assert isinstance(validate_component("augmentations", {"name": "tempo"}, "data.augment[1]").build(), Tempo)


# --- mel_warp: the same warp on stored features ----------------------------------------


def _vowel(sr: int = 16000) -> torch.Tensor:
    """One second of a vowel: harmonics of 120 Hz shaped by formants at 0.7, 1.2 and 2.5 kHz."""
    t = torch.arange(sr, dtype=torch.float64) / sr
    wav = torch.zeros(sr, dtype=torch.float64)
    for k in range(1, 60):
        f = 120.0 * k
        gain = sum(a * np.exp(-(((f - c) / w) ** 2)) for a, c, w in ((1.0, 700, 150), (0.5, 1200, 200), (0.3, 2500, 300)))
        wav += (gain + 0.01) * torch.sin(2 * np.pi * f * t)
    return (wav + 1e-3 * torch.randn(sr, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).float()


@pytest.mark.parametrize("warp", [0.85, 1.15])
def test_mel_warp_of_stored_features_comes_close_to_vtlp_of_the_recording(warp):
    wav = _vowel()[None]
    plain = fbank_torch(wav, sample_rate=16000)[0][0].T  # (T, F)
    vtlp = fbank_torch(wav, sample_rate=16000, vtln_warp=warp)[0][0].T
    warped = warp_mel_bins(plain[None], torch.tensor([warp], dtype=torch.float64))[0]
    before, after = (plain - vtlp).abs().mean(), (warped - vtlp).abs().mean()
    assert after < 0.2 * before, (float(before), float(after))  # measured: 0.13x (0.85) and 0.12x (1.15)


def test_mel_warp_draws_a_factor_per_utterance_and_a_factor_of_one_changes_nothing():
    feats = torch.randn(3, 20, 80, generator=torch.Generator().manual_seed(0))
    lengths = torch.full((3,), 20)
    np.testing.assert_allclose(MelWarp((1.0, 1.0), 16000)(feats, lengths).numpy(), feats.numpy(), atol=1e-5)
    out = MelWarp((0.8, 1.2), 16000)(feats, lengths, torch.Generator().manual_seed(1))
    factors = 0.8 + 0.4 * torch.rand(3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(out[2].numpy(), warp_mel_bins(feats[2:], factors[2:])[0].numpy(), atol=1e-6)
    assert not torch.allclose(out[0], feats[0])


def test_mel_warp_acts_on_batches_so_a_mix_can_name_it_for_every_corpus():
    spec = validate_component("augmentations", {"name": "mel_warp", "warp": [0.8, 1.2]}, "data.augment[0]")
    assert domain(spec.build()) == "features"
    with pytest.raises(RecipeError) as err:
        validate_component("augmentations", {"name": "mel_warp", "warp": [1.2, 0.8]}, "data.augment[0]")
    assert err.value.problems[0][0] == "data.augment[0].warp"


class _Louder:
    """A waveform augmentation that scales the samples in place."""

    domain = "waveform"

    def __call__(self, wav, sample_rate, rng):
        wav *= 2.0
        return wav


def test_recordings_are_read_once_and_augmentations_cannot_change_the_kept_copy(tmp_path, monkeypatch):
    import soundfile

    import speechforge.data.features as features

    path = tmp_path / "take.wav"
    soundfile.write(path, np.random.default_rng(0).standard_normal(4000).astype(np.float32) * 0.1, 8000)
    reads = []
    real_read = features.read_audio
    monkeypatch.setattr(features, "read_audio", lambda p, rate: reads.append(p) or real_read(p, rate))
    front_end = OnTheFlyFeatures([_Louder(), VTLP((1.0, 1.0))], 16000, 80)
    first, second = front_end(path), front_end(path)
    assert len(reads) == 1  # the second epoch's read came from memory, resampled already
    np.testing.assert_array_equal(first, second)  # doubled once each time, not twice
    assert front_end.recording(path).tobytes() == real_read(path, 16000).tobytes()


def test_the_recording_cache_stops_at_its_byte_budget(tmp_path):
    import soundfile

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"take{i}.wav")
        soundfile.write(paths[-1], np.zeros(1600, dtype=np.float32), 16000)
    front_end = OnTheFlyFeatures([], 16000, 80)
    front_end.cache_bytes = 2 * 1600 * 4  # two recordings' float32 samples
    for p in paths:
        front_end.recording(p)
    assert list(front_end._recordings) == paths[:2] and front_end._cached == 2 * 1600 * 4
