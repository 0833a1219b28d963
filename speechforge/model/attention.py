"""Multi-head attention on top of ``scaled_dot_product_attention``.

Masks are boolean and True where attention is *allowed*, shaped to broadcast to
(B, H, L, S). Passing ``is_causal`` instead of a mask when there is no padding keeps
SDPA on its fused (flash / memory-efficient) kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechforge.model.dropout import dropout
from speechforge.precision import version_stamp

_HALF = (torch.bfloat16, torch.float16)


def _tracing() -> bool:
    """An export trace or a compile: the graph keeps the model's own three projections."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def padding_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, S) bool, True at real (non-padded) positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def attention_mask(
    key_valid: torch.Tensor | None, query_len: int, key_len: int, causal: bool, device=None
) -> torch.Tensor | None:
    """Combine key padding (B, S) and causality into one (B, 1, L, S) mask, or None."""
    if key_valid is None and not causal:
        return None
    mask = None
    if key_valid is not None:
        mask = key_valid[:, None, None, :]
    if causal:
        # queries are the last `query_len` positions: cached decoding sees the whole past
        causal_mask = torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(key_len - query_len)
        mask = causal_mask[None, None] if mask is None else mask & causal_mask
    return mask


def masked_scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``scale * q @ k^T`` (B, H, L, S) of q (B, H, L, Dh) and k (B, H, S, Dh), with a large
    negative number added where ``mask`` (broadcasting to (B, 1, L, S)) is False.

    The mask goes in as the product's bias (``baddbmm``) and the scale as its multiplier: a
    ``masked_fill_`` after the product is a pass over the scores forward and another backward
    (46 ms of the bf16 peer-harness step), a scaled q one more product-sized pass. The
    softmax gives a masked key 0 as it would after -inf; the bias is finite so that a query
    that sees no key gets uniform weights, not NaN, and no NaN reaches the gradients."""
    b, h, length, dh = q.shape
    s = k.shape[2]
    q3, k3 = q.reshape(b * h, length, dh), k.reshape(b * h, s, dh).transpose(1, 2)
    if mask is None:
        return torch.baddbmm(q3.new_zeros(()), q3, k3, beta=0.0, alpha=scale).view(b, h, length, s)
    low = torch.finfo(q.dtype).min
    if torch.is_autocast_enabled(q.device.type):  # the product's dtype, where autocast casts the bias
        low = max(low, torch.finfo(torch.get_autocast_dtype(q.device.type)).min)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, low / 2)
    mb, _, ml, _ = bias.shape
    bias = bias.view(1, ml, s) if mb == 1 else bias.expand(b, h, ml, s).reshape(b * h, ml, s)
    return torch.baddbmm(bias, q3, k3, alpha=scale).view(b, h, length, s)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``num_heads`` heads of size d_model / num_heads."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, N, D) -> (B, H, N, Dh)
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values in head layout; cross-attention computes these once per utterance."""
        return self.split(self.k_proj(key)), self.split(self.v_proj(value))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention's queries, keys and values of ``x`` (B, N, D), in head layout.

        Outside autograd the three projections are one product with the weights side by
        side (held until a weight changes): a decoding step multiplies a few rows, where a
        call costs more than its arithmetic, and this saves two calls a layer (12 of the 49
        products of a bpe5k_ctc decoder step; benchmarks/README.md)."""
        if torch.is_grad_enabled() or _tracing():
            return (self.split(self.q_proj(x)), *self.project_kv(x, x))
        b, n, _ = x.shape
        qkv = F.linear(x, *self._fused_qkv()).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, Dh)
        return q, k, v

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        # keyed on the tensors themselves (held, so never confused with a later one) and
        # their versions: a search swaps in cast weights, an optimizer step bumps versions
        params = [t for p in (self.q_proj, self.k_proj, self.v_proj) for t in (p.weight, p.bias)]
        stamp = version_stamp(params)
        held = self.__dict__.get("_qkv")
        if stamp is None or held is None or held[2] != stamp or any(a is not b for a, b in zip(held[1], params)):
            fused = (torch.cat(params[0::2]), torch.cat(params[1::2]))
            if stamp is None:
                return fused
            held = self.__dict__["_qkv"] = (fused, params, stamp)
        return held[0]

    def forward(
        self,
        query: torch.Tensor,  # (B, L, D)
        key: torch.Tensor | None = None,  # (B, S, D); None when kv is given
        value: torch.Tensor | None = None,
        key_valid: torch.Tensor | None = None,  # (B, S) True at real positions
        causal: bool = False,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,  # precomputed (B, H, S, Dh)
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if kv is not None:
            q, (k, v) = self.split(self.q_proj(query)), kv
        elif key is query and value is query:
            q, k, v = self.project_qkv(query)
        else:
            q, (k, v) = self.split(self.q_proj(query)), self.project_kv(key, value)
        return self.attend(q, k, v, key_valid, causal, need_weights)

    def attend(
        self,
        q: torch.Tensor,  # (B, H, L, Dh)
        k: torch.Tensor,  # (B, H, S, Dh)
        v: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of projected queries over projected keys and values, then the output projection."""
        b, _, length, _ = q.shape
        d = self.num_heads * self.head_dim
        p = self.dropout if self.training else 0.0
        # one query at the end of the sequence may see every key: no causal mask needed
        # (bool: under an ONNX trace the length is a tensor; a traced decoder step has one query)
        causal = causal and bool(length > 1)
        weights = None
        # On a CPU, SDPA is slow in two cases, where the product spelled out here is faster:
        # when it drops attention probabilities (it falls back to its math kernel and
        # bernoulli_ masks; here the masks are speechforge's cheap ones), and in bf16, where
        # its flash kernel took 4x the time of this path for a decoding step and 3-4x for the
        # quickstart's training step (benchmarks/README.md)
        explicit = need_weights or (
            q.device.type == "cpu" and not torch.compiler.is_compiling() and (p > 0.0 or q.dtype in _HALF))
        if explicit:
            mask = attention_mask(key_valid, length, k.shape[2], causal, q.device)
            probs = masked_scores(q, k, mask, 1.0 / math.sqrt(self.head_dim)).softmax(-1)  # (B, H, L, S)
            seen = None if mask is None else mask.any(-1, keepdim=True)
            if seen is not None and not bool(seen.all()):
                # a query that sees no key gets zeros, as SDPA gives (the bias left it uniform)
                probs = probs.masked_fill(~seen, 0.0)
            weights = probs if need_weights else None
            out = dropout(probs, p, self.training) @ v
        elif key_valid is None and (not causal or length == k.shape[2]):
            # no padding: let SDPA build causality itself and pick a fused kernel
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
        else:
            mask = attention_mask(key_valid, length, k.shape[2], causal, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = out.transpose(1, 2).reshape(b, length, d)
        return self.out_proj(out), weights
