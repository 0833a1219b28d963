"""Dropout whose masks cost a sixth of PyTorch's on a CPU.

PyTorch's CPU dropout draws one Bernoulli sample per element (``bernoulli_``), at about
6 ns an element: on the quickstart that was a fifth of the training step in fp32 and a
quarter in bf16, more than all the matrix products of the encoder. Here one 64-bit draw
of the generator decides four elements, each by comparing 16 random bits with the rate,
so a rate is exact to 1/65536; kept values are scaled by 1 / (1 - p) as F.dropout does.
The draws come from torch's default generator, so ``torch.manual_seed`` and the RNG state a
checkpoint keeps make runs repeatable as before.

The mask is kept as bools (a byte an element, where PyTorch's own CPU dropout keeps a mask in
the input's dtype) and applied as 0 / 1 in the input's dtype. A product of a float tensor and a
bool one first casts the bools to a new float tensor, through a conversion torch does not
vectorise (2.4 ms for 5M elements to bf16); going through integers of the float's width, whose
1 times the bit pattern of 1.0 is 1.0, takes 0.5 ms, and the result is the same bit for bit.
Applying a mask that way, forward and backward, took 3.4 against 8.4 ms in bf16 and 6.6 against
8.4 ms in fp32 for an attention block's 5M probabilities (benchmarks/README.md).

Elsewhere PyTorch's own kernel is already fast (CUDA draws in parallel) and is used, as it
is under ``torch.compile``, which generates its own random numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of ``shape``, each element True (kept) with probability
    1 - round(p * 65536) / 65536, independently."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return bits >= round(p * _LEVELS) - _LEVELS // 2


# 1.0's bits, and the integer type of the same width that carries them
_ONE_BITS = {torch.bfloat16: (torch.int16, 0x3F80), torch.float16: (torch.int16, 0x3C00),
             torch.float32: (torch.int32, 0x3F800000)}


def as_dtype(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool tensor as 0 and 1 of ``dtype``: ``keep.to(dtype)``, by the faster way above."""
    if dtype not in _ONE_BITS:
        return keep.to(dtype)
    integer, one = _ONE_BITS[dtype]
    return keep.view(torch.uint8).to(integer).mul_(one).view(dtype)


def mask_and_scale(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """x * keep * scale in one pass, rounded once as ``(x * keep).mul_(scale)`` rounds."""
    return torch.addcmul(x.new_zeros(()), x, as_dtype(keep, x.dtype), value=scale)


class _MaskAndScale(torch.autograd.Function):
    """x * keep * scale, saving only the bool mask for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return mask_and_scale(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return mask_and_scale(grad, keep, ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with the cheap CPU masks above; the same contract."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling() or p >= 1.0:
        return F.dropout(x, p, training)
    return _MaskAndScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (so code that finds dropout layers by type still finds these), with
    the cheap CPU masks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
