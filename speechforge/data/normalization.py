"""Feature normalization: global mean-variance, per-utterance (cepstral), or none.

Global statistics are accumulated in the single pass that checks the training files
and stored with the run, so decoding and transcription normalize exactly as training did.

Each normalizer can first smooth every frame along frequency (``cepstral_order``): the
log-mel spectrum is cut to its first coefficients of a DCT and turned back into mel bins,
as MFCCs keep 13 of 23. What it drops is the fine structure, chiefly the harmonics of the
speaker's pitch; what it keeps is the spectral envelope, the formants that carry the words.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from speechforge import registry

CepstralOrder = Annotated[int, Field(ge=0)]


@functools.lru_cache(maxsize=8)
def envelope_projection(num_bins: int, order: int) -> np.ndarray:
    """(F, F) float32: frames @ it keeps the first ``order`` orthonormal DCT-II coefficients."""
    n = np.arange(num_bins)
    basis = np.cos(np.pi / num_bins * (n[None, :] + 0.5) * np.arange(order)[:, None])  # (order, F)
    basis *= np.sqrt(2.0 / num_bins)
    basis[0] /= np.sqrt(2.0)
    return (basis.T @ basis).astype(np.float32)


class Normalizer:
    name = "none"
    needs_stats = False
    per_speaker = False  # wants every split's frames (observe), not only the training ones

    def __init__(self, cepstral_order: int = 0):
        self.cepstral_order = cepstral_order

    def smooth(self, feats: np.ndarray) -> np.ndarray:
        """(T, F) frames cut to their spectral envelope; as they are when cepstral_order is 0."""
        if not self.cepstral_order:
            return feats
        if self.cepstral_order >= feats.shape[1]:
            raise ValueError(f"cepstral_order {self.cepstral_order} keeps every one of the {feats.shape[1]} "
                             "mel bins: it must be smaller (or 0 to leave frames as they are)")
        return feats @ envelope_projection(feats.shape[1], self.cepstral_order)

    def update(self, feats: np.ndarray, speaker: str | None = None) -> None:  # (T, F), training frames
        pass

    def __call__(self, feats: np.ndarray, speaker: str | None = None) -> np.ndarray:
        return self.smooth(feats)

    def state(self) -> dict:
        return {"name": self.name, "cepstral_order": self.cepstral_order}

    def load_state(self, state: dict) -> None:
        self.cepstral_order = state.get("cepstral_order", 0)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.state()))

    def load(self, path: Path) -> None:
        self.load_state(json.loads(path.read_text()))


class GlobalMVN(Normalizer):
    name = "global_mvn"
    needs_stats = True

    def __init__(self, eps: float = 1e-5, cepstral_order: int = 0):
        super().__init__(cepstral_order)
        self.eps = eps
        self.count = 0
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def update(self, feats: np.ndarray, speaker: str | None = None) -> None:
        # float64 sums: float32 loses the variance over millions of frames
        x = self.smooth(feats).astype(np.float64)
        if self.total is None:
            self.total, self.total_sq = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        self.total += x.sum(0)
        self.total_sq += (x * x).sum(0)
        self.count += x.shape[0]
        self.mean = None

    def _finalize(self) -> None:
        if self.count == 0:
            raise RuntimeError("global_mvn has seen no training frames")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean * mean, 0.0)
        self.mean = mean.astype(np.float32)
        self.std = np.sqrt(var + self.eps).astype(np.float32)

    def __call__(self, feats: np.ndarray, speaker: str | None = None) -> np.ndarray:
        if self.mean is None:
            self._finalize()
        return (self.smooth(feats) - self.mean) / self.std

    def state(self) -> dict:
        if self.mean is None:
            self._finalize()
        return {**super().state(), "mean": self.mean.tolist(), "std": self.std.tolist(), "frames": self.count}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.mean = np.asarray(state["mean"], dtype=np.float32)
        self.std = np.asarray(state["std"], dtype=np.float32)
        self.count = state.get("frames", 0)


class UtteranceMVN(Normalizer):
    name = "utterance_mvn"

    def __init__(self, variance: bool = True, eps: float = 1e-5, cepstral_order: int = 0):
        super().__init__(cepstral_order)
        self.variance = variance
        self.eps = eps

    def __call__(self, feats: np.ndarray, speaker: str | None = None) -> np.ndarray:
        feats = self.smooth(feats)
        out = feats - feats.mean(0, keepdims=True)
        if self.variance:
            out = out / np.sqrt(feats.var(0, keepdims=True) + self.eps)
        return out

    def state(self) -> dict:
        return {**super().state(), "variance": self.variance}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.variance = state.get("variance", True)


class SpeakerMVN(Normalizer):
    """Each speaker's own mean removed (Kaldi's per-speaker CMN), then one standard deviation
    per bin for all: a speaker's microphone, gain and room, constant over their recordings,
    vanish, while a single word's own spectrum (which per-utterance normalization removes)
    stays. Means come from every split's frames, transcripts unused, so a test speaker is
    normalized by the statistics of their own test recordings; utterances whose source names
    no speaker, and recordings transcribed later, take the training mean."""

    name = "speaker_mvn"
    needs_stats = True
    per_speaker = True

    def __init__(self, eps: float = 1e-5, cepstral_order: int = 0):
        super().__init__(cepstral_order)
        self.eps = eps
        self.sums: dict[str | None, np.ndarray] = {}  # every split's frames, per speaker
        self.counts: dict[str | None, int] = {}
        self.train: dict[str | None, list] = {}  # training frames: [sum, sum of squares, count]
        self.means: dict[str, np.ndarray] | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def observe(self, feats: np.ndarray, speaker: str | None = None) -> np.ndarray:
        """Frames of any split: they count towards their speaker's mean only. Returns them
        smoothed, in float64."""
        x = self.smooth(feats).astype(np.float64)
        self.sums[speaker] = self.sums.get(speaker, 0.0) + x.sum(0)
        self.counts[speaker] = self.counts.get(speaker, 0) + x.shape[0]
        self.means = None
        return x

    def update(self, feats: np.ndarray, speaker: str | None = None) -> None:
        x = self.observe(feats, speaker)
        acc = self.train.setdefault(speaker, [0.0, 0.0, 0])
        acc[0], acc[1], acc[2] = acc[0] + x.sum(0), acc[1] + (x * x).sum(0), acc[2] + x.shape[0]

    def _finalize(self) -> None:
        frames = sum(acc[2] for acc in self.train.values())
        if frames == 0:
            raise RuntimeError("speaker_mvn has seen no training frames")
        self.mean = (sum(acc[0] for acc in self.train.values()) / frames).astype(np.float32)
        self.means = {spk: (self.sums[spk] / self.counts[spk]).astype(np.float32) for spk in self.sums if spk is not None}
        # the spread of training frames around the mean each is normalized by
        var = 0.0
        for spk, (total, total_sq, n) in self.train.items():
            centre = self.means[spk] if spk is not None else self.mean
            var = var + total_sq - 2 * centre * total + n * centre.astype(np.float64) ** 2
        self.std = np.sqrt(np.maximum(var / frames, 0.0) + self.eps).astype(np.float32)

    def __call__(self, feats: np.ndarray, speaker: str | None = None) -> np.ndarray:
        if self.means is None:
            self._finalize()
        centre = self.means.get(speaker, self.mean) if speaker is not None else self.mean
        return (self.smooth(feats) - centre) / self.std

    def add_speakers(self, frames_by_speaker: dict[str, list[np.ndarray]]) -> list[str]:
        """Means for speakers the statistics have not met (a split decoded after training),
        from their (T, F) frames; the ones already known keep theirs. Returns the new names."""
        if self.means is None:
            self._finalize()
        new = sorted(spk for spk in frames_by_speaker if spk not in self.means)
        for spk in new:
            x = np.concatenate([self.smooth(f) for f in frames_by_speaker[spk]]).astype(np.float64)
            self.means[spk] = x.mean(0).astype(np.float32)
        return new

    def state(self) -> dict:
        if self.means is None:
            self._finalize()
        return {**super().state(), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "speakers": {spk: m.tolist() for spk, m in sorted(self.means.items())},
                "frames": {spk or "": n for spk, n in self.counts.items()}}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.mean = np.asarray(state["mean"], dtype=np.float32)
        self.std = np.asarray(state["std"], dtype=np.float32)
        self.means = {spk: np.asarray(m, dtype=np.float32) for spk, m in state["speakers"].items()}


@registry.normalizers.register("speaker_mvn")
def speaker_mvn(cepstral_order: CepstralOrder = 0) -> SpeakerMVN:
    """Each speaker's mean removed (from all their recordings, test ones included), one std per bin; needs sources that name speakers."""
    return SpeakerMVN(cepstral_order=cepstral_order)


@registry.normalizers.register("global_mvn")
def global_mvn(cepstral_order: CepstralOrder = 0) -> GlobalMVN:
    """Mean and variance per mel bin over the training split (stored with the run); cepstral_order > 0 smooths each frame first."""
    return GlobalMVN(cepstral_order=cepstral_order)


@registry.normalizers.register("utterance_mvn")
def utterance_mvn(variance: bool = True, cepstral_order: CepstralOrder = 0) -> UtteranceMVN:
    """Per-utterance (cepstral) mean and, optionally, variance normalization; cepstral_order > 0 smooths each frame first."""
    return UtteranceMVN(variance, cepstral_order=cepstral_order)


@registry.normalizers.register("none")
def none(cepstral_order: CepstralOrder = 0) -> Normalizer:
    """Features as stored; cepstral_order > 0 keeps only each frame's spectral envelope."""
    return Normalizer(cepstral_order)


def from_state(state: dict) -> Normalizer:
    """The normalizer a saved state (``normalization.json``) describes, statistics loaded."""
    normalizer = registry.normalizers.get(state["name"])()
    normalizer.load_state(state)
    return normalizer
