"""Front end: reading, resampling, and the two filterbank implementations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechforge.data.errors import DataError
from speechforge.data.features import fbank, fbank_torch, read_audio, resample

# shared/data sits beside the project checkout (see shared/data/README.md).
FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"
needs_fsdd = pytest.mark.skipif(
    not FSDD.is_dir(), reason=f"real recordings not found at {FSDD} (shared/data/fsdd)"
)


def _chirp(amplitude: float, seconds: float = 2.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0, f1 = 100.0, 7000.0  # sweeps the whole band the mel filters cover
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2)
    return (amplitude * np.sin(phase)).astype(np.float32)


def _agreement(kaldi: np.ndarray, ours: np.ndarray) -> tuple[float, float]:
    """Max |difference| over the bins where log-mel is numerically meaningful.

    Two float32 implementations cannot agree on the log of rounding noise. A
    bin is noise when it is more than 60 dB below its frame's loudest bin (the
    FFT's float32 error is about 1e-7 of the frame's amplitude) or below the
    int16 quantisation floor (log energy < 0). Returns (max diff, share of bins
    compared) so a test can also check it compared enough to mean something.
    """
    meaningful = (kaldi > kaldi.max(axis=0, keepdims=True) - 6 * math.log(10)) & (kaldi > 0)
    return float(np.abs(kaldi - ours)[meaningful].max()), float(meaningful.mean())


def _torch_feats(wav: np.ndarray, sr: int = 16000) -> np.ndarray:
    feats, _ = fbank_torch(torch.from_numpy(wav)[None], sample_rate=sr)
    return feats[0].numpy()


# ---------------------------------------------------------------- fbank


def test_fbank_shape_is_bins_by_snip_edges_frames():
    for n in (400, 401, 559, 560, 16000, 23456):
        wav = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
        feats = fbank(wav)
        assert feats.shape == (80, 1 + (n - 400) // 160)
        assert feats.dtype == np.float32
    assert fbank(np.zeros(399, dtype=np.float32)).shape == (80, 0)


def test_fbank_torch_matches_kaldi_on_a_chirp():
    for amplitude in (0.5, 0.01):
        wav = _chirp(amplitude)
        kaldi, ours = fbank(wav), _torch_feats(wav)
        assert ours.shape == kaldi.shape
        diff, compared = _agreement(kaldi, ours)
        assert diff < 2e-3, diff  # measured: 2e-4
        assert compared > 0.05  # a pure tone fills few bins; a few percent is expected
        assert np.abs(kaldi - ours).mean() < 2e-2  # all bins, noise included (measured 7e-3)


@needs_fsdd
def test_fbank_torch_matches_kaldi_on_real_recordings():
    for name in ("0_george_0.wav", "8_nicolas_31.wav", "5_yweweler_12.wav"):
        wav = read_audio(FSDD / name)  # 8 kHz file, resampled to 16 kHz
        kaldi, ours = fbank(wav), _torch_feats(wav)
        assert ours.shape == kaldi.shape
        diff, compared = _agreement(kaldi, ours)
        assert diff < 2e-3, (name, diff)  # measured: < 1e-3 over all 2500 FSDD files
        assert compared > 0.5  # speech spreads over most bins
        assert np.abs(kaldi - ours).mean() < 5e-3  # all bins (measured < 2e-3)


def test_fbank_torch_batch_equals_one_at_a_time_and_zeroes_padding():
    rng = np.random.default_rng(0)
    lengths = [16000, 7000, 450, 300]  # the last is shorter than one window
    wavs = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]
    batch = torch.zeros(len(wavs), max(lengths))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = torch.from_numpy(w)
    feats, frame_lens = fbank_torch(batch, torch.tensor(lengths))
    assert frame_lens.tolist() == [98, 42, 1, 0]  # 1 + (n - 400) // 160, none when n < 400
    assert feats.shape == (4, 80, int(frame_lens.max()))
    for i, w in enumerate(wavs):
        single = _torch_feats(w)
        torch.testing.assert_close(feats[i, :, : frame_lens[i]], torch.from_numpy(single))
        assert feats[i, :, frame_lens[i] :].abs().sum() == 0


# ---------------------------------------------------------------- resampling


def test_resampling_8k_to_16k_keeps_a_sines_frequency_and_doubles_its_length():
    sr_in, sr_out, freq = 8000, 16000, 1000.0
    wav = np.sin(2 * np.pi * freq * np.arange(sr_in) / sr_in).astype(np.float32)
    out = resample(wav, sr_in, sr_out)
    assert out.shape == (2 * len(wav),)
    assert out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * sr_out / len(out)
    assert peak_hz == pytest.approx(freq, abs=sr_out / len(out))


@pytest.mark.parametrize("sr_in, sr_out", [(8000, 16000), (22050, 16000), (16000, 8000), (44100, 16000)])
def test_resampling_matches_the_analytic_signal_at_the_new_times(sr_in, sr_out):
    # The oracle: a sum of sines below the new Nyquist, evaluated directly at
    # the output sample times. Checks gain, phase (no delay) and passband.
    freqs = (440.0, 0.4 * min(sr_in, sr_out))  # the second at 80% of the lower Nyquist

    def signal(t):
        return 0.4 * sum(np.sin(2 * np.pi * f * t + k) for k, f in enumerate(freqs))

    wav = signal(np.arange(sr_in) / sr_in).astype(np.float32)
    out = resample(wav, sr_in, sr_out)
    assert len(out) == math.ceil(len(wav) * sr_out / sr_in)
    expected = signal(np.arange(len(out)) / sr_out)
    inner = slice(len(out) // 10, -len(out) // 10)  # edges see zero padding
    assert np.abs(out - expected)[inner].max() < 2e-3  # measured 5e-4


def test_downsampling_removes_tones_above_the_new_nyquist():
    wav = np.sin(2 * np.pi * 5000 * np.arange(16000) / 16000).astype(np.float32)
    out = resample(wav, 16000, 8000)  # 5 kHz would alias to 3 kHz
    rms_ratio = np.sqrt(np.mean(out[800:-800] ** 2) / np.mean(wav**2))
    assert 20 * np.log10(rms_ratio) < -80  # measured -96 dB


def test_resample_keeps_tensors_on_their_device_and_batches_leading_axes():
    wav = torch.randn(2, 3, 2205)
    out = resample(wav, 22050, 16000)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 1600)
    torch.testing.assert_close(out[1, 2], resample(wav[1, 2], 22050, 16000))


# ---------------------------------------------------------------- reading


def test_read_audio_downmixes_and_resamples(tmp_path):
    t = np.arange(8000) / 8000
    left, right = 0.5 * np.sin(2 * np.pi * 500 * t), 0.1 * np.ones_like(t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    wav = read_audio(path, sample_rate=16000)
    assert wav.dtype == np.float32 and wav.shape == (16000,)
    assert wav[2000:-2000].mean() == pytest.approx(0.05, abs=1e-3)  # the DC from the right channel, halved
    assert np.abs(read_audio(path, sample_rate=8000) - (left + right) / 2).max() < 1e-4


@needs_fsdd
def test_read_audio_of_an_8k_recording_gives_16k_samples():
    path = FSDD / "0_george_0.wav"
    native = sf.info(str(path)).frames
    wav = read_audio(path)
    assert len(wav) == 2 * native
    assert 0.01 < np.abs(wav).max() <= 1.0


def test_truncated_wav_raises_data_error_naming_the_file(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.sin(np.arange(16000) / 5.0) * 0.3, 16000, subtype="PCM_16")
    data = good.read_bytes()
    cut = tmp_path / "cut_in_half.wav"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut_in_half.wav.*truncated"):
        read_audio(cut)


@pytest.mark.parametrize(
    "name, content",
    [("empty.wav", b""), ("garbage.wav", b"RIFF not really a wave file" * 4), ("header_only.wav", None)],
)
def test_unreadable_or_empty_audio_raises_data_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    if content is None:  # a valid header with zero samples
        sf.write(path, np.zeros(0), 16000, subtype="PCM_16")
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=name) as info:
        read_audio(path)
    assert info.value.path == path
