"""Pre-norm Transformer layers and the stacks that hold them.

Pre-norm (LayerNorm before each sub-layer, a final LayerNorm after the stack)
trains without the learning-rate warm-up gymnastics post-norm needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from speechforge import registry
from speechforge.model.dropout import Dropout
from speechforge.model.attention import MultiHeadAttention
from speechforge.recipe import Runtime

Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
Activation = Literal["relu", "gelu", "swish"]
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "relu"):
        super().__init__(
            nn.Linear(d_model, d_ff), _ACTIVATIONS[activation](), Dropout(dropout), nn.Linear(d_ff, d_model)
        )


@dataclass(frozen=True)
class LayerShape:
    """What the layers of a stack share: sizes, activation, dropout rates."""

    d_model: int
    num_heads: int
    d_ff: int
    dropout: float
    activation: str = "relu"
    attention_dropout: float | None = None  # on attention probabilities; None: ``dropout``

    def attention(self) -> MultiHeadAttention:
        rate = self.dropout if self.attention_dropout is None else self.attention_dropout
        return MultiHeadAttention(self.d_model, self.num_heads, rate)

    def feed_forward(self) -> FeedForward:
        return FeedForward(self.d_model, self.d_ff, self.dropout, self.activation)


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward, each as x + dropout(f(norm(x)))."""

    def __init__(self, shape: LayerShape):
        super().__init__()
        self.norm1 = nn.LayerNorm(shape.d_model)
        self.self_attn = shape.attention()
        self.norm2 = nn.LayerNorm(shape.d_model)
        self.ffn = shape.feed_forward()
        self.dropout = Dropout(shape.dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, h, key_valid=valid)[0])
        return x + self.dropout(self.ffn(self.norm2(x)))


