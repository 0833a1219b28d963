"""A third-party encoder for speechforge: E-Branchformer layers (Kim et al., 2022).

Nothing here touches speechforge itself: the entry point in pyproject.toml puts
``e_branchformer`` in the ``encoder_layers`` registry, and a recipe selects it with
``[model.encoder] name = "e_branchformer"``. Its signature is its recipe schema. It builds
on speechforge's public pieces (relative-position attention, the feed-forward, the stack
that progressive training grows), as ESPnet's E-Branchformer builds on its Conformer's.

One layer: half a feed-forward; then two branches side by side, global (relative-position
self-attention) and local (cgMLP: a convolutional gating MLP); the branches merged by a
depthwise convolution over their concatenation and a projection; the other half
feed-forward; a final LayerNorm. Padded frames are zeroed before each convolution so
that they never reach real frames.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from speechforge.model.conformer import MacaronLayer, OddKernel, RelPositionStack, depthwise, masked_depthwise
from speechforge.model.dropout import Dropout
from speechforge.model.layers import Activation, Probability
from speechforge.recipe import Runtime


class ConvolutionalGatingMLP(nn.Module):
    """cgMLP: up-projection and GELU; half the channels gate the other half after a
    LayerNorm and a depthwise convolution over time (the spatial gating unit); down-projection."""

    def __init__(self, d_model: int, units: int, kernel_size: int, dropout: float):
        super().__init__()
        self.up = nn.Sequential(nn.Linear(d_model, units), nn.GELU())
        self.gate_norm = nn.LayerNorm(units // 2)
        self.gate_conv = depthwise(units // 2, kernel_size)
        self.dropout = Dropout(dropout)
        self.down = nn.Linear(units // 2, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        content, gate = self.up(x).chunk(2, dim=-1)
        gate = masked_depthwise(self.gate_conv, self.gate_norm(gate), valid)
        return self.down(self.dropout(content * gate))


class EBranchformerLayer(MacaronLayer):
    def __init__(
        self, d_model: int, num_heads: int, d_ff: int, cgmlp_units: int, cgmlp_kernel: int, merge_kernel: int,
        dropout: float, attention_dropout: float, activation: str,
    ):
        super().__init__(d_model, num_heads, d_ff, dropout, attention_dropout, activation)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.cgmlp = ConvolutionalGatingMLP(d_model, cgmlp_units, cgmlp_kernel, dropout)
        self.merge_conv = depthwise(2 * d_model, merge_kernel)
        self.merge_proj = nn.Linear(2 * d_model, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        x = self.half_ff_in(x)
        global_ = self.attend(x, valid, pos)
        local = self.dropout(self.cgmlp(self.norm_mlp(x), valid))
        both = torch.cat([global_, local], dim=-1)  # (B, T, 2D)
        x = x + self.dropout(self.merge_proj(both + masked_depthwise(self.merge_conv, both, valid)))
        return self.half_ff_out(x)


def e_branchformer_encoder(
    d_model: Runtime[int],
    num_layers: Annotated[int, Field(ge=1)] = 12,
    num_heads: Annotated[int, Field(ge=1)] = 4,
    d_ff: Annotated[int, Field(ge=1)] = 1024,
    cgmlp_units: Annotated[int, Field(ge=2, multiple_of=2)] = 1024,
    cgmlp_kernel: OddKernel = 31,
    merge_kernel: OddKernel = 31,
    dropout: Probability = 0.1,
    attention_dropout: Probability | None = None,
    layer_drop: Probability = 0.0,
    activation: Activation = "swish",
) -> RelPositionStack:
    """E-Branchformer layers: attention and cgMLP branches merged by a depthwise convolution.

    Defaults are ESPnet's LibriSpeech-100 E-Branchformer (d_model 256 from the model):
    cgMLP of 1024 units with kernel 31, merge kernel 31, macaron feed-forwards of 1024.
    Pair it with an embedding that adds no absolute positions (``positions = "none"``)."""
    rate = dropout if attention_dropout is None else attention_dropout
    layers = [
        EBranchformerLayer(d_model, num_heads, d_ff, cgmlp_units, cgmlp_kernel, merge_kernel, dropout, rate, activation)
        for _ in range(num_layers)
    ]
    return RelPositionStack(layers, d_model, dropout, layer_drop)
