"""The decoder's one-token step for searches on a CPU, on weights laid out once per search.

One utterance's beam search multiplies 10 rows (its beams) by every decoder weight at every
step. On a CPU that step is bound by per-call costs, not arithmetic: the module path spent
about 2.3 ms of a 5.5 ms bpe5k_ctc step on calls alone (benchmarks/README.md). This step does
the sums of ``DecoderLayer`` and ``TokenDecoder`` in fewer, cheaper calls:

- bf16 weights packed once by oneDNN (``mkldnn._reorder_linear_weight``), fp32 ones by MKL,
  where ``F.linear`` lays a weight out again at every call;
- self-attention's q, k and v in one product, 1 / sqrt(head size) folded into the q rows;
- for a search of a few rows (one utterance's beams), attention in fp32 over keys and values
  cached in fp32: a batched product of a few rows costs twice as much in bf16 as in fp32 on a
  CPU without AMX, and fp32 probabilities are closer to an fp32 decode than bf16 ones;
- every layer's keys and values in one time-major buffer (``PackedCache``) that grows in place:
  a beam's reorder copies only the rows whose hypothesis changed, where the module path copies
  every layer's whole past at every step;
- attention as one ``scaled_dot_product_attention`` call, reading the buffer where it lies;
- no module calls, dropout or autocast dispatch.

The layer norms, the residual stream and the logits' dtype are those of the module path under
autocast, so a bf16 search sees the same products. ``TransformerCTC.init_state`` and
``TransformerLM.init_state`` pick this path (``packed_decoder``); tests pin it to the module path.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from speechforge.model.layers import DecoderLayer, DecoderStack, FeedForward, reordered
from speechforge.precision import version_stamp

Linear = Callable[[torch.Tensor], torch.Tensor]
FP32_ATTENTION_ROWS = 16  # up to this many rows a step attends in fp32 (``PackedDecoder.for_rows``)


def _onednn_packing() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _mkl_packing() -> bool:
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def rounded(t: torch.Tensor, dtype: torch.dtype, scale: float = 1.0, weights: torch.dtype | None = None) -> torch.Tensor:
    """``t`` in ``dtype``, times ``scale``; rounded to ``weights`` (default ``dtype``) before the
    scale, so that the same comes from an fp32 master as from the cast copy a search swaps in
    (precision.autocast_weights)."""
    t = t.detach().to(weights or dtype).to(dtype)
    return t if scale == 1.0 else (t.float() * scale).to(dtype)


def packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 10) -> Linear:
    """x (..., in) -> x @ weight.T + bias in the weight's dtype, the weight laid out once for
    products of about ``rows`` rows (any number works; the layout is chosen for that many)."""
    weight = weight.contiguous()
    if weight.dtype == torch.bfloat16 and _onednn_packing():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    if weight.dtype == torch.float32 and _mkl_packing():
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
        return lambda x: torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows)
    return lambda x: F.linear(x, weight, bias)


class PackedCache:
    """Every layer's self-attention keys and values for ``PackedDecoder.step``: one buffer
    (capacity, N, layers, 2 x d_model), time first, so that the past of all layers is one
    contiguous block. A step writes its positions in place; ``select`` defers a reorder to the
    next step, which moves only the rows whose hypothesis changed when the rows they copy stay
    (a beam search that keeps each surviving parent's best child in the parent's row makes
    that the common case: decode/beam.py) and copies the past into a new buffer otherwise.

    The buffer is shared by the cache ``select`` returned and the one it was called on, and
    only the newest may step: an older one raises rather than read rows moved under it."""

    def __init__(self):
        # the owner by weak reference: a cycle through it would keep the buffer (up to
        # capacity x rows x layers x 2 x d_model floats) alive until the garbage collector ran
        self.store: dict = {"buffer": None, "owner": weakref.ref(self)}
        self.length = 0  # positions filled
        self.index: torch.Tensor | None = None  # the pending reorder

    def select(self, index: torch.Tensor) -> "PackedCache":
        out = PackedCache.__new__(PackedCache)
        out.store, out.length = self.store, self.length
        out.index = index if self.index is None else self.index.index_select(0, index)
        self.store["owner"] = weakref.ref(out)
        return out

    def claim(self, u: int, row: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The buffer with the pending reorder done and room for ``u`` new positions of
        (N, *row) each; returns its filled part, the new positions last, for the step to write."""
        if self.store["owner"]() is not self:
            raise RuntimeError("this decoder state was replaced by the one select() returned; step that one")
        buffer, t, index, self.index = self.store["buffer"], self.length, self.index, None
        # the reorder as a list: a beam's ten rows are cheaper to read in Python than in tensor calls
        moved = None if index is None or buffer is None else _moves_in_place(index.tolist(), buffer.shape[1])
        if buffer is None or (index is not None and moved is None):
            past = None if buffer is None else buffer[:t] if index is None else buffer[:t].index_select(1, index)
            buffer = torch.empty((max(16, 2 * (t + u)),) + row, dtype=dtype)
            if past is not None:
                buffer[:t] = past
        elif moved:
            for to, source in moved:
                buffer[:t, to] = buffer[:t, source]
        if t + u > buffer.shape[0]:
            bigger = buffer.new_empty((2 * (t + u),) + buffer.shape[1:])
            bigger[:t] = buffer[:t]
            buffer = bigger
        self.store["buffer"], self.length = buffer, t + u
        return buffer[: t + u]


