"""Audio in, log-mel filterbanks out: the torch side of the front end.

``speechforge.data.audio`` holds the pieces that need no torch (``read_audio``,
``fbank`` through kaldi-native-fbank, the numpy ``resample``); they are imported here
too, so ``speechforge.data.features`` stays the one place to import the front end from.
Here:

- ``resample``: the same polyphase sinc filter as a strided convolution, for tensors on
  their device and for numpy arrays where torch is at hand (the synthetic corpus).
- ``fbank_torch``: ``fbank``'s numbers, batched, on any device.

Features are Kaldi's: natural-log mel energies of an int16-scaled signal, so
values run from about -16 (log of float epsilon, digital silence) to about 25.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from speechforge.data import audio
from speechforge.data.audio import INT16_SCALE, fbank, read_audio  # noqa: F401  (re-exported)

# Kaldi floors energies at float epsilon before the log.
LOG_FLOOR = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------- resampling


def resample(
    waveform: np.ndarray | torch.Tensor,
    orig_sr: int,
    new_sr: int,
    zero_crossings: int = 16,
    rolloff: float = 0.945,
    beta: float = 8.6,
) -> np.ndarray | torch.Tensor:
    """Resample the last axis from ``orig_sr`` to ``new_sr`` with ``speechforge.data.audio``'s
    filter (its ``resample`` says how). Numpy in, numpy out; a tensor stays on its device."""
    if orig_sr == new_sr:
        return waveform
    # numpy arrays too: torch's convolution is several times faster than the numpy
    # version, which matters where a corpus is generated (it runs on one torch thread there)
    as_numpy = isinstance(waveform, np.ndarray)
    wav = torch.from_numpy(np.asarray(waveform, dtype=np.float32)) if as_numpy else waveform
    orig, new = audio.reduced_rates(orig_sr, new_sr)
    taps, width = audio.sinc_kernel(orig, new, zero_crossings, rolloff, beta)
    kernel = torch.from_numpy(taps.copy())[:, None, :].to(device=wav.device, dtype=wav.dtype)  # (new, 1, K)

    shape = wav.shape
    flat = wav.reshape(-1, 1, shape[-1])  # (B, 1, N)
    length = shape[-1]
    # Each stride of ``orig`` input samples yields ``new`` outputs, one per row
    # of the filter bank: a strided convolution does the whole polyphase loop.
    padded = F.pad(flat, (width, width + orig))
    out = F.conv1d(padded, kernel, stride=orig)  # (B, new, blocks)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # interleave phases
    out = out[:, : math.ceil(length * new / orig)].reshape(*shape[:-1], -1)
    return out.numpy() if as_numpy else out


# ---------------------------------------------------------------- filterbanks


def vtln_warp_freq(freq: torch.Tensor, warp: float, low_freq: float, high_freq: float,
                   vtln_low: float = 100.0, vtln_high: float = -500.0, nyquist: float = 8000.0) -> torch.Tensor:
    """Kaldi's VTLN frequency warp (``MelBanks::VtlnWarpFreq``): f -> f / warp between two
    cut-offs, with straight lines from there to ``low_freq`` and ``high_freq``, so the band
    edges stay where they are. ``vtln_high`` <= 0 is an offset from Nyquist, as in Kaldi."""
    if vtln_high <= 0.0:
        vtln_high += nyquist
    lo, hi = vtln_low * max(1.0, warp), vtln_high * min(1.0, warp)
    scale = 1.0 / warp
    left_slope = (scale * lo - low_freq) / (lo - low_freq)
    right_slope = (high_freq - scale * hi) / (high_freq - hi)
    warped = torch.where(freq < lo, low_freq + left_slope * (freq - low_freq),
                         torch.where(freq < hi, scale * freq, high_freq + right_slope * (freq - high_freq)))
    return torch.where((freq < low_freq) | (freq > high_freq), freq, warped)


def mel(f: torch.Tensor) -> torch.Tensor:
    """Hz -> Kaldi's mel scale, 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(f / 700.0)


def hz(m: torch.Tensor) -> torch.Tensor:
    """Kaldi's mel scale -> Hz."""
    return 700.0 * torch.expm1(m / 1127.0)


