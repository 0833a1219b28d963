"""The Conformer encoder layer (Gulati et al., 2020), as ESPnet builds it.

One layer: half a feed-forward, self-attention with relative positions, the convolution
module, the other half feed-forward, a final LayerNorm; every sub-layer pre-norm with a
residual (``x + dropout(f(norm(x)))``, the feed-forwards scaled by 1/2: "macaron").

Relative positions are Transformer-XL's, in ESPnet's ``rel_pos`` / ``latest`` form
(Dai et al., 2019): a learned projection of sinusoids for every offset between query and
key, with two learned biases per head. Chosen over rotary positions because it is what
ESPnet's published LibriSpeech-100 Conformer and E-Branchformer use, so the recipes here
match those models parameter for parameter, and because it needs no change to the keys
that cached decoding or export would see.

Padding: padded frames must not reach real ones. Attention masks padded keys; the
depthwise convolution sees zeros where the padding is; the batch normalisation takes its
statistics over real frames only (``MaskedBatchNorm``). ``tests/model/test_conformer.py``
fills the padding with noise and checks that real frames do not move.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field
from torch import nn

from speechforge import registry
from speechforge.model.attention import MultiHeadAttention, attention_mask, masked_scores
from speechforge.model.dropout import Dropout, dropout
from speechforge.model.embeddings import sinusoids
from speechforge.model.layers import Activation, EncoderStack, FeedForward, Probability
from speechforge.recipe import Runtime

Norm = Literal["batch", "layer"]


def _odd(kernel_size: int) -> int:
    # 'same' padding needs an odd kernel: an even one would shift the output by half a frame
    if kernel_size % 2 == 0:
        raise ValueError(f"a depthwise convolution kernel must be odd, got {kernel_size}")
    return kernel_size


OddKernel = Annotated[int, Field(ge=1), AfterValidator(_odd)]


def relative_positions(length: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """(2T - 1, D) sinusoids for the offsets T-1, T-2, ..., -(T-1) (query minus key)."""
    return sinusoids(torch.arange(length - 1, -length, -1, device=device), d_model)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T-1) scores by offset column -> (B, H, T, T) by key: out[..., i, j] =
    scores[..., i, T-1-i+j]. Row i starts one element earlier than row i-1 would, so the
    result is a strided view with row stride 2T-2: no copy, where Transformer-XL's
    pad-and-reshape trick copies the scores twice (2x slower on the quickstart's shapes).
    ONNX has no strided views: an export takes the pad-and-reshape path."""
    b, h, t, n = scores.shape
    if torch.onnx.is_in_onnx_export():
        padded = torch.cat([scores.new_zeros(b, h, t, 1), scores], dim=-1)  # (B, H, T, 2T)
        return padded.view(b, h, n + 1, t)[:, :, 1:].reshape(b, h, t, n)[..., :t]
    scores = scores.contiguous()
    s0, s1 = scores.stride(0), scores.stride(1)
    return scores.as_strided((b, h, t, t), (s0, s1, n - 1, 1), scores.storage_offset() + t - 1)


class RelPositionAttention(MultiHeadAttention):
    """Self-attention scored by content and by relative offset (Transformer-XL):
    (q + u) k^T + rel_shift((q + v) p^T), p the projected offset sinusoids."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__(d_model, num_heads, dropout)
        self.pos_proj = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,  # (B, T, D)
        pos: torch.Tensor,  # (2T-1, D) offset sinusoids (after positional dropout)
        key_valid: torch.Tensor | None = None,  # (B, T)
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k, v = self.project_kv(x, x)
        p = self.pos_proj(pos).view(1, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (1, H, 2T-1, Dh)
        scale = 1.0 / math.sqrt(self.head_dim)
        q_u = ((q + self.pos_bias_u) * scale).transpose(1, 2)  # (B, H, T, Dh)
        q_v = ((q + self.pos_bias_v) * scale).transpose(1, 2)
        mask = attention_mask(key_valid, t, t, False)
        # in place: neither product's backward needs its output
        scores = masked_scores(q_u, k, mask, 1.0).add_(rel_shift(q_v @ p.transpose(-2, -1)))  # (B, H, T, T)
        probs = scores.softmax(-1)  # a padded query still sees the real keys
        out = dropout(probs, self.dropout, self.training) @ v
        out = self.out_proj(out.transpose(1, 2).reshape(b, t, d))
        return out, probs if need_weights else None


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over (B, T, C) whose training statistics count real frames only: with
    plain BatchNorm the padding of one utterance shifts the mean that every other sees.
    Statistics in fp32 whatever the input's precision."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        xf = x.float()
        if self.training:
            w = torch.ones_like(xf[..., :1]) if valid is None else valid[..., None].to(xf.dtype)
            n = w.sum()
            mean = (xf * w).sum((0, 1)) / n
            var = ((xf - mean).square() * w).sum((0, 1)) / n
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean, self.running_var
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(x.dtype)


def depthwise(channels: int, kernel_size: int) -> nn.Conv1d:
    """A depthwise convolution over time with 'same' padding (odd kernel)."""
    return nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels)


def masked_depthwise(conv: nn.Conv1d, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``conv`` over time on (B, T, C), with zeros where the padding is: the kernel reaches
    into it, and what it finds there must not depend on what the padding holds."""
    if valid is not None:
        x = x.masked_fill(~valid[..., None], 0.0)
    return conv(x.transpose(1, 2)).transpose(1, 2)


