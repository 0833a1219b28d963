"""Training-time augmentation on padded feature batches: tensors in, tensors out."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from speechforge import registry

Count = Annotated[int, Field(ge=0)]


def mask_along(feats: torch.Tensor, lengths: torch.Tensor, axis: int, num: int, width: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero ``num`` random bands of up to ``width`` along time (axis 1) or frequency (axis 2)
    of (B, T, F) features; time bands stay inside each utterance's real length."""
    if num == 0 or width == 0:
        return feats
    b, t, f = feats.shape
    extent = lengths.to(feats.device) if axis == 1 else torch.full((b,), f, device=feats.device)
    size = t if axis == 1 else f
    positions = torch.arange(size, device=feats.device)
    keep = torch.ones(b, size, dtype=torch.bool, device=feats.device)
    for _ in range(num):
        w = torch.randint(0, width + 1, (b,), generator=generator).to(feats.device)
        w = torch.minimum(w, extent)
        start = (torch.rand(b, generator=generator).to(feats.device) * (extent - w + 1).float()).long()
        keep &= ~((positions[None] >= start[:, None]) & (positions[None] < (start + w)[:, None]))
    shape = (b, size, 1) if axis == 1 else (b, 1, size)
    return feats * keep.view(shape).to(feats.dtype)


class SpecAugment:
    def __init__(self, freq_masks: int, freq_width: int, time_masks: int, time_width: int):
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        feats = mask_along(feats, lengths, 2, self.freq_masks, self.freq_width, generator)
        return mask_along(feats, lengths, 1, self.time_masks, self.time_width, generator)


@registry.augmentations.register("specaugment")
def specaugment(
    freq_masks: Count = 2, freq_width: Count = 5, time_masks: Count = 2, time_width: Count = 40
) -> SpecAugment:
    """SpecAugment frequency and time masks (defaults: the HW4P2 settings)."""
    return SpecAugment(freq_masks, freq_width, time_masks, time_width)
