"""Feature normalization: global mean-variance, per-utterance (cepstral), or none.

Global statistics are accumulated in the single pass that checks the training files
and stored with the run, so decoding and transcription normalize exactly as training did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from speechforge import registry


class Normalizer:
    name = "none"
    needs_stats = False

    def update(self, feats: np.ndarray) -> None:  # (T, F)
        pass

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        return feats

    def state(self) -> dict:
        return {"name": self.name}

    def load_state(self, state: dict) -> None:
        pass

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.state()))

    def load(self, path: Path) -> None:
        self.load_state(json.loads(path.read_text()))


class GlobalMVN(Normalizer):
    name = "global_mvn"
    needs_stats = True

    def __init__(self, eps: float = 1e-5):
        self.eps = eps
        self.count = 0
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def update(self, feats: np.ndarray) -> None:
        # float64 sums: float32 loses the variance over millions of frames
        x = feats.astype(np.float64)
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
        return (feats - self.mean) / self.std

    def state(self) -> dict:
        if self.mean is None:
            self._finalize()
        return {"name": self.name, "mean": self.mean.tolist(), "std": self.std.tolist(), "frames": self.count}

    def load_state(self, state: dict) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float32)
        self.std = np.asarray(state["std"], dtype=np.float32)
        self.count = state.get("frames", 0)


class UtteranceMVN(Normalizer):
    name = "utterance_mvn"

    def __init__(self, variance: bool = True, eps: float = 1e-5):
        self.variance = variance
        self.eps = eps

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        out = feats - feats.mean(0, keepdims=True)
        if self.variance:
            out = out / np.sqrt(feats.var(0, keepdims=True) + self.eps)
        return out

    def state(self) -> dict:
        return {"name": self.name, "variance": self.variance}

    def load_state(self, state: dict) -> None:
        self.variance = state.get("variance", True)


@registry.normalizers.register("global_mvn")
def global_mvn() -> GlobalMVN:
    """Mean and variance per mel bin over the training split (stored with the run)."""
    return GlobalMVN()


@registry.normalizers.register("utterance_mvn")
def utterance_mvn(variance: bool = True) -> UtteranceMVN:
    """Per-utterance (cepstral) mean and, optionally, variance normalization."""
    return UtteranceMVN(variance)


@registry.normalizers.register("none")
def none() -> Normalizer:
    """Features as stored."""
    return Normalizer()


def from_state(state: dict) -> Normalizer:
    """The normalizer a saved state (``normalization.json``) describes, statistics loaded."""
    normalizer = registry.normalizers.get(state["name"])()
    normalizer.load_state(state)
    return normalizer
