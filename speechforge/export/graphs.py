"""The model as the two graphs an export holds: tensors in, tensors out, and no Python
branch on a shape or a value, so one trace serves every batch size and length.

- ``EncoderGraph``: what is computed once per utterance: the front end's subsampling,
  the encoder, the CTC head, and the keys/values each decoder layer's cross-attention
  reads (computing those here keeps them out of the per-token graph).
- ``DecoderStepGraph``: one token per hypothesis through the decoder; the self-attention
  cache goes in as tensors and comes out one position longer.
"""

from __future__ import annotations

import torch
from torch import nn

from speechforge.model.attention import padding_mask

ENCODER_INPUTS = ("feats", "feat_lens")
ENCODER_OUTPUTS = ("enc_out", "enc_lens", "memory_k", "memory_v")
CTC_OUTPUT = "ctc_log_probs"
STEP_INPUTS = ("tokens", "self_k", "self_v", "memory_k", "memory_v", "memory_valid")
STEP_OUTPUTS = ("log_probs", "next_self_k", "next_self_v")

# symbolic sizes: batch, frames in, frames out (encoder), hypotheses, past tokens
ENCODER_AXES = {"feats": {0: "batch", 1: "frames"}, "feat_lens": {0: "batch"},
                "enc_out": {0: "batch", 1: "enc_frames"}, "enc_lens": {0: "batch"},
                "memory_k": {1: "batch", 3: "enc_frames"}, "memory_v": {1: "batch", 3: "enc_frames"},
                CTC_OUTPUT: {0: "batch", 1: "enc_frames"}}
STEP_AXES = {"tokens": {0: "hyps"}, "self_k": {1: "hyps", 3: "past"}, "self_v": {1: "hyps", 3: "past"},
             "memory_k": {1: "batch", 3: "enc_frames"}, "memory_v": {1: "batch", 3: "enc_frames"},
             "memory_valid": {0: "batch", 1: "enc_frames"}, "log_probs": {0: "hyps"},
             "next_self_k": {1: "hyps", 3: "next_past"}, "next_self_v": {1: "hyps", 3: "next_past"}}


class EncoderGraph(nn.Module):
    """(feats (B, T, F) normalised, feat_lens (B,)) -> enc_out (B, S, D), enc_lens (B,),
    memory_k/memory_v (L, B, H, S, Dh) and, with a CTC head, ctc_log_probs (B, S, V)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.model
        x, lens = model.embedding(feats, feat_lens)
        # min(length, S) and at least 1, as TransformerCTC.encode clamps, spelled as a count
        # over the mask: a clamp to x.shape[1] would be traced as a constant
        enc_lens = padding_mask(lens, x.shape[1]).sum(1).clamp(min=1)
        valid = padding_mask(enc_lens, x.shape[1])
        # always masked (encode drops an all-True mask to keep SDPA fused; the numbers agree)
        enc_out = model.encoder(x, valid)
        memory = model.memory(enc_out)
        outputs = (enc_out, enc_lens, torch.stack([k for k, _ in memory]), torch.stack([v for _, v in memory]))
        if model.ctc_head is not None:
            outputs += (model.ctc_log_probs(enc_out),)
        return outputs


class DecoderStepGraph(nn.Module):
    """One decoding step of N hypotheses over B utterances (N / B consecutive rows share an
    utterance's memory, as DecoderState's beams do):

    tokens (N,), self_k/self_v (L, N, H, P, Dh) the P positions fed so far (P = 0 before
    <sos>), memory_k/memory_v (L, B, H, S, Dh), memory_valid (B, S) bool
    -> log_probs (N, V) of the next token, next_self_k/next_self_v (L, N, H, P + 1, Dh)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.decoder
        self.num_layers = model.decoder.stack.num_active

    def forward(self, tokens, self_k, self_v, memory_k, memory_v, memory_valid):
        caches = [{"k": self_k[i], "v": self_v[i]} for i in range(self.num_layers)]
        memory_kv = [(memory_k[i], memory_v[i]) for i in range(self.num_layers)]
        logits, _ = self.decoder(tokens[:, None], memory_kv, memory_valid, caches, offset=self_k.shape[3])
        log_probs = logits[:, -1].float().log_softmax(-1)
        return log_probs, torch.stack([c["k"] for c in caches]), torch.stack([c["v"] for c in caches])
