"""The ASR model: speech embedding -> pre-norm encoder (+ CTC head) -> pre-norm decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from speechforge import registry
from speechforge.model.dropout import Dropout
from speechforge.model.attention import padding_mask
from speechforge.model.embeddings import PositionalEncoding
from speechforge.model.packed import PackedCache, PackedDecoder, packed_decoder, select_caches
from speechforge.recipe import Runtime, Spec, Sub


@dataclass
class DecoderState:
    """What step-by-step decoding carries: per-layer self-attention caches, the
    cross-attention keys/values computed once per utterance, and the position.

    ``beams`` hypotheses in a row share one memory row (beam search): the memory is
    held once per utterance, not once per hypothesis, and cross-attention takes the
    queries of an utterance's beams together."""

    caches: list[dict[str, torch.Tensor]] | PackedCache  # per layer, or one for the packed step
    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]
    memory_valid: torch.Tensor | None  # (B, S); None: no padding
    offset: int = 0
    beams: int = 1
    packed: PackedDecoder | None = None  # the step on packed weights (model/packed.py), or the modules

    def select(self, index: torch.Tensor, memory_index: torch.Tensor | None = None) -> "DecoderState":
        """Reorder or repeat the hypotheses along the batch. With one hypothesis per memory
        row the memory follows ``index``; shared memory rows follow ``memory_index``
        (the utterances that remain; None: all of them)."""
        if self.beams == 1:
            memory_index = index
        memory_kv, memory_valid = self.memory_kv, self.memory_valid
        if memory_index is not None:
            memory_kv = [(k.index_select(0, memory_index), v.index_select(0, memory_index)) for k, v in memory_kv]
            memory_valid = None if memory_valid is None else memory_valid.index_select(0, memory_index)
        return DecoderState(
            caches=select_caches(self.caches, index),
            memory_kv=memory_kv,
            memory_valid=memory_valid,
            offset=self.offset,
            beams=self.beams,
            packed=self.packed,
        )


