"""The front end without torch: reading audio, resampling it, Kaldi filterbanks.

What training computes from a recording and what ``speechforge.runtime`` computes at
inference are the same functions, here, so a deployed model sees the features it was
trained on; this module imports no torch, so the runtime can use it.

- ``read_audio``: any file libsndfile reads -> float32 mono at the rate we ask for.
- ``resample``: a Kaiser-windowed sinc, applied as a polyphase filter bank. We
  write it here rather than depend on scipy or torchaudio for one function.
- ``fbank``: kaldi-native-fbank, one utterance at a time
  (``speechforge.data.features.fbank_torch`` is the same numbers, batched, in torch).
- ``FrontEnd``: the settings a run's features were made with, applied to a file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import soundfile as sf

from speechforge.data.corpus import load_features
from speechforge.data.errors import DataError

# Kaldi works on 16-bit integer sample values; its defaults (dither=1, the
# energy floors) assume that scale, so we scale [-1, 1] floats the same way.
INT16_SCALE = 32768.0
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".sph"}


# ---------------------------------------------------------------- reading


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read an audio file as float32 mono in [-1, 1] at ``sample_rate``.

    Channels are averaged. A file at another rate is resampled. Raises
    ``DataError`` naming the file when it cannot be read, is truncated, or
    holds no samples.
    """
    path = Path(path)
    _check_wav_complete(path)
    try:
        audio, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise DataError(f"cannot read audio ({err})", path) from err
    if audio.shape[0] == 0:
        raise DataError("holds no audio samples", path)
    audio = audio.mean(axis=1)  # (N,) downmix
    if file_rate != sample_rate:
        audio = resample(audio, file_rate, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _check_wav_complete(path: Path) -> None:
    """Raise if a RIFF/WAVE file is shorter than its header says.

    libsndfile quietly returns what is there when a WAV file is cut short (a
    copy interrupted half-way), and a model would train on half an utterance
    against the whole transcript. So we compare the ``data`` chunk's declared
    size with the bytes the file holds. Other formats are left to libsndfile.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(12)
            if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
                return
            file_size = path.stat().st_size
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    raise DataError("truncated WAV file: no data chunk", path)
                chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if chunk_id == b"data":
                    # Streaming writers leave the size 0 or 0xFFFFFFFF: unknown.
                    available = file_size - f.tell()
                    if size not in (0, 0xFFFFFFFF) and size > available:
                        raise DataError(
                            f"truncated WAV file: header declares {size} bytes "
                            f"of audio, the file holds {available}",
                            path,
                        )
                    return
                f.seek(size + (size & 1), 1)  # chunks are padded to even sizes
    except OSError as err:
        raise DataError(f"cannot read audio ({err})", path) from err


# ---------------------------------------------------------------- resampling


@lru_cache(maxsize=16)
def sinc_kernel(orig: int, new: int, zero_crossings: int, rolloff: float, beta: float) -> tuple[np.ndarray, int]:
    """Polyphase filter bank for resampling by ``new / orig`` (both reduced): (new, K) float32.

    Row ``i`` holds the taps that produce output phase ``i``: the output sample
    at time ``i * orig / new`` (in input samples) from the input samples
    ``-width .. width + orig - 1`` around the start of a block of ``orig``.
    """
    # Cutoff below the lower Nyquist; ``rolloff`` leaves room for the
    # transition band so that little aliases back. In cycles per input sample:
    cutoff = 0.5 * min(orig, new) / orig * rolloff
    # Half-length of the filter in input samples: ``zero_crossings`` lobes of
    # the sinc on each side.
    width = math.ceil(zero_crossings / (2 * cutoff))
    taps = np.arange(-width, width + orig, dtype=np.float64)  # (K,)
    phases = np.arange(new, dtype=np.float64) * orig / new  # (new,)
    delay = phases[:, None] - taps[None, :]  # (new, K) output time - input time
    x = np.clip(2 * cutoff * delay, -zero_crossings, zero_crossings)
    window = np.i0(beta * np.sqrt(1 - (x / zero_crossings) ** 2)) / np.i0(beta)
    kernel = 2 * cutoff * np.sinc(x) * window  # sinc(x) = sin(pi x) / (pi x)
    kernel = kernel.astype(np.float32)
    kernel.flags.writeable = False  # shared through the cache
    return kernel, width


def reduced_rates(orig_sr: int, new_sr: int) -> tuple[int, int]:
    g = math.gcd(int(orig_sr), int(new_sr))
    return int(orig_sr) // g, int(new_sr) // g


def resample(
    waveform: np.ndarray,
    orig_sr: int,
    new_sr: int,
    zero_crossings: int = 16,
    rolloff: float = 0.945,
    beta: float = 8.6,
) -> np.ndarray:
    """Resample the last axis from ``orig_sr`` to ``new_sr`` (``speechforge.data.features.resample``
    does the same to tensors, on their device).

    A band-limited (Kaiser-windowed sinc) interpolator: with the defaults the
    pass band is flat to 94.5% of the lower Nyquist and the stop band is about
    85 dB down (Kaiser beta 8.6). Output length is ``ceil(N * new_sr / orig_sr)``
    and output sample ``j`` sits at input time ``j * orig_sr / new_sr``, so
    there is no delay.
    """
    wav = np.asarray(waveform, dtype=np.float32)
    if orig_sr == new_sr:
        return wav
    orig, new = reduced_rates(orig_sr, new_sr)
    kernel, width = sinc_kernel(orig, new, zero_crossings, rolloff, beta)
    length = wav.shape[-1]
    pad = [(0, 0)] * (wav.ndim - 1) + [(width, width + orig)]
    padded = np.pad(wav, pad)
    # Each stride of ``orig`` input samples yields ``new`` outputs, one per row of
    # the filter bank: one product over strided windows does the whole polyphase loop.
    # einsum, not matmul: BLAS sums in an order that depends on its thread count, and a
    # corpus must come out the same in one process or several
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1], axis=-1)[..., ::orig, :]
    out = np.einsum("...bk,nk->...bn", windows, kernel).reshape(*wav.shape[:-1], -1)  # phases interleaved
    return np.ascontiguousarray(out[..., : math.ceil(length * new / orig)])


# ---------------------------------------------------------------- filterbanks


def fbank(
    waveform: np.ndarray,
    sample_rate: int = 16000,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
) -> np.ndarray:
    """Kaldi log-mel filterbank of one waveform in [-1, 1]: (num_mel_bins, T) float32.

    Kaldi's defaults otherwise (povey window, pre-emphasis 0.97, DC removal,
    snip_edges, so T = 1 + (N - window) // shift). ``dither`` is in int16 units,
    as in Kaldi (its own default is 1.0).
    """
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.frame_length_ms = frame_length_ms
    opts.frame_opts.frame_shift_ms = frame_shift_ms
    opts.frame_opts.dither = dither
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = num_mel_bins
    computer = knf.OnlineFbank(opts)
    samples = np.asarray(waveform, dtype=np.float32).reshape(-1) * INT16_SCALE
    # A list converts into the C++ vector faster than a numpy array does.
    computer.accept_waveform(sample_rate, samples.tolist())
    computer.input_finished()
    n = computer.num_frames_ready
    if n == 0:
        return np.zeros((num_mel_bins, 0), dtype=np.float32)
    frames = np.stack([computer.get_frame(i) for i in range(n)])  # (T, num_mel_bins)
    return np.ascontiguousarray(frames.T, dtype=np.float32)


@dataclass(frozen=True)
class FrontEnd:
    """The filterbank settings a run's features were made with (``fbank``'s arguments),
    and the rate recordings are brought to first. An export stores them, so the runtime
    computes the features training did."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0

    def settings(self) -> dict:
        return asdict(self)

    def features(self, path: str | Path) -> np.ndarray:
        """(T, num_mel_bins) features of an audio file, or of a (num_mel_bins, T) feature .npy."""
        path = Path(path)
        if path.suffix == ".npy":
            return load_features(path, self.num_mel_bins)
        if path.suffix.lower() in AUDIO_SUFFIXES:
            wav = read_audio(path, self.sample_rate)
            return fbank(wav, self.sample_rate, self.num_mel_bins, self.frame_length_ms, self.frame_shift_ms,
                         self.dither).T
        raise DataError(f"not an audio file ({', '.join(sorted(AUDIO_SUFFIXES))}) or a feature .npy", path)
