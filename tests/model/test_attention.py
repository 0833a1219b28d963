import torch

from speechforge import precision
from speechforge.model.attention import MultiHeadAttention, attention_mask, masked_scores, padding_mask


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


def masked_fill_probs(q, k, mask, scale):
    """The path masked_scores replaced: scaled q times k, masked_fill_ with -inf, softmax."""
    scores = (q * scale) @ k.transpose(-2, -1)
    return scores.masked_fill_(~mask, float("-inf")).softmax(-1)


def test_masked_scores_softmax_equals_masked_fill_bit_for_bit_in_fp32_and_bf16():
    torch.manual_seed(0)
    b, h, length, dh = 3, 4, 7, 16
    key_valid = padding_mask(torch.tensor([7, 5, 2]))
    for mask in (attention_mask(key_valid, length, length, False), attention_mask(key_valid, length, length, True),
                 attention_mask(None, length, length, True)):
        for bf16 in (False, True):
            q, k = (torch.randn(b, length, h, dh).transpose(1, 2).requires_grad_() for _ in range(2))
            grads = []
            for probs_of in (masked_fill_probs, masked_scores):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    probs = probs_of(q, k, mask, 0.25)
                    if probs_of is masked_scores:
                        probs = probs.softmax(-1)
                (g_probs,) = torch.autograd.grad(probs.float().sin().sum(), probs, retain_graph=True)
                grads.append((probs.detach(), *torch.autograd.grad(probs, (q, k), g_probs)))
            assert grads[1][0].dtype == (torch.bfloat16 if bf16 else torch.float32)
            for expected, got in zip(*grads):  # probabilities, then q's and k's gradients
                assert torch.equal(got, expected)


def test_a_query_that_sees_no_key_gets_zeros_and_finite_gradients():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, dropout=0.1).train()  # dropout on a CPU: the explicit path
    x = torch.randn(2, 5, 32, requires_grad=True)
    key_valid = torch.tensor([[True] * 5, [False] * 5])  # the second utterance has no real key
    out, weights = mha(x, x, x, key_valid=key_valid, need_weights=True)
    assert torch.equal(weights[1], torch.zeros_like(weights[1]))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mha.parameters())
