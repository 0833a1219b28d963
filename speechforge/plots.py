"""Pictures of a run, drawn with matplotlib (headless): attention maps, curves.

Each function takes arrays and a path and writes one PNG; none reads a run itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def attention_maps(cross: np.ndarray, self_attn: np.ndarray, tokens: Sequence[str], path: Path, title: str) -> None:
    """Cross-attention (U x T') and decoder self-attention (U x U) of one utterance, averaged
    over heads. A clean diagonal in the cross-attention is the sign of a healthy run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    axes[0].imshow(cross, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    axes[0].set_xlabel("encoder frame")
    axes[0].set_ylabel("output token")
    axes[0].set_title("cross-attention (last decoder layer)")
    axes[1].imshow(self_attn, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    axes[1].set_title("decoder self-attention")
    if len(tokens) <= 60:
        for ax in axes:
            ax.set_yticks(range(len(tokens)))
            ax.set_yticklabels(tokens, fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path, title: str,
           xlabel: str = "step", log_y: bool = False) -> None:
    """One line per named (x, y) series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        if len(x):
            ax.plot(x, y, label=name)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if any(len(x) for x, _ in series.values()):
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def to_image(path: Path) -> np.ndarray:
    """A PNG as an (H, W, 3) uint8 array, for TensorBoard."""
    plt = _pyplot()
    img = plt.imread(str(path))
    return (img[..., :3] * 255).astype(np.uint8) if img.dtype != np.uint8 else img[..., :3]
