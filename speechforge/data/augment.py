"""Training-time augmentation, at two levels.

Feature level (``domain = "features"``): SpecAugment masks and time warping act on
padded (B, T, F) batches; the trainer calls them as ``aug(feats, feat_lens)``.

Waveform level (``domain = "waveform"``): speed perturbation and additive noise act on
one recording before its filterbank is computed, so they only apply to audio sources.
Filterbank level (``domain = "filterbank"``): each gives ``options(rng)``, the settings of
``features.fbank_torch`` it draws for one recording (vocal tract length perturbation a mel
warp, tempo a frame shift); the filterbank is computed once with all of them. Audio sources
only, like the waveform level.
Such a source recomputes each training utterance's features at every read
(``OnTheFlyFeatures``, called by the dataset item pipeline); dev and test read the
features stored by ``speechforge data prepare``. A feature-only source refuses them.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Literal

import numpy as np
import torch
from pydantic import AfterValidator, Field

from speechforge import registry
from speechforge.data.errors import DataError

Count = Annotated[int, Field(ge=0)]
Domain = Literal["features", "waveform", "filterbank"]
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def mask_along(feats: torch.Tensor, lengths: torch.Tensor, axis: int, num: int, width: int | torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero ``num`` random bands of up to ``width`` along time (axis 1) or frequency (axis 2)
    of (B, T, F) features; time bands stay inside each utterance's real length. ``width`` is
    one limit for the batch or a (B,) tensor of each utterance's own."""
    per_utterance = isinstance(width, torch.Tensor)
    if num == 0 or (int(width.max()) if per_utterance and width.numel() else width) == 0:
        return feats
    b, t, f = feats.shape
    extent = lengths.to(feats.device) if axis == 1 else torch.full((b,), f, device=feats.device)
    size = t if axis == 1 else f
    positions = torch.arange(size, device=feats.device)
    keep = torch.ones(b, size, dtype=torch.bool, device=feats.device)
    for _ in range(num):
        if per_utterance:  # uniform in [0, width_i] for each utterance i
            w = (torch.rand(b, generator=generator) * (width.cpu() + 1).float()).long().to(feats.device)
        else:
            w = torch.randint(0, width + 1, (b,), generator=generator).to(feats.device)
        w = torch.minimum(w, extent)
        start = (torch.rand(b, generator=generator).to(feats.device) * (extent - w + 1).float()).long()
        keep &= ~((positions[None] >= start[:, None]) & (positions[None] < (start + w)[:, None]))
    shape = (b, size, 1) if axis == 1 else (b, 1, size)
    return feats * keep.view(shape).to(feats.dtype)


class SpecAugment:
    domain: Domain = "features"

    def __init__(self, freq_masks: int, freq_width: int, time_masks: int, time_width: int,
                 time_width_ratio: float | None = None):
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.time_width_ratio = time_width_ratio

    def time_widths(self, lengths: torch.Tensor) -> int | torch.Tensor:
        """The longest time mask: time_width frames, or time_width_ratio of each utterance's length."""
        if self.time_width_ratio is None:
            return self.time_width
        return (lengths.cpu().double() * self.time_width_ratio).floor().long()

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        feats = mask_along(feats, lengths, 2, self.freq_masks, self.freq_width, generator)
        return mask_along(feats, lengths, 1, self.time_masks, self.time_widths(lengths), generator)


@registry.augmentations.register("specaugment")
def specaugment(
    freq_masks: Count = 2, freq_width: Count = 5, time_masks: Count = 2, time_width: Count = 40,
    time_width_ratio: Annotated[float, Field(gt=0.0, le=1.0)] | None = None,
) -> SpecAugment:
    """SpecAugment frequency and time masks (defaults: the HW4P2 settings). time_width_ratio,
    when set, replaces time_width: each time mask is up to that fraction of the utterance's
    length (ESPnet's time_mask_width_ratio_range), so long utterances get longer masks."""
    return SpecAugment(freq_masks, freq_width, time_masks, time_width, time_width_ratio)


# --- time warping --------------------------------------------------------------------