def _moves_in_place(index: list[int], rows: int) -> list[tuple[int, int]] | None:
    """The (to, from) row copies of ``index`` when it has ``rows`` rows and copies only rows
    that themselves stay where they are (so the copies can run in place); else None."""
    if len(index) != rows:
        return None
    moved = [(to, source) for to, source in enumerate(index) if source != to]
    return moved if all(index[source] == source for _, source in moved) else None


def select_caches(caches, index: torch.Tensor):
    """Decoder caches (a ``PackedCache`` or ``DecoderLayer`` dicts) whose rows follow ``index``."""
    if isinstance(caches, PackedCache):
        return caches.select(index)
    return [reordered(c, index) for c in caches]


def _linear(layer: nn.Linear, dtype: torch.dtype, scale: float = 1.0, weights: torch.dtype | None = None) -> Linear:
    bias = None if layer.bias is None else rounded(layer.bias, dtype, scale, weights)
    return packed_linear(rounded(layer.weight, dtype, scale, weights), bias)


class _PackedLayer:
    def __init__(self, layer: DecoderLayer, dtype: torch.dtype, weights: torch.dtype):
        sa = layer.self_attn
        self.heads, self.head_dim = sa.num_heads, sa.head_dim
        scale = 1.0 / math.sqrt(self.head_dim)
        projections = (sa.q_proj, sa.k_proj, sa.v_proj)
        # q, k and v side by side (q rows scaled): one product
        scales = (scale, 1.0, 1.0)
        self.qkv = packed_linear(
            torch.cat([rounded(p.weight, dtype, c, weights) for p, c in zip(projections, scales)]),
            torch.cat([rounded(p.bias, dtype, c, weights) for p, c in zip(projections, scales)]))
        self.self_out = _linear(sa.out_proj, dtype, weights=weights)
        self.norm1, self.norm3 = layer.norm1, layer.norm3
        self.cross = layer.cross
        if layer.cross:
            ca = layer.cross_attn
            self.norm2 = layer.norm2
            self.cross_q = _linear(ca.q_proj, dtype, scale, weights)
            self.cross_out = _linear(ca.out_proj, dtype, weights=weights)
        ffn = layer.ffn
        self.ff_in = _linear(ffn[0], dtype, weights=weights)
        # ReLU in place on the product's fresh output, without a module call
        self.activation = torch.relu_ if type(ffn[1]) is nn.ReLU else ffn[1]
        self.ff_out = _linear(ffn[3], dtype, weights=weights)
        self.dtype = dtype


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # a step makes about 300 calls, each of which costs more than the arithmetic of a few rows:
    # skip the ones that do nothing (``Tensor.to`` to its own dtype still goes through dispatch)
    return x if x.dtype == dtype else x.to(dtype)


def _norm(norm: nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # statistics in fp32, as autocast runs layer_norm; the product after it takes ``dtype``
    return _as(F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps), dtype)


