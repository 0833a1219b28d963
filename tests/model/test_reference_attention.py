"""The torch MultiHeadAttention against the NumPy reference, which is itself checked
against finite differences: forward outputs, input gradients and parameter gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechforge.model.attention import MultiHeadAttention, padding_mask
from speechforge.model.reference_attention import (
    Linear,
    ScaledDotProductAttention,
    Softmax,
    causal_mask,
)
from speechforge.model.reference_attention import MultiHeadAttention as ReferenceMultiHeadAttention

D_MODEL, NUM_HEADS = 8, 2
ATOL = 1e-10


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to x, perturbed in place."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        plus = f()
        x[i] = old - eps
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


# --- the reference against finite differences --------------------------------------


def test_softmax_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    z, upstream = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    softmax = Softmax()
    softmax.forward(z)
    analytic = softmax.backward(upstream)
    numeric = numerical_grad(lambda: (Softmax().forward(z) * upstream).sum(), z)
    np.testing.assert_allclose(analytic, numeric, atol=1e-8)


def test_softmax_rows_sum_to_one_even_for_huge_scores():
    z = np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(Softmax().forward(z), [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-15)


def test_linear_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    layer = Linear(4, 3, rng)
    x, upstream = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 3))
    layer.forward(x)
    dx = layer.backward(upstream)

    def loss():
        return (layer.forward(x) * upstream).sum()

    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=1e-8)
    np.testing.assert_allclose(layer.dW, numerical_grad(loss, layer.W), atol=1e-8)
    np.testing.assert_allclose(layer.db, numerical_grad(loss, layer.b), atol=1e-8)


def test_masked_attention_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    Q, K, V = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 6))
    mask = np.zeros((2, 1, 5), dtype=bool)
    mask[1, :, 2:] = True  # second item: only two real keys
    upstream = rng.normal(size=(2, 3, 6))
    attention = ScaledDotProductAttention()
    attention.forward(Q, K, V, mask)
    dQ, dK, dV = attention.backward(upstream)

    def loss():
        return (ScaledDotProductAttention().forward(Q, K, V, mask) * upstream).sum()

    np.testing.assert_allclose(dQ, numerical_grad(loss, Q), atol=1e-8)
    np.testing.assert_allclose(dK, numerical_grad(loss, K), atol=1e-8)
    np.testing.assert_allclose(dV, numerical_grad(loss, V), atol=1e-8)
    assert np.all(dK[1, 2:] == 0) and np.all(dV[1, 2:] == 0), "masked keys must get no gradient"


def test_multi_head_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    mha = ReferenceMultiHeadAttention(4, 2, rng)
    query, key, value = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4, 4)), rng.normal(size=(2, 4, 4))
    pad = np.array([[False] * 4, [False, False, True, True]])
    upstream = rng.normal(size=(2, 3, 4))
    mha.forward(query, key, value, key_padding_mask=pad)
    grads = mha.backward(upstream)

    def loss():
        return (mha.forward(query, key, value, key_padding_mask=pad) * upstream).sum()

    for analytic, x in zip(grads, (query, key, value)):
        np.testing.assert_allclose(analytic, numerical_grad(loss, x), atol=1e-8)
    mha.forward(query, key, value, key_padding_mask=pad)
    mha.backward(upstream)  # numerical_grad's forwards overwrote the stored inputs
    for layer in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj):
        np.testing.assert_allclose(layer.dW, numerical_grad(loss, layer.W), atol=1e-8)
        np.testing.assert_allclose(layer.db, numerical_grad(loss, layer.b), atol=1e-8)


def test_causal_mask_aligns_queries_with_the_last_keys():
    np.testing.assert_array_equal(causal_mask(3, 3), np.triu(np.ones((3, 3), dtype=bool), 1))
    # two new queries over five keys: the first sees keys 0..3, the second all five
    np.testing.assert_array_equal(causal_mask(2, 5), [[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])


# --- torch against the reference ---------------------------------------------------


def make_pair(seed: int = 0) -> tuple[MultiHeadAttention, ReferenceMultiHeadAttention]:
    torch.manual_seed(seed)
    layer = MultiHeadAttention(D_MODEL, NUM_HEADS, dropout=0.0).double().eval()
    reference = ReferenceMultiHeadAttention(D_MODEL, NUM_HEADS)
    reference.init_weights(
        *(
            p.detach().numpy()
            for proj in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj)
            for p in (proj.weight, proj.bias)
        )
    )
    return layer, reference


# name -> (batch, query_len, key_len, key lengths or None, causal, self-attention)
CASES = {
    "no_mask": (3, 5, 5, None, False, True),
    "key_padding": (3, 5, 5, [5, 3, 1], False, True),
    "causal": (3, 5, 5, None, True, True),
    "causal_padding": (3, 5, 5, [5, 3, 1], True, True),
    "cross": (3, 4, 6, None, False, False),
    "cross_padding": (3, 4, 6, [6, 3, 1], False, False),
    "causal_cached_queries": (2, 2, 5, None, True, False),
}


def run_both(case: str, need_weights: bool, seed: int = 0):
    """Forward and backward through both with the same inputs and upstream gradient."""
    batch, query_len, key_len, lengths, causal, self_attention = CASES[case]
    layer, reference = make_pair(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    query = torch.randn(batch, query_len, D_MODEL, dtype=torch.float64, generator=gen)
    if self_attention:
        key = value = query
    else:
        key = torch.randn(batch, key_len, D_MODEL, dtype=torch.float64, generator=gen)
        value = torch.randn(batch, key_len, D_MODEL, dtype=torch.float64, generator=gen)
    upstream = torch.randn(batch, query_len, D_MODEL, dtype=torch.float64, generator=gen)
    key_valid = None if lengths is None else padding_mask(torch.tensor(lengths), key_len)

    # self-attention passes one leaf three times, so torch sums its three gradients
    inputs = [t.detach().requires_grad_() for t in ((query,) if self_attention else (query, key, value))]
    query_t, key_t, value_t = inputs * 3 if self_attention else inputs
    out, weights = layer(query_t, key_t, value_t, key_valid=key_valid, causal=causal, need_weights=need_weights)
    (out * upstream).sum().backward()

    ref_out = reference.forward(
        query.numpy(),
        key.numpy(),
        value.numpy(),
        key_padding_mask=None if key_valid is None else ~key_valid.numpy(),
        attn_mask=causal_mask(query_len, key_len) if causal else None,
    )
    d_query, d_key, d_value = reference.backward(upstream.numpy())
    if self_attention:
        ref_input_grads = [d_query + d_key + d_value]
    else:
        ref_input_grads = [d_query, d_key, d_value]
    return layer, reference, out, weights, ref_out, inputs, ref_input_grads


@pytest.mark.parametrize("need_weights", [False, True], ids=["sdpa", "need_weights"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_numpy_reference(case, need_weights):
    _, reference, out, weights, ref_out, _, _ = run_both(case, need_weights)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=0, atol=ATOL)
    if need_weights:
        np.testing.assert_allclose(weights.detach().numpy(), reference.attn_weights, rtol=0, atol=ATOL)
    else:
        assert weights is None


@pytest.mark.parametrize("need_weights", [False, True], ids=["sdpa", "need_weights"])
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_numpy_reference(case, need_weights):
    layer, reference, _, _, _, inputs, ref_input_grads = run_both(case, need_weights)
    for tensor, ref_grad in zip(inputs, ref_input_grads):
        np.testing.assert_allclose(tensor.grad.numpy(), ref_grad, rtol=0, atol=ATOL)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        torch_proj, ref_proj = getattr(layer, name), getattr(reference, name)
        np.testing.assert_allclose(torch_proj.weight.grad.numpy(), ref_proj.dW, rtol=0, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(torch_proj.bias.grad.numpy(), ref_proj.db, rtol=0, atol=ATOL, err_msg=name)


def test_causal_padding_gradients_match_numpy_reference():
    # the combination most likely to go wrong, named on its own; also covered above
    layer, reference, _, _, _, (x,), (ref_grad,) = run_both("causal_padding", need_weights=False, seed=7)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=0, atol=ATOL)
    np.testing.assert_allclose(layer.q_proj.weight.grad.numpy(), reference.q_proj.dW, rtol=0, atol=ATOL)


def test_weights_are_zero_on_padded_keys_and_above_the_diagonal():
    layer, _ = make_pair()
    lengths = torch.tensor([5, 3, 1])
    x = torch.randn(3, 5, D_MODEL, dtype=torch.float64)
    _, weights = layer(x, x, x, key_valid=padding_mask(lengths, 5), causal=True, need_weights=True)
    assert weights.shape == (3, NUM_HEADS, 5, 5)
    for b, length in enumerate(lengths.tolist()):
        assert torch.all(weights[b, :, :, length:] == 0), "padded keys got weight"
    above_diagonal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert torch.all(weights[:, :, above_diagonal] == 0), "a query looked at a future key"
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, NUM_HEADS, 5, dtype=torch.float64))


def test_weights_are_zero_on_padded_keys_in_cross_attention():
    layer, _ = make_pair()
    query, memory = torch.randn(2, 4, D_MODEL, dtype=torch.float64), torch.randn(2, 6, D_MODEL, dtype=torch.float64)
    _, weights = layer(query, memory, memory, key_valid=padding_mask(torch.tensor([6, 2]), 6), need_weights=True)
    assert torch.all(weights[1, :, :, 2:] == 0)
    assert torch.all(weights[0] > 0)


@pytest.mark.parametrize("need_weights", [False, True], ids=["sdpa", "need_weights"])
def test_precomputed_kv_equals_passing_key_and_value(need_weights):
    layer, _ = make_pair()
    query, memory = torch.randn(3, 4, D_MODEL, dtype=torch.float64), torch.randn(3, 6, D_MODEL, dtype=torch.float64)
    key_valid = padding_mask(torch.tensor([6, 3, 1]), 6)
    direct, direct_weights = layer(query, memory, memory, key_valid=key_valid, need_weights=need_weights)
    kv = layer.project_kv(memory, memory)
    assert kv[0].shape == (3, NUM_HEADS, 6, D_MODEL // NUM_HEADS)
    cached, cached_weights = layer(query, kv=kv, key_valid=key_valid, need_weights=need_weights)
    torch.testing.assert_close(cached, direct, rtol=0, atol=0)
    if need_weights:
        torch.testing.assert_close(cached_weights, direct_weights, rtol=0, atol=0)


def test_precomputed_kv_gradients_reach_the_memory():
    layer, _ = make_pair()
    query = torch.randn(2, 3, D_MODEL, dtype=torch.float64)
    memory = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    upstream = torch.randn(2, 3, D_MODEL, dtype=torch.float64)
    grads = []
    for use_kv in (False, True):
        mem = memory.clone().requires_grad_()
        if use_kv:
            out, _ = layer(query, kv=layer.project_kv(mem, mem))
        else:
            out, _ = layer(query, mem, mem)
        (out * upstream).sum().backward()
        grads.append(mem.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)


def test_query_with_no_visible_key_gives_same_output_on_both_paths():
    # an empty utterance in the batch (length 0) leaves its queries nothing to attend to
    layer, _ = make_pair()
    query, memory = torch.randn(2, 3, D_MODEL, dtype=torch.float64), torch.randn(2, 4, D_MODEL, dtype=torch.float64)
    key_valid = padding_mask(torch.tensor([4, 0]), 4)
    fused, _ = layer(query, memory, memory, key_valid=key_valid)
    explicit, _ = layer(query, memory, memory, key_valid=key_valid, need_weights=True)
    torch.testing.assert_close(explicit, fused)


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_autocast_matches_numpy_reference_within_bf16_rounding(case):
    # on a CPU, bf16 takes the explicit product rather than SDPA: it must still be attention
    batch, query_len, key_len, lengths, causal, self_attention = CASES[case]
    layer, reference = make_pair(0)
    layer.float()
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(batch, query_len, D_MODEL, dtype=torch.float64, generator=gen)
    key = query if self_attention else torch.randn(batch, key_len, D_MODEL, dtype=torch.float64, generator=gen)
    value = query if self_attention else torch.randn(batch, key_len, D_MODEL, dtype=torch.float64, generator=gen)
    key_valid = None if lengths is None else padding_mask(torch.tensor(lengths), key_len)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(query.float(), key.float(), value.float(), key_valid=key_valid, causal=causal)
    ref_out = reference.forward(query.numpy(), key.numpy(), value.numpy(),
                                key_padding_mask=None if key_valid is None else ~key_valid.numpy(),
                                attn_mask=causal_mask(query_len, key_len) if causal else None)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits: each rounding is within 2^-9 relative; a few roundings in a row
    np.testing.assert_allclose(out.float().detach().numpy(), ref_out, rtol=0, atol=0.05)
    assert np.abs(out.float().detach().numpy() - ref_out).mean() < 0.01