def warp_time(feats: torch.Tensor, lengths: torch.Tensor, max_warp: int,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment's time warp on (B, T, F) features: a random frame ``c`` of each
    utterance moves by up to ``max_warp`` frames to ``c + w``; [0, c] and [c, L-1] are
    stretched linearly onto [0, c+w] and [c+w, L-1]. First and last frames, the length
    and the padding stay as they were."""
    b, t, _ = feats.shape
    if max_warp == 0 or t < 4:
        return feats
    device = feats.device
    length = lengths.to(torch.long).cpu()
    # Room to move: c in [W+1, L-W-2] and w in [-W, W] keep both stretched pieces non-empty.
    room = torch.clamp(torch.minimum(torch.full_like(length, max_warp), (length - 3) // 2), min=0)
    centres = room + 1 + (torch.rand(b, generator=generator) * (length - 2 * room - 2).clamp(min=1)).long()
    warps = (torch.rand(b, generator=generator) * (2 * room + 1)).long() - room
    c = centres.to(device, torch.float32)[:, None]  # (B, 1)
    moved = (centres + warps).to(device, torch.float32)[:, None]
    last = (length - 1).to(device, torch.float32)[:, None]
    pos = torch.arange(t, device=device, dtype=torch.float32)[None]  # (1, T)
    src = torch.where(pos <= moved, pos * c / moved, c + (pos - moved) * (last - c) / (last - moved).clamp(min=1))
    active = (room > 0).to(device)[:, None] & (pos <= last)
    src = torch.where(active, src, pos)  # (B, T) where each output frame reads from
    return read_between(feats, src[:, :, None].expand(-1, -1, feats.shape[2]), axis=1)


def read_between(feats: torch.Tensor, src: torch.Tensor, axis: int) -> torch.Tensor:
    """``feats`` read at fractional positions ``src`` (feats' shape) along ``axis``, each
    value interpolated linearly between its two neighbours."""
    size = feats.shape[axis]
    lo = src.floor().long().clamp(0, size - 1)
    hi = (lo + 1).clamp(max=size - 1)
    frac = (src - lo.to(src.dtype)).to(feats.dtype)
    return feats.gather(axis, lo) * (1 - frac) + feats.gather(axis, hi) * frac


class TimeWarp:
    domain: Domain = "features"

    def __init__(self, max_warp: int):
        self.max_warp = max_warp

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return warp_time(feats, lengths, self.max_warp, generator)


@registry.augmentations.register("time_warp")
def time_warp(max_warp: Count = 5) -> TimeWarp:
    """SpecAugment time warping: move one frame of each utterance by up to max_warp frames."""
    return TimeWarp(max_warp)


# --- vocal tract length, on stored features ---------------------------------------------


def warp_mel_bins(feats: torch.Tensor, factors: torch.Tensor, sample_rate: int = 16000,
                  low_freq: float = 20.0) -> torch.Tensor:
    """(B, T, F) log-mel features, each utterance's frequency axis warped by its factor as
    VTLP warps the mel filters (Kaldi's VTLN warp, ``features.vtln_warp_freq``): bin i takes
    the spectrum at the frequency its filter would have moved to, read between the two
    nearest bins. The features are taken to be Kaldi's band, low_freq to Nyquist."""
    from speechforge.data.features import hz, mel, mel_points, vtln_warp_freq

    b, t, f = feats.shape
    nyquist = sample_rate / 2
    points = mel_points(f, low_freq, nyquist)
    centres = hz(points[1:-1])  # (F,) Hz
    moved = torch.stack([vtln_warp_freq(centres, float(a), low_freq, nyquist, nyquist=nyquist) for a in factors])
    src = ((mel(moved) - points[0]) / (points[1] - points[0]) - 1).clamp(0, f - 1)  # (B, F) in bins
    return read_between(feats, src.to(feats.device, torch.float32)[:, None, :].expand(b, t, f), axis=2)


class MelWarp:
    domain: Domain = "features"

    def __init__(self, warp: tuple[float, float], sample_rate: int):
        self.warp, self.sample_rate = warp, sample_rate

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        low, high = self.warp
        factors = low + (high - low) * torch.rand(feats.shape[0], generator=generator, dtype=torch.float64)
        return warp_mel_bins(feats, factors, self.sample_rate)


# --- recording level and channel colouring --------------------------------------------


class LevelTilt:
    """Each utterance's features shifted by a random level, a random spectral tilt (a
    straight line across the bins) and, with ``bends``, a random smooth curve (cosines of
    2 to ``1 + orders`` half-periods across the bins): what another microphone's gain and
    frequency response add to log-mel features. Real frames only; the padding stays as it was."""

    domain: Domain = "features"

    def __init__(self, level: float, tilt: float, bends: float = 0.0, orders: int = 3):
        self.level, self.tilt, self.bends, self.orders = level, tilt, bends, orders

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, t, f = feats.shape
        level = (2 * torch.rand(b, generator=generator) - 1) * self.level
        tilt = (2 * torch.rand(b, generator=generator) - 1) * self.tilt
        offset = level[:, None] + tilt[:, None] * torch.linspace(-1.0, 1.0, f)[None]  # (B, F)
        if self.bends > 0 and self.orders > 0:
            # drawn only when asked, so recipes without bends keep their random stream
            amplitude = (2 * torch.rand(b, self.orders, generator=generator) - 1) * self.bends  # (B, K)
            k = torch.arange(2, 2 + self.orders, dtype=torch.float32)[:, None]
            cosines = torch.cos(math.pi * k * (torch.arange(f) + 0.5)[None] / f)  # (K, F)
            offset = offset + amplitude @ cosines
        real = torch.arange(t)[None] < lengths.cpu()[:, None]  # (B, T)
        return feats + (offset[:, None, :] * real[:, :, None]).to(feats.device, feats.dtype)


@registry.augmentations.register("level_tilt")
def level_tilt(
    level: Annotated[float, Field(ge=0.0)] = 1.0,
    tilt: Annotated[float, Field(ge=0.0)] = 0.5,
    bends: Annotated[float, Field(ge=0.0)] = 0.0,
    orders: Annotated[int, Field(ge=1, le=16)] = 3,
) -> LevelTilt:
    """A random level in [-level, level] and tilt (the offset from the middle bin to either
    end, in [-tilt, tilt]) added to each utterance, and with bends > 0 a smooth curve (each
    of ``orders`` cosines up to bends high), in the units of the batch: standard deviations
    per bin after global_mvn. Recording gain and microphone colouring."""
    return LevelTilt(level, tilt, bends, orders)


# --- waveform augmentations --------------------------------------------------------------


class SpeedPerturb:
    """Kaldi-style speed perturbation: play the recording ``factor`` times faster, which
    shortens it and raises its pitch by that factor (resampling, as Kaldi's sox ``speed``)."""

    domain: Domain = "waveform"

    def __init__(self, factors: list[float]):
        self.factors = factors

    def __call__(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        from speechforge.data.features import resample

        factor = self.factors[int(rng.integers(len(self.factors)))]
        if factor == 1.0:
            return wav
        # Read as if recorded at sample_rate * factor, then brought back to sample_rate.
        return resample(wav, round(sample_rate * factor), sample_rate)


class AdditiveNoise:
    """Noise added at a signal-to-noise ratio drawn from ``snr_db``: white noise, or a
    random stretch of a random file from ``noise_files`` (looped when shorter)."""

    domain: Domain = "waveform"

    def __init__(self, snr_db: tuple[float, float], prob: float, noise_files: list[Path]):
        self.snr_db, self.prob, self.noise_files = snr_db, prob, noise_files

    def noise(self, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        if not self.noise_files:
            return rng.standard_normal(n).astype(np.float32)
        from speechforge.data.features import read_audio

        noise = read_audio(self.noise_files[int(rng.integers(len(self.noise_files)))], sample_rate)
        if len(noise) < n:
            noise = np.tile(noise, -(-n // len(noise)))
        start = int(rng.integers(len(noise) - n + 1))
        return noise[start : start + n]

    def __call__(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return wav
        snr_db = rng.uniform(*self.snr_db)
        noise = self.noise(len(wav), sample_rate, rng)
        signal_power, noise_power = float(np.mean(wav**2)), float(np.mean(noise**2))
        if signal_power == 0.0 or noise_power == 0.0:
            return wav  # digital silence has no SNR to aim at
        scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
        return (wav + scale * noise).astype(np.float32)


class PadSilence:
    """Quiet noise before and after the recording, each side up to ``max_seconds``: corpora
    trimmed to the word (most of FSDD) next to recordings that keep their pauses (one of its
    speakers has 0.1 s before and 0.4 s after each word). The noise sits ``level_db`` (drawn
    per utterance) below the recording's own RMS level."""

    domain: Domain = "waveform"

    def __init__(self, max_seconds: float, level_db: tuple[float, float], prob: float):
        self.max_seconds, self.level_db, self.prob = max_seconds, level_db, prob

    def __call__(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return wav
        lead, trail = (int(s * sample_rate) for s in rng.uniform(0.0, self.max_seconds, 2))
        rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
        scale = rms * 10 ** (rng.uniform(*self.level_db) / 20)
        return np.concatenate([scale * rng.standard_normal(lead), wav, scale * rng.standard_normal(trail)]).astype(np.float32)


def _factors(value: list[float]) -> list[float]:
    if not value or any(f <= 0 for f in value):
        raise ValueError(f"expected a non-empty list of positive factors, got {value}")
    return value


def _snr_range(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"expected [low, high] with low <= high, got [{value[0]}, {value[1]}]")
    return value


def _noise_dir(value: str | None) -> str | None:
    if value is not None and not any(p.suffix.lower() in AUDIO_SUFFIXES for p in Path(value).rglob("*")):
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {value!r}")
    return value


@registry.augmentations.register("speed_perturb")
def speed_perturb(
    factors: Annotated[list[float], AfterValidator(_factors)] = [0.9, 1.0, 1.1],
) -> SpeedPerturb:
    """Speed perturbation of the waveform (one factor drawn per utterance); audio sources only."""
    return SpeedPerturb(factors)


@registry.augmentations.register("noise")
def noise(
    snr_db: Annotated[tuple[float, float], AfterValidator(_snr_range)] = (5.0, 20.0),
    prob: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
    noise_dir: Annotated[str | None, AfterValidator(_noise_dir)] = None,
) -> AdditiveNoise:
    """Additive noise at an SNR drawn from snr_db (white, or from noise_dir); audio sources only."""
    files = sorted(p for p in Path(noise_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES) if noise_dir else []
    return AdditiveNoise(tuple(snr_db), prob, files)


@registry.augmentations.register("pad_silence")
def pad_silence(
    max_seconds: Annotated[float, Field(gt=0.0)] = 0.5,
    level_db: Annotated[tuple[float, float], AfterValidator(_snr_range)] = (-60.0, -30.0),
    prob: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
) -> PadSilence:
    """Up to max_seconds of quiet noise (level_db below the recording's RMS) before and after; audio sources only."""
    return PadSilence(max_seconds, tuple(level_db), prob)


def filterbank(wav: np.ndarray, sample_rate: int, num_mel_bins: int, options: dict) -> np.ndarray:
    """(F, T) features of one recording computed with filterbank-level ``options``."""
    from speechforge.data.features import fbank_torch

    feats, _ = fbank_torch(torch.from_numpy(wav)[None], sample_rate=sample_rate, num_mel_bins=num_mel_bins, **options)
    return feats[0].numpy()


class FilterbankAugmentation:
    """A filterbank-level augmentation: ``options`` draws its settings for one recording;
    called on its own it computes that recording's features with them."""

    domain: Domain = "filterbank"

    def options(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def __call__(self, wav: np.ndarray, sample_rate: int, num_mel_bins: int, rng: np.random.Generator) -> np.ndarray:
        return filterbank(wav, sample_rate, num_mel_bins, self.options(rng))  # (F, T)


class VTLP(FilterbankAugmentation):
    """Vocal tract length perturbation (Jaitly and Hinton, 2013): each utterance's filterbank
    computed with its mel filters warped by a factor drawn from ``warp``, Kaldi's VTLN warp
    (``speechforge.data.features.vtln_warp_freq``). A speaker's formants sit higher or lower
    with the length of their vocal tract; the warp shows the model the same words with the
    formants moved, as an unheard speaker would say them."""

    def __init__(self, warp: tuple[float, float]):
        self.warp = warp

    def options(self, rng: np.random.Generator) -> dict:
        return {"vtln_warp": float(rng.uniform(*self.warp))}


class Tempo(FilterbankAugmentation):
    """Each utterance said faster or slower with its pitch and formants kept: the filterbank's
    25 ms windows taken ``factor`` x 10 ms apart, so a word spans 1/factor as many frames
    with the same spectra. Speed perturbation moves pitch and formants with the duration;
    speakers also differ in duration alone (on FSDD one speaker holds SIX for 0.71 s, the
    others for 0.27-0.45 s)."""

    def __init__(self, factors: tuple[float, float]):
        self.factors = factors

    def options(self, rng: np.random.Generator) -> dict:
        return {"frame_shift_ms": 10.0 * float(rng.uniform(*self.factors))}


def _factor_range(value: tuple[float, float]) -> tuple[float, float]:
    if not 0.5 <= value[0] <= value[1] <= 2.0:
        raise ValueError(f"expected [low, high] with 0.5 <= low <= high <= 2.0, got [{value[0]}, {value[1]}]")
    return value


@registry.augmentations.register("vtlp")
def vtlp(warp: Annotated[tuple[float, float], AfterValidator(_factor_range)] = (0.9, 1.1)) -> VTLP:
    """Vocal tract length perturbation: mel filters warped per utterance by a factor drawn from warp; audio sources only."""
    return VTLP(tuple(warp))


@registry.augmentations.register("tempo")
def tempo(factors: Annotated[tuple[float, float], AfterValidator(_factor_range)] = (0.8, 1.25)) -> Tempo:
    """Tempo perturbation, pitch kept: frames factor x 10 ms apart, factor drawn per utterance (above 1: faster); audio sources only."""
    return Tempo(tuple(factors))


@registry.augmentations.register("mel_warp")
def mel_warp(warp: Annotated[tuple[float, float], AfterValidator(_factor_range)] = (0.9, 1.1),
             sample_rate: Annotated[int, Field(gt=0)] = 16000) -> MelWarp:
    """VTLP on stored features: each utterance's mel axis warped by a factor drawn from warp,
    for any corpus (features or audio, a mix's too); sample_rate is the features' own."""
    return MelWarp(tuple(warp), sample_rate)


# --- features of augmented waveforms ---------------------------------------------------


@contextmanager
def one_thread() -> Iterator[None]:
    """Run one utterance's front end on one thread. Resampling calls torch on short
    signals, where a busy machine's thread pool costs ~1000x the work itself
    (47 ms against 0.05 ms for a 0.3 s recording, measured on the 2-core dev machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class OnTheFlyFeatures:
    """Read a recording, apply the waveform augmentations, compute its filterbank (with a
    filterbank-level augmentation's warp, when there is one): (T, F).

    Each call draws its randomness from torch's default generator, which DataLoader
    seeds per worker from the run's seed: the same seed and num_workers give the same
    augmented features."""

    # decoded, resampled recordings kept between epochs, up to this many bytes a process:
    # reading and resampling an 8 kHz FSDD take was a third of its on-the-fly front end
    cache_bytes = 1 << 30

    def __init__(self, augmentations: list, sample_rate: int, num_mel_bins: int):
        self.augmentations = [aug for aug in augmentations if domain(aug) == "waveform"]
        self.filterbanks = [aug for aug in augmentations if domain(aug) == "filterbank"]
        self.sample_rate, self.num_mel_bins = sample_rate, num_mel_bins
        self._recordings: dict[Path, np.ndarray] = {}
        self._cached = 0

    def recording(self, audio: Path) -> np.ndarray:
        """The recording at the front end's rate: a fresh copy, so augmentations may change it."""
        from speechforge.data.features import read_audio

        wav = self._recordings.get(audio)
        if wav is None:
            wav = read_audio(audio, self.sample_rate)
            if self._cached + wav.nbytes <= self.cache_bytes:
                self._recordings[audio] = wav
                self._cached += wav.nbytes
        return wav.copy()

    def __call__(self, audio: Path) -> np.ndarray:
        from speechforge.data.features import fbank

        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        with one_thread():
            wav = self.recording(audio)
            for aug in self.augmentations:
                wav = aug(wav, self.sample_rate, rng)
            if self.filterbanks:
                options = {}
                for aug in self.filterbanks:
                    options.update(aug.options(rng))
                feats = filterbank(wav, self.sample_rate, self.num_mel_bins, options)  # (F, T)
            else:
                feats = fbank(wav, self.sample_rate, self.num_mel_bins)
        if feats.shape[1] == 0:
            raise DataError("too short for one frame after waveform augmentation", audio)
        return np.ascontiguousarray(feats.T)


def domain(aug: object) -> Domain:
    """Which level an augmentation acts on; third-party ones without the attribute are feature-level."""
    return getattr(aug, "domain", "features")
