"""A strided Conv2d whose weight gradient, on a CPU in fp32, comes from matrix products.

oneDNN's fp32 backward-weights kernel for the front end's second convolution (256 channels
in and out, 3 x 3, stride 2, channels-last) ran at 121 GFLOP/s on the dev Intel Xeon, where its
forward ran at 274 and MKL's products reach about 300: 562 of the bpe5k_ctc training step's
3,260 ms. The same gradient is a sum over the kernel's offsets of products of the output's
gradient with the input's rows and columns at that offset, and offsets a stride apart read the
same rows one output row later. So each column offset and row phase (at stride 2, 3 x 2 of them)
is copied once into a contiguous plane, and each kernel row reads its rows of that plane in
place through a batched product, summed over the batch: 379 ms for that convolution
(benchmarks/README.md). With fewer than 128 input channels the copies cost more than the
product saves (at 64: 43 against 30 ms), and in bf16 oneDNN is as fast (465 against 481 ms
without AMX), so elsewhere the convolution is PyTorch's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_CHANNELS = 128  # input channels from which the products are the faster weight gradient


def weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """The weight gradient (O, C, k, k) of an unpadded, undilated ``kernel`` x ``kernel``
    convolution at ``stride``, from its input ``x`` (B, C, H, W) and output gradient
    ``grad`` (B, O, H', W')."""
    b, c = x.shape[:2]
    o, out_h, out_w = grad.shape[1:]
    rows = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view of a channels-last input
    g = grad.permute(0, 2, 3, 1).reshape(b, out_h * out_w, o).transpose(1, 2)  # (B, O, H'W')
    out = x.new_empty(kernel, kernel, o, c)
    for kw in range(kernel):
        columns = rows[:, :, kw : kw + stride * (out_w - 1) + 1 : stride]  # (B, H, W', C)
        for phase in range(min(stride, kernel)):
            plane = columns[:, phase::stride].contiguous()  # every stride-th row from ``phase``
            for kh in range(phase, kernel, stride):
                shift = kh // stride
                # (B, H'W', C) in place: each batch's rows are contiguous, the batches strided
                taps = plane[:, shift : shift + out_h].flatten(1, 2)
                torch.sum(torch.bmm(g, taps), 0, out=out[kh, kw])
    return out.permute(2, 3, 0, 1)


class _Convolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv2d(x, weight, bias, stride)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [ctx.stride] * 2, [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if need_w:
            grad_w = weight_grad(x, grad, weight.shape[2], ctx.stride)
        if need_b and ctx.has_bias:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class StridedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (square kernel and stride, no padding), with the weight gradient above
    where it is the faster: training on a CPU in fp32, outside autocast and compilation,
    with at least ``MIN_CHANNELS`` input channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.in_channels >= MIN_CHANNELS and x.device.type == "cpu"
                and x.dtype == self.weight.dtype == torch.float32 and torch.is_grad_enabled() and self.weight.requires_grad and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing()):
            return _Convolution.apply(x, self.weight, self.bias, self.stride[0])
        return super().forward(x)
