"""Multi-head attention in plain NumPy with hand-written backward passes.

An independent oracle for ``speechforge.model.attention``, in the spirit of the
CMU 11-785 HW4 "mytorch" library: every layer keeps what its forward pass saw and
turns an upstream gradient into input gradients, storing parameter gradients on
itself. Everything is float64 so a comparison with torch can be tight (~1e-10).

Mask convention (hw4's, the opposite of the torch layer's): boolean, True where a
position is masked *out*. The torch layer takes ``key_valid`` (True = real key);
pass ``~key_valid`` here.
"""

from __future__ import annotations

import numpy as np

# Stands in for -inf on masked scores. In float64, exp(-1e9 - max) underflows to
# exactly 0, so any row with one real key gives the same weights as -inf would; and a
# row with every key masked stays finite (uniform weights) instead of exp(-inf + inf)
# = nan, which would then poison every gradient it touches.
MASKED_SCORE = -1e9


def causal_mask(query_len: int, key_len: int) -> np.ndarray:
    """(L, S) bool, True above the diagonal: the keys a query may not see.

    Queries are the *last* ``query_len`` positions, as in cached decoding, so the
    diagonal is aligned bottom-right (the same alignment as the torch layer).
    """
    return np.triu(np.ones((query_len, key_len), dtype=bool), k=1 + key_len - query_len)


class Linear:
    """y = x W^T + b with W in the torch layout (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator | None = None):
        rng = np.random.default_rng(0) if rng is None else rng
        bound = 1.0 / np.sqrt(in_features)
        self.W = rng.uniform(-bound, bound, (out_features, in_features))
        self.b = rng.uniform(-bound, bound, out_features)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x  # (..., in)
        return x @ self.W.T + self.b

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # every leading position used the same W, so their contributions add up
        x2 = self.x.reshape(-1, self.W.shape[1])
        dy2 = dy.reshape(-1, self.W.shape[0])
        self.dW = dy2.T @ x2
        self.db = dy2.sum(axis=0)
        return dy @ self.W


class Softmax:
    """Softmax over the last axis."""

    def forward(self, z: np.ndarray) -> np.ndarray:
        # subtracting the row max changes nothing mathematically but keeps exp finite
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        self.A = e / e.sum(axis=-1, keepdims=True)
        return self.A

    def backward(self, dA: np.ndarray) -> np.ndarray:
        # the Jacobian diag(a) - a a^T applied row by row, without building it
        return self.A * (dA - (dA * self.A).sum(axis=-1, keepdims=True))


class ScaledDotProductAttention:
    """softmax(Q K^T / sqrt(d_k) with masked scores replaced) V, over any leading dims."""

    def __init__(self):
        self.softmax = Softmax()

    def forward(self, Q: np.ndarray, K: np.ndarray, V: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        # Q (..., L, Dk), K (..., S, Dk), V (..., S, Dv); mask broadcasts to (..., L, S), True = masked out
        self.Q, self.K, self.V = Q, K, V
        self.scale = 1.0 / np.sqrt(Q.shape[-1])
        scores = Q @ np.swapaxes(K, -1, -2) * self.scale
        self.mask = None if mask is None else np.broadcast_to(mask, scores.shape)
        if self.mask is not None:
            # replaced, not added to: the masked score must not depend on Q or K
            scores = np.where(self.mask, MASKED_SCORE, scores)
        self.A = self.softmax.forward(scores)  # (..., L, S)
        return self.A @ V  # (..., L, Dv)

    def backward(self, d_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dV = np.swapaxes(self.A, -1, -2) @ d_out
        dA = d_out @ np.swapaxes(self.V, -1, -2)
        d_scores = self.softmax.backward(dA)
        if self.mask is not None:
            # a replaced score is a constant, so no gradient flows through it; usually its
            # weight is already exactly 0, but a fully masked row has uniform weights
            d_scores = np.where(self.mask, 0.0, d_scores)
        dQ = d_scores @ self.K * self.scale
        dK = np.swapaxes(d_scores, -1, -2) @ self.Q * self.scale
        return dQ, dK, dV


class MultiHeadAttention:
    """Project, split into heads, attend per head, merge, project out."""

    def __init__(self, d_model: int, num_heads: int, rng: np.random.Generator | None = None):
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        rng = np.random.default_rng(0) if rng is None else rng
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = Linear(d_model, d_model, rng)
        self.k_proj = Linear(d_model, d_model, rng)
        self.v_proj = Linear(d_model, d_model, rng)
        self.out_proj = Linear(d_model, d_model, rng)
        self.attention = ScaledDotProductAttention()

    def init_weights(self, Wq, bq, Wk, bk, Wv, bv, Wo, bo) -> None:
        """Weights in the torch layout (out, in); copied as float64."""
        for layer, W, b in (
            (self.q_proj, Wq, bq),
            (self.k_proj, Wk, bk),
            (self.v_proj, Wv, bv),
            (self.out_proj, Wo, bo),
        ):
            layer.W = np.array(W, dtype=np.float64)
            layer.b = np.array(b, dtype=np.float64)

    def split(self, x: np.ndarray) -> np.ndarray:
        b, n, _ = x.shape  # (B, N, D) -> (B, H, N, Dh)
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def merge(self, x: np.ndarray) -> np.ndarray:
        b, _, n, _ = x.shape  # (B, H, N, Dh) -> (B, N, D)
        return x.transpose(0, 2, 1, 3).reshape(b, n, self.d_model)

    def forward(
        self,
        query: np.ndarray,  # (B, L, D)
        key: np.ndarray,  # (B, S, D)
        value: np.ndarray,  # (B, S, D)
        key_padding_mask: np.ndarray | None = None,  # (B, S) True at padded keys
        attn_mask: np.ndarray | None = None,  # (L, S) True where a query may not look, e.g. causal_mask
    ) -> np.ndarray:
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        if attn_mask is not None:
            mask = attn_mask[None, None] if mask is None else mask | attn_mask
        q = self.split(self.q_proj.forward(query))
        k = self.split(self.k_proj.forward(key))
        v = self.split(self.v_proj.forward(value))
        out = self.attention.forward(q, k, v, mask)  # (B, H, L, Dh)
        return self.out_proj.forward(self.merge(out))

    @property
    def attn_weights(self) -> np.ndarray:
        """(B, H, L, S) weights of the last forward pass."""
        return self.attention.A

    def backward(self, d_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, L, D) upstream gradient -> d_query, d_key, d_value.

        For self-attention the three inputs are one tensor: its gradient is their sum.
        """
        d_heads = self.split(self.out_proj.backward(d_out))
        dq, dk, dv = self.attention.backward(d_heads)
        d_query = self.q_proj.backward(self.merge(dq))
        d_key = self.k_proj.backward(self.merge(dk))
        d_value = self.v_proj.backward(self.merge(dv))
        return d_query, d_key, d_value
