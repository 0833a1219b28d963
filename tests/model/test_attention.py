import torch

from speechforge import precision
from speechforge.model.attention import MultiHeadAttention


def attention() -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(32, 4).eval()


def test_fused_qkv_projection_outside_autograd_matches_the_three_projections():
    mha, x = attention(), torch.randn(3, 5, 32)
    separate = mha.project_qkv(x)  # grad enabled: the three products
    with torch.no_grad():
        fused = mha.project_qkv(x)
        out_fused, _ = mha(x, x, x, causal=True)
    out_separate, _ = mha(x, x, x, causal=True)
    assert "_qkv" in mha.__dict__  # the fused path ran
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_fused, out_separate, atol=1e-6, rtol=1e-5)


def test_fused_qkv_weights_follow_an_optimizer_step():
    mha, x = attention(), torch.randn(2, 4, 32)
    with torch.no_grad():
        before = mha.project_qkv(x)[1]
    opt = torch.optim.SGD(mha.parameters(), lr=0.5)
    mha(x, x, x)[0].square().sum().backward()
    opt.step()  # changes k_proj in place
    with torch.no_grad():
        after = mha.project_qkv(x)[1]
    expected = mha.split(mha.k_proj(x)).detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=1e-5)


def test_fused_qkv_under_a_search_uses_the_cast_weights():
    mha, x = attention(), torch.randn(2, 4, 32)
    with torch.no_grad(), precision.autocast("bf16", "cpu"):
        expected = mha.split(mha.v_proj(x))
        with precision.autocast_weights(mha):
            got = mha.project_qkv(x)[2]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)
    # the fp32 weights again after the search: the fused weights are made anew from them
    with torch.no_grad():
        assert mha.project_qkv(x)[2].dtype == torch.float32
