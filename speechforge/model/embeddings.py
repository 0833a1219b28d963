"""Speech embeddings: feature frames in, fewer d_model frames out, plus positions.

Each returns ``(x (B, T', D), lengths (B,))``; T' is T reduced by ``time_reduction``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from speechforge import registry
from speechforge.model.conv import StridedConv2d
from speechforge.model.dropout import Dropout
from speechforge.recipe import Runtime


def sinusoids(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """(N,) positions, possibly negative -> (N, d_model): sin in even, cos in odd columns."""
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device) * (-math.log(10000.0) / d_model))
    angle = positions.float()[:, None] * div
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al.), extended on demand."""

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("pe", self._table(max_len), persistent=False)

    def _table(self, length: int) -> torch.Tensor:
        return sinusoids(torch.arange(length), self.d_model)

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            # an exported graph computes its positions: the file holds no table, and no
            # length is beyond it (``offset`` may be a traced length there)
            position = torch.arange(x.shape[1], dtype=torch.float32, device=x.device) + offset
            return x + sinusoids(position, self.d_model).to(x.dtype)
        end = offset + x.shape[1]
        if end > self.pe.shape[0]:
            self.pe = self._table(max(end, 2 * self.pe.shape[0])).to(self.pe.device)
        return x + self.pe[offset:end].to(x.dtype)


class Conv2dSubsampling(nn.Module):
    """Stride-2 3x3 convolutions over (time, frequency), ESPnet's Conv2dSubsampling."""

    def __init__(
        self, input_dim: int, d_model: int, time_reduction: int, channels: int, dropout: float, positions: bool = True
    ):
        super().__init__()
        num_convs = int(math.log2(time_reduction))
        layers: list[nn.Module] = []
        freq = input_dim
        in_ch = 1
        for _ in range(num_convs):
            layers += [StridedConv2d(in_ch, channels, 3, stride=2), nn.ReLU()]
            in_ch = channels
            freq = (freq - 1) // 2
        # channels-last weights put oneDNN on its channels-last kernels (the input, with one
        # channel, follows): the front end's training step 1.35x as fast in bf16 at 256
        # channels, 1.1x at 32; fp32 training 1.04-1.09x as fast on an Intel Xeon and 5%
        # slower on an AMD EPYC, where "auto" trains in bf16 (benchmarks/README.md).
        self.convs = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.num_convs = num_convs
        self.out = nn.Linear(in_ch * freq, d_model)
        # an encoder with relative positions (the Conformer's) takes none here, as in ESPnet
        self.pos = PositionalEncoding(d_model) if positions else None
        self.dropout = Dropout(dropout)
        self.scale = math.sqrt(d_model)

    def reduce_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_convs):
            lengths = (lengths - 1) // 2
        return lengths

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.convs(feats.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f)) * self.scale
        if self.pos is not None:
            x = self.pos(x)
        return self.dropout(x), self.reduce_lengths(feat_lens)


class PyramidalLSTM(nn.Module):
    """Bidirectional LSTMs that halve time by stacking adjacent frames (the hw4 pBLSTM)."""

    def __init__(self, input_dim: int, d_model: int, time_reduction: int, dropout: float, num_layers: int = 1):
        super().__init__()
        self.num_halvings = int(math.log2(time_reduction))
        hidden = d_model // 2
        self.first = nn.LSTM(input_dim, hidden, num_layers=num_layers, batch_first=True, bidirectional=True)
        self.pyramid = nn.ModuleList(
            nn.LSTM(2 * d_model, hidden, batch_first=True, bidirectional=True) for _ in range(self.num_halvings)
        )
        self.pos = PositionalEncoding(d_model)
        self.dropout = Dropout(dropout)

    @staticmethod
    def _run(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._run(self.first, feats, feat_lens)
        lengths = feat_lens
        for lstm in self.pyramid:
            t = x.shape[1] // 2
            x = x[:, : 2 * t].reshape(x.shape[0], t, 2 * x.shape[2])
            lengths = lengths // 2
            x = self._run(lstm, x, lengths)
        return self.dropout(self.pos(x)), lengths


class ConvThenLSTM(nn.Module):
    """Conv2d subsampling for the time reduction, then a BiLSTM for local context."""

    def __init__(self, input_dim: int, d_model: int, time_reduction: int, channels: int, dropout: float):
        super().__init__()
        self.conv = Conv2dSubsampling(input_dim, d_model, time_reduction, channels, dropout)
        self.lstm = nn.LSTM(d_model, d_model // 2, batch_first=True, bidirectional=True)
        self.pos = self.conv.pos

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.conv(feats, feat_lens)
        return x + PyramidalLSTM._run(self.lstm, x, lengths), lengths


Reduction = Literal[1, 2, 4, 8]
Positions = Literal["absolute", "none"]


@registry.embeddings.register("conv2d")
def conv2d(
    input_dim: Runtime[int],
    d_model: Runtime[int],
    dropout: Runtime[float],
    time_reduction: Reduction = 4,
    channels: Annotated[int, Field(gt=0)] = 256,
    positions: Positions = "absolute",
) -> Conv2dSubsampling:
    """Conv2d subsampling (stride-2 3x3 convolutions) with sinusoidal positions.

    ``positions = "none"`` leaves positions to the encoder: the Conformer's and the
    E-Branchformer's relative-position attention (ESPnet adds no absolute ones there)."""
    return Conv2dSubsampling(input_dim, d_model, time_reduction, channels, dropout, positions == "absolute")


@registry.embeddings.register("lstm")
def lstm(
    input_dim: Runtime[int],
    d_model: Runtime[int],
    dropout: Runtime[float],
    time_reduction: Reduction = 4,
    num_layers: Annotated[int, Field(ge=1)] = 1,
) -> PyramidalLSTM:
    """Pyramidal BiLSTM: each level halves time by stacking adjacent frames."""
    return PyramidalLSTM(input_dim, d_model, time_reduction, dropout, num_layers)


@registry.embeddings.register("conv2d_lstm")
def conv2d_lstm(
    input_dim: Runtime[int],
    d_model: Runtime[int],
    dropout: Runtime[float],
    time_reduction: Reduction = 4,
    channels: Annotated[int, Field(gt=0)] = 256,
) -> ConvThenLSTM:
    """Conv2d subsampling followed by a residual BiLSTM."""
    return ConvThenLSTM(input_dim, d_model, time_reduction, channels, dropout)
