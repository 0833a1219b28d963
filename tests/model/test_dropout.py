import math

import pytest
import torch

from speechforge.model.dropout import Dropout, as_dtype, dropout, keep_mask, mask_and_scale

N = 1 << 20


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_masks_drop_at_the_rate_asked(p):
    torch.manual_seed(0)
    kept = keep_mask((N,), p).float()
    sigma = math.sqrt(p * (1 - p) / N)
    assert abs(kept.mean().item() - (1 - p)) < 5 * sigma
    # neighbours share a 64-bit draw: they must still be independent
    both = (kept[0::2] * kept[1::2]).mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / (N // 2))


def test_every_position_in_a_draw_is_uniform():
    torch.manual_seed(1)
    kept = keep_mask((N,), 0.25).float().view(-1, 4).mean(0)  # the four 16-bit lanes of each draw
    assert torch.all((kept - 0.75).abs() < 5 * math.sqrt(0.25 * 0.75 / (N // 4)))


def test_output_keeps_the_expectation_and_the_dtype():
    torch.manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.ones(N, dtype=dtype)
        y = dropout(x, 0.2)
        assert y.dtype == dtype
        values = torch.unique(y.float())
        assert values[0] == 0.0 and len(values) == 2 and values[1].item() == pytest.approx(1.25, rel=1e-2)
        assert abs(y.float().mean().item() - 1.0) < 0.01


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(3)
    x = torch.randn(64, 100, requires_grad=True)
    y = dropout(x, 0.3)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    kept = y.detach() != 0
    torch.testing.assert_close(x.grad, upstream * kept / 0.7)
    torch.testing.assert_close(y.detach(), x.detach() * kept / 0.7)


def test_seed_repeats_the_masks_and_eval_is_identity():
    layer = Dropout(0.1)
    x = torch.randn(8, 50)
    torch.manual_seed(4)
    a = layer(x)
    torch.manual_seed(4)
    b = layer(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(layer, torch.nn.Dropout)  # stages find dropout layers by type
    layer.eval()
    assert layer(x) is x
    assert dropout(x, 0.0) is x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_a_mask_as_floats_through_integers_is_the_cast_bit_for_bit(dtype):
    torch.manual_seed(5)
    keep = keep_mask((3, 1000), 0.3)
    fast = as_dtype(keep, dtype)
    assert fast.dtype == dtype and fast.shape == keep.shape
    assert torch.equal(fast, keep.to(dtype)) and set(fast.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_masking_and_scaling_rounds_as_multiplying_by_the_bools_then_the_scale(dtype):
    torch.manual_seed(6)
    x = (torch.randn(4, 4096) * 100).to(dtype)
    keep = keep_mask(x.shape, 0.1)
    for scale in (1 / 0.9, 1 / 0.7):
        assert torch.equal(mask_and_scale(x, keep, scale), (x * keep).mul_(scale))


def test_bf16_dropout_gradient_is_the_forward_mask_and_scale():
    torch.manual_seed(7)
    x = torch.randn(32, 300, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.1)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    kept = y.detach() != 0
    assert torch.equal(x.grad, (upstream * kept).mul_(1 / 0.9))