class ConvolutionModule(nn.Module):
    """Pointwise conv to 2C and GLU, depthwise conv over time, normalisation, Swish,
    pointwise conv. The pointwise convolutions are Linear layers on (B, T, C): the same
    weights as 1x1 Conv1d, without the transposes."""

    def __init__(self, d_model: int, kernel_size: int, norm: str = "batch"):
        super().__init__()
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = depthwise(d_model, kernel_size)
        self.norm = MaskedBatchNorm(d_model) if norm == "batch" else nn.LayerNorm(d_model)
        self.activation = nn.SiLU()
        self.pointwise_out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        x = masked_depthwise(self.depthwise, nn.functional.glu(self.pointwise_in(x), dim=-1), valid)
        x = self.norm(x, valid) if isinstance(self.norm, MaskedBatchNorm) else self.norm(x)
        return self.pointwise_out(self.activation(x))


class RelPositionStack(EncoderStack):
    """An encoder stack whose layers take ``(x, valid, pos)``: the offset sinusoids are
    made once per forward and shared by every layer, after positional dropout."""

    def __init__(self, layers: list[nn.Module], d_model: int, dropout: float, layer_drop: float = 0.0):
        super().__init__(layers, d_model, layer_drop)
        self.pos_dropout = Dropout(dropout)
        self.register_buffer("table", relative_positions(1024, d_model), persistent=False)

    def positions(self, length: int) -> torch.Tensor:
        """The (2T-1, D) offset sinusoids, cut from a table grown on demand (computing them
        afresh took a hundredth of a quickstart step). An ONNX export computes them in
        the graph: a cut of the table would freeze the traced length."""
        if torch.onnx.is_in_onnx_export():
            return relative_positions(length, self.table.shape[1], self.table.device)
        longest = (self.table.shape[0] + 1) // 2
        if length > longest:
            longest = max(length, 2 * longest)
            self.table = relative_positions(longest, self.table.shape[1], self.table.device)
        return self.table[longest - length : longest + length - 1]

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        pos = self.pos_dropout(self.positions(x.shape[1]))
        for _, layer in self.active():
            x = layer(x, valid, pos)
        return self.norm(x)


class MacaronLayer(nn.Module):
    """What the Conformer and the E-Branchformer layers share: half a feed-forward in and
    out, relative-position self-attention, a final LayerNorm. Subclasses add their middle."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float, attention_dropout: float,
                 activation: str):
        super().__init__()
        self.norm_ff_in = nn.LayerNorm(d_model)
        self.ff_in = FeedForward(d_model, d_ff, dropout, activation)
        self.norm_attn = nn.LayerNorm(d_model)
        self.self_attn = RelPositionAttention(d_model, num_heads, attention_dropout)
        self.norm_ff_out = nn.LayerNorm(d_model)
        self.ff_out = FeedForward(d_model, d_ff, dropout, activation)
        self.norm_final = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def half_ff_in(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * self.dropout(self.ff_in(self.norm_ff_in(x)))

    def attend(self, x: torch.Tensor, valid: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        """The attention sub-layer's output before its residual (dropout applied)."""
        return self.dropout(self.self_attn(self.norm_attn(x), pos, valid)[0])

    def half_ff_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_final(x + 0.5 * self.dropout(self.ff_out(self.norm_ff_out(x))))


class ConformerLayer(MacaronLayer):
    def __init__(
        self, d_model: int, num_heads: int, d_ff: int, kernel_size: int, dropout: float,
        attention_dropout: float, activation: str, conv_norm: str,
    ):
        super().__init__(d_model, num_heads, d_ff, dropout, attention_dropout, activation)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConvolutionModule(d_model, kernel_size, conv_norm)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        x = self.half_ff_in(x)
        x = x + self.attend(x, valid, pos)
        x = x + self.dropout(self.conv(self.norm_conv(x), valid))
        return self.half_ff_out(x)


@registry.encoder_layers.register("conformer")
def conformer_encoder(
    d_model: Runtime[int],
    num_layers: Annotated[int, Field(ge=1)] = 12,
    num_heads: Annotated[int, Field(ge=1)] = 4,
    d_ff: Annotated[int, Field(ge=1)] = 1024,
    kernel_size: OddKernel = 31,
    dropout: Probability = 0.1,
    attention_dropout: Probability | None = None,
    conv_norm: Norm = "batch",
    layer_drop: Probability = 0.0,
    activation: Activation = "swish",
) -> RelPositionStack:
    """Conformer layers: macaron feed-forwards, relative-position self-attention, convolution module.

    ``kernel_size`` (odd) is the depthwise convolution's reach in frames after the front
    end; ``conv_norm`` its normalisation (ESPnet: batch). ``attention_dropout`` (None:
    ``dropout``) drops attention probabilities. Pair it with an embedding that adds no
    absolute positions (``[model.embedding] positions = "none"``), as ESPnet does."""
    rate = dropout if attention_dropout is None else attention_dropout
    layers = [
        ConformerLayer(d_model, num_heads, d_ff, kernel_size, dropout, rate, activation, conv_norm)
        for _ in range(num_layers)
    ]
    return RelPositionStack(layers, d_model, dropout, layer_drop)