class TokenDecoder(nn.Module):
    """Token embedding, positions, a decoder stack and the output projection. Shared by
    the ASR model (with cross-attention) and the language model (without); the shared
    parameter names are what lets a trained LM initialise an ASR decoder."""

    def __init__(self, stack: nn.Module, vocab_size: int, d_model: int, dropout: float, tie_embeddings: bool):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        # std d^-1/2: the input side multiplies by sqrt(d) and a tied output stays near unit scale
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        self.pos = PositionalEncoding(d_model)
        self.dropout = Dropout(dropout)
        self.stack = stack
        self.out = nn.Linear(d_model, vocab_size)
        if tie_embeddings:
            self.out.weight = self.embed.weight
        self.scale = math.sqrt(d_model)

    def embed_tokens(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.dropout(self.pos(self.embed(tokens) * self.scale, offset))

    def forward(
        self,
        tokens: torch.Tensor,  # (B, U)
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        memory_valid: torch.Tensor | None = None,
        caches: list[dict[str, torch.Tensor]] | None = None,
        offset: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        x = self.embed_tokens(tokens, offset)
        x, weights = self.stack(x, memory_kv, memory_valid, caches, need_weights)
        return self.out(x), weights  # (B, U, V)

    def step(
        self,
        tokens: torch.Tensor,  # (B, U): the new positions
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
        memory_valid: torch.Tensor | None,
        caches: list[dict[str, torch.Tensor]] | PackedCache,
        offset: int,
        packed: PackedDecoder | None = None,
    ) -> torch.Tensor:
        """Logits (B, U, V) of the new positions through the caches: on ``packed`` weights
        when a search has them (model/packed.py), else through the modules."""
        if packed is not None:
            return packed.step(tokens, memory_kv, memory_valid, caches, offset)
        return self(tokens, memory_kv, memory_valid, caches, offset)[0]


class TransformerCTC(nn.Module):
    def __init__(
        self,
        embedding: nn.Module,
        encoder: nn.Module,
        decoder_stack: nn.Module,
        vocab_size: int,
        d_model: int,
        dropout: float,
        tie_embeddings: bool,
        ctc: bool,
    ):
        super().__init__()
        self.embedding = embedding
        self.encoder = encoder
        self.decoder = TokenDecoder(decoder_stack, vocab_size, d_model, dropout, tie_embeddings)
        self.ctc_head = nn.Linear(d_model, vocab_size) if ctc else None
        self.vocab_size = vocab_size

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features -> (B, T', D) encoder output and (B,) lengths."""
        x, lens = self.embedding(feats, feat_lens)
        lens = lens.clamp(min=1, max=x.shape[1])
        valid = padding_mask(lens, x.shape[1])
        # all-full batches skip the mask so attention stays on the fused kernel; a compiled
        # graph keeps it instead of breaking in two to read the check back from the device
        full = not torch.compiler.is_compiling() and bool(valid.all())
        return self.encoder(x, None if full else valid), lens

    def ctc_log_probs(self, enc_out: torch.Tensor) -> torch.Tensor:
        if self.ctc_head is None:
            raise RuntimeError("this model has no CTC head (model.ctc = false)")
        return self.ctc_head(enc_out).float().log_softmax(-1)  # (B, T', V)

    def memory(self, enc_out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        stack = self.decoder.stack
        return [layer.cross_attn.project_kv(enc_out, enc_out) for layer in stack.layers[: stack.num_active]]

    def forward(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        tokens_in: torch.Tensor,
        need_weights: bool = False,
    ) -> dict[str, Any]:
        enc_out, enc_lens = self.encode(feats, feat_lens)
        valid = padding_mask(enc_lens, enc_out.shape[1])
        logits, weights = self.decoder(tokens_in, self.memory(enc_out), valid, need_weights=need_weights)
        out = {"logits": logits, "enc_out": enc_out, "enc_lens": enc_lens, "attention": weights}
        if self.ctc_head is not None:
            out["ctc_log_probs"] = self.ctc_log_probs(enc_out)
        return out

    def init_state(self, enc_out: torch.Tensor, enc_lens: torch.Tensor, beams: int = 1) -> DecoderState:
        """The state before the first step; ``beams`` hypotheses per utterance, in
        consecutive rows, all starting from <sos>."""
        stack = self.decoder.stack
        # no padding (one utterance, or equal lengths): no mask to build and apply every step
        valid = padding_mask(enc_lens, enc_out.shape[1])
        packed = packed_decoder(self.decoder, enc_out.device, rows=enc_out.shape[0] * beams)
        memory_kv = self.memory(enc_out)
        return DecoderState(
            caches=[{} for _ in range(stack.num_active)] if packed is None else PackedCache(),
            # contiguous once here: in head layout a step's products would copy them every step
            memory_kv=[(k.contiguous(), v.contiguous()) for k, v in memory_kv] if packed is None
            else packed.memory(memory_kv),
            memory_valid=None if bool(valid.all()) else valid,
            beams=beams,
            packed=packed,
        )

    def step(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Feed the newest token (B,) (or a (B, U) prefix on the first call); return the
        next-token logits (B, V). Only the new positions are computed."""
        if tokens.dim() == 1:
            tokens = tokens[:, None]
        logits = self.decoder.step(tokens, state.memory_kv, state.memory_valid, state.caches, state.offset,
                                   state.packed)
        state.offset += tokens.shape[1]
        return logits[:, -1]

    def step_uncached(self, prefix: torch.Tensor, enc_out: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        """Next-token logits recomputing the whole prefix (the reference the cache must match)."""
        valid = padding_mask(enc_lens, enc_out.shape[1])
        logits, _ = self.decoder(prefix, self.memory(enc_out), valid)
        return logits[:, -1]


@registry.models.register("transformer_ctc")
def transformer_ctc(
    vocab_size: Runtime[int],
    input_dim: Runtime[int],
    embedding: Annotated[Spec, Sub("embeddings")] = {"name": "conv2d"},
    encoder: Annotated[Spec, Sub("encoder_layers")] = {"name": "prenorm"},
    decoder: Annotated[Spec, Sub("decoder_layers")] = {"name": "prenorm"},
    d_model: Annotated[int, Field(ge=8)] = 256,
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
    tie_embeddings: bool = True,
    ctc: bool = True,
) -> TransformerCTC:
    """Pre-norm Transformer encoder-decoder with a CTC head on the encoder."""
    return TransformerCTC(
        embedding.build(input_dim=input_dim, d_model=d_model, dropout=dropout),
        encoder.build(d_model=d_model),
        decoder.build(d_model=d_model, cross=True),
        vocab_size,
        d_model,
        dropout,
        tie_embeddings,
        ctc,
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