def mel_points(num_mel_bins: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """(num_mel_bins + 2,) float64 mel values equally spaced from low_freq to high_freq:
    filter i rises from point i, peaks at i + 1 and falls to i + 2, as Kaldi's do."""
    mel_low = mel(torch.tensor(low_freq, dtype=torch.float64))
    mel_high = mel(torch.tensor(high_freq, dtype=torch.float64))
    return mel_low + torch.arange(num_mel_bins + 2, dtype=torch.float64) * (mel_high - mel_low) / (num_mel_bins + 1)


def kaldi_mel_banks(
    num_mel_bins: int,
    padded_window: int,
    sample_rate: int,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    vtln_warp: float = 1.0,
) -> torch.Tensor:
    """Kaldi's triangular mel filters: (num_mel_bins, padded_window // 2 + 1).

    Triangles are equally spaced on the mel scale 1127 ln(1 + f / 700) and
    evaluated at each FFT bin's mel value. Kaldi never uses the Nyquist bin,
    so the last column is zero. ``vtln_warp`` moves the triangles' corners as
    Kaldi's VTLN does (``vtln_warp_freq``): above 1 each filter moves down to
    1/warp of its frequency, so formants land in higher bins, as a shorter vocal
    tract would put them.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist  # Kaldi: non-positive means offset from Nyquist
    num_fft_bins = padded_window // 2
    points = mel_points(num_mel_bins, low_freq, high_freq)[:, None]
    left, center, right = points[:-2], points[1:-1], points[2:]
    if vtln_warp != 1.0:
        left, center, right = (mel(vtln_warp_freq(hz(m), vtln_warp, low_freq, high_freq, nyquist=nyquist))
                               for m in (left, center, right))
    bin_mel = mel(torch.arange(num_fft_bins, dtype=torch.float64) * sample_rate / padded_window)
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (num_mel_bins, num_fft_bins)
    return F.pad(banks, (0, 1)).to(torch.float32)


def fbank_torch(
    waveforms: torch.Tensor,
    lengths: torch.Tensor | None = None,
    sample_rate: int = 16000,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    vtln_warp: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``fbank``: waveforms (B, N) in [-1, 1] -> (feats (B, num_mel_bins, T), frame_lens (B,)).

    Same numbers as ``fbank`` (within float32 rounding), for a batch on any
    device. ``lengths`` (B,) gives each waveform's valid samples (default: all
    N). Frames past ``frame_lens`` are zero. ``vtln_warp``: the mel filters warped
    as Kaldi's VTLN does (``kaldi_mel_banks``), for vocal tract length perturbation.
    """
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms: expected shape (B, N), got {tuple(waveforms.shape)}")
    device = waveforms.device
    batch, num_samples = waveforms.shape
    if lengths is None:
        lengths = torch.full((batch,), num_samples, dtype=torch.long, device=device)
    lengths = lengths.to(device=device, dtype=torch.long)
    window_size = int(sample_rate * frame_length_ms / 1000)
    shift = int(sample_rate * frame_shift_ms / 1000)
    padded_window = 1 << (window_size - 1).bit_length()  # next power of two

    # snip_edges: only whole windows inside the signal.
    frame_lens = torch.where(
        lengths >= window_size, 1 + (lengths - window_size) // shift, torch.zeros_like(lengths)
    )
    num_frames = int(frame_lens.max()) if batch else 0
    if num_frames == 0:
        empty = torch.zeros(batch, num_mel_bins, 0, device=device)
        return empty, frame_lens

    x = waveforms.to(torch.float32) * INT16_SCALE
    if dither > 0.0:
        x = x + dither * torch.randn_like(x)
    needed = (num_frames - 1) * shift + window_size
    x = F.pad(x, (0, max(0, needed - num_samples)))
    frames = x.unfold(1, window_size, shift)[:, :num_frames]  # (B, T, W)

    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC
    # Pre-emphasis, Kaldi's way: the first sample is scaled by (1 - 0.97).
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - 0.97 * previous
    n = torch.arange(window_size, device=device, dtype=torch.float32)
    povey = (0.5 - 0.5 * torch.cos(2 * math.pi * n / (window_size - 1))) ** 0.85
    frames = frames * povey

    spectrum = torch.fft.rfft(frames, n=padded_window)  # (B, T, padded/2 + 1)
    power = spectrum.real.square() + spectrum.imag.square()
    banks = kaldi_mel_banks(num_mel_bins, padded_window, sample_rate, vtln_warp=vtln_warp).to(device)
    mel = torch.matmul(power, banks.T).clamp(min=LOG_FLOOR).log()  # (B, T, M)

    valid = torch.arange(num_frames, device=device)[None, :] < frame_lens[:, None]
    mel = mel.masked_fill(~valid[..., None], 0.0)
    return mel.transpose(1, 2).contiguous(), frame_lens
