import pytest
import torch
import torch.nn.functional as F

from speechforge.model.conv import MIN_CHANNELS, StridedConv2d, weight_grad


@pytest.mark.parametrize("kernel,stride", [(3, 2), (3, 1), (5, 3), (2, 2), (1, 2)])
def test_weight_grad_equals_the_convolutions_own(kernel, stride):
    g = torch.Generator().manual_seed(kernel * 10 + stride)
    x = torch.randn(3, 6, 17, 12, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(5, 6, kernel, kernel, generator=g)
    grad = torch.randn_like(F.conv2d(x, weight, stride=stride))
    expected = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride] * 2, [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1]
    torch.testing.assert_close(weight_grad(x, grad, kernel, stride), expected, rtol=1e-5, atol=1e-4)


def test_fp32_training_takes_the_products_and_matches_conv2d():
    torch.manual_seed(0)
    conv = StridedConv2d(MIN_CHANNELS, 8, 3, stride=2).to(memory_format=torch.channels_last)
    plain = torch.nn.Conv2d(MIN_CHANNELS, 8, 3, stride=2)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, MIN_CHANNELS, 11, 9).contiguous(memory_format=torch.channels_last)
    grads = []
    for module in (conv, plain):
        xi = x.clone().requires_grad_()
        out = module(xi)
        grads.append((out, *torch.autograd.grad(out.square().sum(), (xi, module.weight, module.bias))))
    assert type(grads[0][0].grad_fn).__name__ == "_ConvolutionBackward"  # the products ran
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_bf16_few_channels_and_inference_keep_pytorchs_convolution():
    torch.manual_seed(0)
    wide = StridedConv2d(MIN_CHANNELS, 4, 3, stride=2)
    narrow = StridedConv2d(MIN_CHANNELS // 2, 4, 3, stride=2)
    x = torch.randn(1, MIN_CHANNELS, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(wide(x).grad_fn).__name__ != "_ConvolutionBackward"
    assert type(narrow(x[:, : MIN_CHANNELS // 2]).grad_fn).__name__ != "_ConvolutionBackward"
    with torch.no_grad():
        assert wide(x).grad_fn is None
