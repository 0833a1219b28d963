"""Speech from text with espeak-ng, then a simulated channel (noise, gain).

espeak-ng comes from the ``espeakng-loader`` wheel (the shared library and its
data folder), driven through ctypes: no system package. Synthesis is formant
based: it sounds robotic, but it is fast (hundreds of times real time), it
runs anywhere, and its voices, variants, rates and pitches give a speech
recognizer speaker variety to generalise over.

Determinism. espeak-ng keeps state from one utterance to the next inside the
library (the voice source's phase, its random generator), so the same text
twice in one process does not give the same samples. We load the library
afresh for every utterance and unload it after (the library is small; this
costs a few milliseconds), so an utterance depends only on its own settings,
whatever ran before it and whichever worker runs it.
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import espeakng_loader
import numpy as np

from speechforge.data.features import resample

SAMPLE_RATE = 16000

# espeak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_CHARS_UTF8 = 1
_EE_OK = 0
_RATE, _PITCH, _RANGE, _WORDGAP = 1, 3, 4, 7

# Called from C as (short *wav, int numsamples, espeak_EVENT *events) -> 0 to go on.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
# espeak-ng is one global state per process; two threads must not share it.
_LOCK = threading.Lock()

# Words we keep capitalised for espeak: it reads a lowercase "i" as a letter.
_CAPITAL_WORDS = {"i", "i'm", "i'll", "i've", "i'd"}
_QUESTION_STARTS = {
    "what", "what's", "where", "when", "why", "who", "who's", "how", "can", "could",
    "is", "isn't", "are", "do", "does", "did", "have", "has", "will",
}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker and how it speaks in one utterance."""

    language: str  # espeak voice, e.g. "en-us" (accent and pronunciation)
    variant: str  # espeak variant, e.g. "f3" (timbre: formants, pitch range)
    rate: int = 175  # words per minute (espeak's default)
    pitch: int = 50  # 0-100, within the variant's pitch range
    pitch_range: int = 50  # 0-100, how much the intonation moves
    word_gap: int = 0  # extra pause between words, in 10 ms units

    @property
    def speaker(self) -> str:
        return f"{self.language}+{self.variant}"


@dataclass(frozen=True)
class Channel:
    """What happens to the speech between the mouth and the file."""

    snr_db: float  # speech power over noise power
    noise: str  # "white" or "pink"
    peak_dbfs: float  # the loudest sample ends at this level
    lead_s: float = 0.0  # silence (noise only) before the speech
    trail_s: float = 0.0  # and after


def data_path() -> Path:
    return Path(espeakng_loader.get_data_path())


@lru_cache(maxsize=1)
def available_variants() -> frozenset[str]:
    """Variant names the data folder holds (``voices/!v``).

    espeak silently ignores an unknown variant, so we check names ourselves.
    """
    return frozenset(p.name for p in (data_path() / "voices" / "!v").iterdir() if p.is_file())


def espeak(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    """Synthesize ``text`` with espeak-ng: (int16 samples, sample rate) at espeak's own rate."""
    if voice.variant not in available_variants():
        raise ValueError(f"espeak variant {voice.variant!r} not found in {data_path() / 'voices' / '!v'}")
    chunks: list[np.ndarray] = []

    @_SYNTH_CALLBACK
    def collect(wav, num_samples, _events):
        if num_samples > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    with _LOCK:
        lib = _load_fresh()
        try:
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path()).encode(), _INITIALIZE_DONT_EXIT
            )
            if rate <= 0:
                raise RuntimeError(f"espeak-ng failed to initialise with data at {data_path()}")
            lib.espeak_SetSynthCallback(collect)
            lib.espeak_ng_SetRandSeed(0)
            if lib.espeak_SetVoiceByName(voice.speaker.encode()) != _EE_OK:
                raise ValueError(f"espeak voice {voice.language!r} not found")
            for param, value in ((_RATE, voice.rate), (_PITCH, voice.pitch),
                                 (_RANGE, voice.pitch_range), (_WORDGAP, voice.word_gap)):
                lib.espeak_SetParameter(param, int(value), 0)
            data = _spoken_form(text).encode("utf-8") + b"\0"
            status = lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status} on {text!r}")
        finally:
            lib.espeak_Terminate()
            _unload(lib)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return samples, rate


def _load_fresh() -> ctypes.CDLL:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    return lib


def _unload(lib: ctypes.CDLL) -> None:
    # dlclose drops our reference; when it was the last one the library and
    # its state go, and the next load starts clean. Where the platform has no
    # dlclose we keep it loaded: still correct, only not bit-reproducible.
    import _ctypes

    close = getattr(_ctypes, "dlclose", None)
    if close is not None:
        close(lib._handle)


def _spoken_form(text: str) -> str:
    """Transcript -> what espeak should read.

    Lowercase, because espeak spells out all-capital words as acronyms ("US"
    -> "U S"); but "I" stays a capital, which espeak reads as the pronoun.
    A question mark where the sentence is a question, for its intonation.
    """
    words = [w.upper() if w in _CAPITAL_WORDS else w for w in text.lower().split()]
    if not words:
        return ""
    return " ".join(words) + ("?" if words[0] in _QUESTION_STARTS else ".")


def synthesize(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Clean speech: float32 in [-1, 1] at ``sample_rate`` (espeak's 22050 Hz, resampled)."""
    samples, rate = espeak(text, voice)
    wav = samples.astype(np.float32) / 32768.0
    return resample(wav, rate, sample_rate)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with power falling as 1/f: white noise shaped in the frequency domain."""
    size = 1 << max(n - 1, 1).bit_length()  # an FFT of a prime length is slow; cut to n after
    spectrum = rng.standard_normal(size // 2 + 1) + 1j * rng.standard_normal(size // 2 + 1)
    freqs = np.arange(size // 2 + 1, dtype=np.float64)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0.0  # no DC offset
    noise = np.fft.irfft(spectrum, size)[:n]
    return noise / (noise.std() + 1e-12)


def apply_channel(speech: np.ndarray, channel: Channel, rng: np.random.Generator,
                  sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Pad with silence, add noise at ``channel.snr_db``, scale to ``channel.peak_dbfs``.

    The SNR is measured against the speech's power where it speaks (samples
    above -40 dB of its peak), so pauses inside a sentence do not lower it.
    Output is float32 on the int16 grid: written as 16-bit PCM and read back,
    it gives the same samples and so the same features.
    """
    lead = np.zeros(int(channel.lead_s * sample_rate), dtype=np.float64)
    trail = np.zeros(int(channel.trail_s * sample_rate), dtype=np.float64)
    clean = np.concatenate([lead, speech.astype(np.float64), trail])
    active = np.abs(speech) > np.abs(speech).max() * 0.01 if speech.size else np.zeros(0, bool)
    speech_power = float(np.mean(speech[active].astype(np.float64) ** 2)) if active.any() else 0.0
    if channel.noise == "white":
        noise = rng.standard_normal(clean.size)
    elif channel.noise == "pink":
        noise = pink_noise(clean.size, rng)
    else:
        raise ValueError(f"noise: expected 'white' or 'pink', got {channel.noise!r}")
    noisy = clean + noise * math.sqrt(speech_power / 10 ** (channel.snr_db / 10))
    peak = np.abs(noisy).max()
    if peak > 0:
        noisy *= 10 ** (channel.peak_dbfs / 20) / peak
    quantized = np.clip(np.round(noisy * 32768.0), -32768, 32767) / 32768.0
    return quantized.astype(np.float32)
