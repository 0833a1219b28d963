"""What every decoder returns, and the shared helpers of the search strategies."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Hypothesis:
    tokens: list[int]  # without <sos>/<eos>
    score: float  # total log-probability (as the decoder scores it)


def max_lengths(enc_lens: torch.Tensor, max_len_ratio: float, max_len: int | None) -> torch.Tensor:
    """Per-utterance output cap: a ratio of the encoder length, optionally bounded."""
    caps = (enc_lens.float() * max_len_ratio).ceil().long().clamp(min=1)
    if max_len is not None:
        caps = caps.clamp(max=max_len)
    return caps


def min_lengths(enc_lens: torch.Tensor, min_len_ratio: float) -> torch.Tensor:
    return (enc_lens.float() * min_len_ratio).floor().long()


NEG_INF = -math.inf
