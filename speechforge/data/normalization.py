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

    def update(self, feats: np.ndarray) -> None:  # (T, F)
        pass

    def __call__(self, feats: np.ndarray) -> np.ndarray:
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

    def update(self, feats: np.ndarray) -> None:
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

    def __call__(self, feats: np.ndarray) -> np.ndarray:
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

    def __call__(self, feats: np.ndarray) -> np.ndarray:
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