class PackedDecoder:
    """A ``TokenDecoder``'s step, on weights packed for ``dtype`` (products and activations) after
    rounding to ``weights`` (default ``dtype``: bf16 weights multiplied in fp32 are a bf16
    search's on fp32 products). Build with ``packed_decoder``."""

    def __init__(self, decoder: nn.Module, dtype: torch.dtype, weights: torch.dtype | None = None):
        # its parts, not the decoder: the decoder's cache of this object must not keep it alive
        self.embed, self.pos, self.scale = decoder.embed, decoder.pos, decoder.scale
        self.dtype = dtype
        stack = decoder.stack
        self.layers = [_PackedLayer(layer, dtype, weights or dtype) for layer in stack.layers[: stack.num_active]]
        self.final_norm = stack.norm
        self.out = _linear(decoder.out, dtype, weights=weights)
        self.attention_dtype = torch.float32  # ``for_rows`` sets it for a search

    def for_rows(self, rows: int) -> "PackedDecoder":
        """This step for a search of ``rows`` hypotheses. Attention runs in fp32 for a few rows,
        where a call costs more than its arithmetic and fp32 calls are the cheaper ones; for
        many rows in the products' dtype, where the fp32 cache's bytes cost more (on the
        bpe5k_ctc decoder fp32 was the faster at 10 rows, bf16 at 40: benchmarks/README.md)."""
        view = copy.copy(self)
        view.attention_dtype = torch.float32 if rows <= FP32_ATTENTION_ROWS else self.dtype
        return view

    def memory(self, memory_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys and values as this step reads them: contiguous, in the attention's dtype."""
        return [(k.to(self.attention_dtype).contiguous(), v.to(self.attention_dtype).contiguous()) for k, v in memory_kv]

    def step(
        self,
        tokens: torch.Tensor,  # (N, U)
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None,  # from ``memory``: (B, H, S, Dh), B dividing N
        memory_valid: torch.Tensor | None,  # (B, S)
        cache: PackedCache,
        offset: int,
    ) -> torch.Tensor:
        """Logits (N, U, V) of the new positions; ``cache`` keeps the past keys and values."""
        dtype = self.dtype
        n, u = tokens.shape
        layers = self.layers
        d = layers[0].heads * layers[0].head_dim
        # every dtype is chosen here: autocast would round the fp32 attention to bf16
        with torch.autocast("cpu", enabled=False):
            x = self.pos(self.embed(tokens) * self.scale, offset)  # (N, U, D) fp32, as the module path
            kv = cache.claim(u, (n, len(layers), 2 * d), self.attention_dtype)  # (T, N, layers, 2D)
            # every layer's keys and values in head layout, where the buffer holds them: one
            # view for the step, not three calls a layer
            past = kv.view(kv.shape[0], n, len(layers), 2, layers[0].heads, layers[0].head_dim).permute(
                2, 3, 1, 4, 0, 5)  # (layers, 2, N, H, T, Dh)
            for i, layer in enumerate(layers):
                qkv = layer.qkv(_norm(layer.norm1, x, dtype))  # (N, U, 3D)
                kv[-u:, :, i] = qkv[..., d:].transpose(0, 1)  # each layer's new keys and values as they come
                x = x + self._self_attend(layer, qkv[..., :d], past[i], u)
                if layer.cross:
                    k, v = memory_kv[i]
                    x = x + self._cross_attend(layer, _norm(layer.norm2, x, dtype), k, v, memory_valid)
                x = x + layer.ff_out(layer.activation(layer.ff_in(_norm(layer.norm3, x, dtype))))
            return self.out(_norm(self.final_norm, x, dtype))

    def _self_attend(self, layer: _PackedLayer, q: torch.Tensor, kv: torch.Tensor, u: int) -> torch.Tensor:
        # q (N, U, D), already scaled; kv (2, N, H, T, Dh): this layer's past and new keys, values
        n, _, d = q.shape
        t, h, dh = kv.shape[3], layer.heads, layer.head_dim
        q = _as(q, self.attention_dtype).view(n, u, h, dh).transpose(1, 2)  # (N, H, U, Dh)
        k, v = kv.unbind(0)
        # a prefix: each position sees the past and itself
        mask = torch.ones(u, t, dtype=torch.bool).tril(t - u) if u > 1 else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return layer.self_out(_as(out.transpose(1, 2).reshape(n, u, d), layer.dtype))

    def _cross_attend(self, layer: _PackedLayer, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      valid: torch.Tensor | None) -> torch.Tensor:
        # the N / B rows (beams) that share a memory row query it together: (B, H, beams x U, Dh)
        n, u, d = h.shape
        b = k.shape[0]
        q = _as(layer.cross_q(h), self.attention_dtype)
        q = q.view(b, (n // b) * u, layer.heads, layer.head_dim).transpose(1, 2)
        mask = None if valid is None else valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)  # (B, H, beams x U, Dh)
        return layer.cross_out(_as(out.transpose(1, 2).reshape(n, u, d), layer.dtype))


def _standard(decoder: nn.Module) -> bool:
    """A TokenDecoder whose active layers are speechforge's own pre-norm decoder layers, with
    every norm still a LayerNorm and every feed-forward still (linear, activation, dropout,
    linear): what ``PackedDecoder`` computes. A plugin that swaps any of them gets the modules."""
    stack = getattr(decoder, "stack", None)
    if type(stack) is not DecoderStack or type(stack.norm) is not nn.LayerNorm:
        return False

    def standard(layer: nn.Module) -> bool:
        if type(layer) is not DecoderLayer or type(layer.ffn) is not FeedForward or len(layer.ffn) != 4:
            return False
        norms = [layer.norm1, layer.norm3] + ([layer.norm2] if layer.cross else [])
        return all(type(n) is nn.LayerNorm for n in norms) and all(
            type(m) is nn.Linear for m in (layer.ffn[0], layer.ffn[3]))

    return all(standard(layer) for layer in stack.layers[: stack.num_active])


def search_dtype(device: torch.device) -> torch.dtype:
    """The dtype a search asks for on ``device``: autocast's, else fp32."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


@contextlib.contextmanager
def module_path():
    """Within, searches step through the modules (benchmarks and tests compare the two paths)."""
    global _ENABLED
    before, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = before


@contextlib.contextmanager
def products(dtype: torch.dtype | None):
    """Within, a bf16 search multiplies in ``dtype`` without measuring which is faster
    (None: measure, the default). Tests and benchmarks pin it; so can a user who wants the
    same products on every machine."""
    global _PRODUCTS
    before, _PRODUCTS = _PRODUCTS, dtype
    try:
        yield
    finally:
        _PRODUCTS = before


_ENABLED = True
_PRODUCTS: torch.dtype | None = None
# fp32 products replace bf16 ones only when this much faster: near a tie the asked-for
# precision stays, so that a noisy probe does not flip a machine's transcripts between runs
FP32_MARGIN = 0.8


def _step_seconds(step: PackedDecoder, rows: int, steps: int = 6, frames: int = 64) -> float:
    """``steps`` steps of ``rows`` hypotheses over a memory of ``frames`` frames, as a search
    takes them. Whole steps, not the products alone: the casts between bf16 products and fp32
    attention and norms, and weights streaming through the caches between products, are part
    of what differs (products timed alone put bf16 and fp32 level where whole bf16 steps took
    1.3x as long; benchmarks/README.md)."""
    g = torch.Generator().manual_seed(0)
    memory = [None if not layer.cross else tuple(
        torch.randn(1, layer.heads, frames, layer.head_dim, generator=g) for _ in "kv") for layer in step.layers]
    memory = step.memory(memory) if any(m is not None for m in memory) else None
    cache = PackedCache()
    tokens = torch.zeros(rows, 1, dtype=torch.long)
    t0 = time.perf_counter()
    for t in range(steps):
        step.step(tokens, memory, None, cache, t)
    return time.perf_counter() - t0


class _Packs:
    """One decoder's packed steps by dtype, packed from the parameters at ``stamp``."""

    def __init__(self, stamp, params: list[torch.Tensor]):
        self.stamp, self.params = stamp, params
        self.steps: dict[tuple[torch.dtype, torch.dtype], PackedDecoder] = {}  # (products, weights) ->

    def current(self, stamp, params: list[torch.Tensor]) -> bool:
        return (stamp is not None and self.stamp == stamp and len(self.params) == len(params)
                and all(a is b for a, b in zip(self.params, params)))

    def step(self, decoder: nn.Module, dtype: torch.dtype, weights: torch.dtype) -> PackedDecoder:
        if (dtype, weights) not in self.steps:
            with torch.inference_mode(False), torch.no_grad():
                self.steps[dtype, weights] = PackedDecoder(decoder, dtype, weights)
        return self.steps[dtype, weights]


def _bf16_products(decoder: nn.Module, packs: _Packs, rows: int) -> torch.dtype:
    """bf16, unless fp32 products measure faster for this many rows. On CPUs without AMX
    either can win at a search's few rows: oneDNN's bf16 kernels or MKL's fp32 ones
    (benchmarks/README.md, "bf16 or fp32: an Intel Xeon without AMX"). Measured once per decoder and power-of-two
    bucket of row counts, at the first count seen in it (a decode's batches take many counts;
    a probe costs about 40 steps); the answer depends on the shapes, not on the weights'
    values."""
    bucket = 1 << max(rows - 1, 0).bit_length()
    choices = _CHOICES.setdefault(decoder, {})
    if bucket not in choices:
        steps = [packs.step(decoder, dtype, torch.bfloat16).for_rows(rows) for dtype in (torch.bfloat16, torch.float32)]
        with torch.no_grad():
            for step in steps:  # oneDNN builds a kernel per new shape: not timed
                _step_seconds(step, rows, steps=1)
            # alternated, so that a slow moment of a shared host falls on both
            bf16, fp32 = (min(t) for t in zip(*([_step_seconds(step, rows) for step in steps] for _ in range(3))))
        choices[bucket] = (torch.float32 if fp32 < FP32_MARGIN * bf16 else torch.bfloat16, bf16 / fp32)
    return choices[bucket][0]


def product_choices(decoder: nn.Module) -> dict[int, tuple[torch.dtype, float]]:
    """What bf16 searches of ``decoder`` measured so far: the most rows of a bucket -> (the
    products' dtype, bf16 time / fp32 time), for the run log."""
    return dict(_CHOICES.get(decoder, {}))


def packed_decoder(decoder: nn.Module, device: torch.device, rows: int) -> PackedDecoder | None:
    """The packed step of ``decoder`` for a search of ``rows`` hypotheses on ``device``
    (``PackedDecoder.for_rows``), or None where the module path is the one to take: off the
    CPU (a GPU step is not bound by calls), while training or under autograd, in a trace or
    compile, for decoders with other layers, or where the parameters are not fp32 masters.
    Kept on the decoder and remade when a weight changes. A bf16 search takes fp32 products
    where they measure faster (``_bf16_products``)."""
    if (not _ENABLED or device.type != "cpu" or decoder.training or torch.is_grad_enabled() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or not _standard(decoder)):
        return None
    if decoder.embed.weight.dtype != torch.float32:
        return None
    dtype = search_dtype(device)
    if dtype not in (torch.float32, torch.bfloat16):
        return None
    params = list(decoder.parameters())
    # keyed on the tensors themselves (held, so never confused with later ones) and their
    # versions: an optimizer step or a load bumps them; a search's cast copies (precision.
    # autocast_weights) are new tensors only when their masters change
    stamp = version_stamp(params)
    held = _PACKED.get(decoder)
    if held is None or not held.current(stamp, params):
        held = _Packs(stamp, params)
        if stamp is not None:
            _PACKED[decoder] = held
    weights = dtype
    if dtype == torch.bfloat16:
        dtype = _PRODUCTS or _bf16_products(decoder, held, rows)
    return held.step(decoder, dtype, weights).for_rows(rows)


# decoder -> its _Packs; outside the module, so copies and pickles of a model never carry
# packed oneDNN tensors
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# decoder -> {most rows of a bucket: (the products' dtype for a bf16 search, bf16 time / fp32 time)}
_CHOICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
