"""The decoder-only language model: the ASR decoder without cross-attention.

Its one submodule is a ``TokenDecoder`` named ``decoder``, so every parameter name
(``decoder.embed.weight``, ``decoder.stack.layers.0.self_attn.q_proj.weight``, ...)
is the one the ASR model's decoder uses: that is what lets LM weights initialise an
ASR decoder (``speechforge.lm.transfer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from speechforge import registry
from speechforge.model.packed import PackedCache, PackedDecoder, packed_decoder, select_caches
from speechforge.model.transformer import TokenDecoder
from speechforge.recipe import Runtime, Spec, Sub


@dataclass
class LMState:
    """The self-attention caches (per layer, or one ``PackedCache`` for the packed step) and
    the position of the next token."""

    caches: list[dict[str, torch.Tensor]] | PackedCache
    offset: int = 0
    packed: PackedDecoder | None = None  # the step on packed weights (model/packed.py), or the modules

    def select(self, index: torch.Tensor) -> "LMState":
        """Reorder or repeat along the batch (beam search keeps the surviving hypotheses)."""
        return LMState(select_caches(self.caches, index), self.offset, self.packed)


class TransformerLM(nn.Module):
    def __init__(self, stack: nn.Module, vocab_size: int, d_model: int, dropout: float, tie_embeddings: bool):
        super().__init__()
        self.decoder = TokenDecoder(stack, vocab_size, d_model, dropout, tie_embeddings)
        self.vocab_size = vocab_size

    def forward(self, tokens_in: torch.Tensor) -> torch.Tensor:
        """(B, U) <sos>-shifted tokens -> (B, U, V) next-token logits.

        Right padding needs no mask: under the causal mask a real position never sees
        the padding after it, and the loss ignores the padded positions."""
        logits, _ = self.decoder(tokens_in)
        return logits

    def init_state(self, batch: int) -> LMState:
        # the caches fill on the first step; ``batch`` is implied by the tokens fed
        packed = packed_decoder(self.decoder, self.decoder.embed.weight.device, rows=batch)
        return LMState([{} for _ in range(self.decoder.stack.num_active)] if packed is None else PackedCache(),
                       packed=packed)

    def step(self, tokens: torch.Tensor, state: LMState) -> torch.Tensor:
        """Feed the newest token (B,) (or a (B, U) prefix) and return the next-token
        logits (B, V); only the new positions are computed, the caches grow in place."""
        if tokens.dim() == 1:
            tokens = tokens[:, None]
        logits = self.decoder.step(tokens, None, None, state.caches, state.offset, state.packed)
        state.offset += tokens.shape[1]
        return logits[:, -1]


@registry.models.register("transformer_lm")
def transformer_lm(
    vocab_size: Runtime[int],
    decoder: Annotated[Spec, Sub("decoder_layers")] = {"name": "prenorm"},
    d_model: Annotated[int, Field(ge=8)] = 256,
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
    tie_embeddings: bool = True,
) -> TransformerLM:
    """Decoder-only pre-norm Transformer LM; its weights have the ASR decoder's names."""
    return TransformerLM(decoder.build(d_model=d_model, cross=False), vocab_size, d_model, dropout, tie_embeddings)