def reordered(cache: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """A self-attention cache whose rows are to follow ``index`` (the hypotheses a beam
    keeps). The reorder waits for the next step, which copies the past once to reorder
    and append together (``grown``), where reordering first would copy it twice."""
    pending = cache.get("index")
    return {**cache, "index": index if pending is None else pending.index_select(0, index)}


def grown(past: torch.Tensor, new: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """(N, H, T, Dh) cached keys or values, rows picked by ``index`` when given, then
    the new positions (N, H, U, Dh)."""
    if index is None:
        return torch.cat([past, new], dim=2)
    if torch.is_grad_enabled() and (past.requires_grad or new.requires_grad):  # out= has no backward
        return torch.cat([past.index_select(0, index), new], dim=2)
    t = past.shape[2]
    out = new.new_empty(new.shape[0], new.shape[1], t + new.shape[2], new.shape[3])
    torch.index_select(past, 0, index, out=out[:, :, :t])
    out[:, :, t:] = new
    return out


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder (absent in a language model),
    feed-forward. ``cache`` holds this layer's past keys/values for step-by-step decoding."""

    def __init__(self, shape: LayerShape, cross: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(shape.d_model)
        self.self_attn = shape.attention()
        if cross:
            self.norm2 = nn.LayerNorm(shape.d_model)
            self.cross_attn = shape.attention()
        self.cross = cross
        self.norm3 = nn.LayerNorm(shape.d_model)
        self.ffn = shape.feed_forward()
        self.dropout = Dropout(shape.dropout)

    def forward(
        self,
        x: torch.Tensor,  # (B, U, D)
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,  # cross-attention keys/values
        memory_valid: torch.Tensor | None = None,  # (B, S)
        cache: dict[str, torch.Tensor] | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        h = self.norm1(x)
        q, k, v = self.self_attn.project_qkv(h)
        if cache is not None:
            index = cache.pop("index", None)
            if "k" in cache:
                k, v = grown(cache["k"], k, index), grown(cache["v"], v, index)
            cache["k"], cache["v"] = k, v
        sa, self_weights = self.self_attn.attend(q, k, v, causal=True, need_weights=need_weights)
        x = x + self.dropout(sa)
        cross_weights = None
        if self.cross:
            ca, cross_weights = self.cross_attend(self.norm2(x), memory_kv, memory_valid, need_weights)
            x = x + self.dropout(ca)
        x = x + self.dropout(self.ffn(self.norm3(x)))
        return x, {"self": self_weights, "cross": cross_weights}


    def cross_attend(
        self,
        x: torch.Tensor,  # (N, U, D)
        memory_kv: tuple[torch.Tensor, torch.Tensor],  # (B, H, S, Dh), B dividing N
        memory_valid: torch.Tensor | None,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attention where N / B consecutive rows of x (the beams of one utterance)
        share a memory row: their queries go in as one longer query, so the memory is
        neither copied per beam nor read once per beam."""
        n, length, d = x.shape
        b = memory_kv[0].shape[0]
        if b == n:
            return self.cross_attn(x, kv=memory_kv, key_valid=memory_valid, need_weights=need_weights)
        out, weights = self.cross_attn(
            x.reshape(b, -1, d), kv=memory_kv, key_valid=memory_valid, need_weights=need_weights
        )
        if weights is not None:  # (B, H, beams x U, S) -> (N, H, U, S)
            h, s = weights.shape[1], weights.shape[-1]
            weights = weights.view(b, h, n // b, length, s).transpose(1, 2).reshape(n, h, length, s)
        return out.reshape(n, length, d), weights


class Stack(nn.Module):
    """N layers and a final LayerNorm. ``num_active`` lets progressive training grow the
    stack; ``layer_drop`` skips whole layers at random while training (LayerDrop)."""

    def __init__(self, layers: list[nn.Module], d_model: int, layer_drop: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)
        self.layer_drop = layer_drop
        self.num_active = len(layers)

    def active(self) -> list[tuple[int, nn.Module]]:
        chosen = []
        for i, layer in enumerate(self.layers[: self.num_active]):
            if self.training and self.layer_drop > 0 and torch.rand(()) < self.layer_drop:
                continue
            chosen.append((i, layer))
        return chosen


class EncoderStack(Stack):
    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        for _, layer in self.active():
            x = layer(x, valid)
        return self.norm(x)


class DecoderStack(Stack):
    def forward(
        self,
        x: torch.Tensor,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        memory_valid: torch.Tensor | None = None,
        caches: list[dict[str, torch.Tensor]] | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        weights = []
        for i, layer in self.active():
            x, w = layer(
                x,
                memory_kv=None if memory_kv is None else memory_kv[i],
                memory_valid=memory_valid,
                cache=None if caches is None else caches[i],
                need_weights=need_weights,
            )
            weights.append(w)
        return self.norm(x), weights


@registry.encoder_layers.register("prenorm")
def prenorm_encoder(
    d_model: Runtime[int],
    num_layers: Annotated[int, Field(ge=1)] = 12,
    num_heads: Annotated[int, Field(ge=1)] = 4,
    d_ff: Annotated[int, Field(ge=1)] = 1024,
    dropout: Probability = 0.1,
    attention_dropout: Probability | None = None,
    layer_drop: Probability = 0.0,
    activation: Activation = "relu",
) -> EncoderStack:
    """Pre-norm self-attention encoder layers with a final LayerNorm.

    ``attention_dropout`` (None: ``dropout``) drops attention probabilities. At 0 the
    attention runs in SDPA's fused kernels while training too: PyTorch's CPU flash kernel
    takes no dropout. ESPnet's Transformer encoder defaults it to 0."""
    shape = LayerShape(d_model, num_heads, d_ff, dropout, activation, attention_dropout)
    layers = [EncoderLayer(shape) for _ in range(num_layers)]
    return EncoderStack(layers, d_model, layer_drop)


@registry.decoder_layers.register("prenorm")
def prenorm_decoder(
    d_model: Runtime[int],
    cross: Runtime[bool] = True,
    num_layers: Annotated[int, Field(ge=1)] = 6,
    num_heads: Annotated[int, Field(ge=1)] = 4,
    d_ff: Annotated[int, Field(ge=1)] = 1024,
    dropout: Probability = 0.1,
    attention_dropout: Probability | None = None,
    layer_drop: Probability = 0.0,
    activation: Activation = "relu",
) -> DecoderStack:
    """Pre-norm decoder layers: causal self-attention, cross-attention, feed-forward.
    ``attention_dropout`` as in the encoder."""
    shape = LayerShape(d_model, num_heads, d_ff, dropout, activation, attention_dropout)
    layers = [DecoderLayer(shape, cross) for _ in range(num_layers)]
    return DecoderStack(layers, d_model, layer_drop)
