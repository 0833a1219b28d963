"""Training losses: label-smoothed cross-entropy on the decoder plus weighted CTC."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from speechforge import registry
from speechforge.data.tokenizers import BLANK, PAD

Weight = Annotated[float, Field(ge=0.0, le=1.0)]


def ctc_loss(log_probs: torch.Tensor, enc_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor) -> torch.Tensor:
    """Summed CTC negative log-likelihood of (B, T, V) log-probabilities."""
    return F.ctc_loss(
        log_probs.transpose(0, 1), targets, enc_lens, target_lens, blank=BLANK, reduction="sum",
        # an utterance too short for its transcript gives inf; zero it rather than poison the batch
        zero_infinity=True,
    )


Per = Literal["token", "utterance"]


class JointCTCAttention:
    """(1 - w) * CE + w * CTC, both summed and divided by the batch's target tokens
    (``per = "token"``: each loss a mean per token, so the weight means what it says) or by
    its utterances (``per = "utterance"``: ESPnet's ``length_normalized_loss: false``, whose
    gradients are about tokens-per-utterance times larger; weight decay and gradient clipping
    are tuned against that scale)."""

    def __init__(self, ctc_weight: float, label_smoothing: float, per: Per = "token"):
        self.ctc_weight = ctc_weight
        self.label_smoothing = label_smoothing
        self.per = per

    def __call__(self, out: dict, tokens_out: torch.Tensor, token_lens: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = out["logits"].float()
        by_utterance = self.per == "utterance"
        num_tokens = tokens_out.shape[0] if by_utterance else (tokens_out != PAD).sum().clamp(min=1)
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens_out.reshape(-1), ignore_index=PAD,
            label_smoothing=self.label_smoothing, reduction="sum",
        ) / num_tokens
        result = {"ce": ce}
        loss = ce
        if self.ctc_weight > 0:
            # padded (B, S) targets: CTC reads only the first token_lens of each row, so the
            # <eos> and padding of tokens_out are never seen
            ctc_count = token_lens.shape[0] if by_utterance else token_lens.sum().clamp(min=1)
            ctc = ctc_loss(out["ctc_log_probs"], out["enc_lens"], tokens_out, token_lens) / ctc_count
            result["ctc"] = ctc
            loss = (1 - self.ctc_weight) * ce + self.ctc_weight * ctc
        result["loss"] = loss
        return result


@registry.losses.register("ce_ctc")
def ce_ctc(ctc_weight: Weight = 0.3, label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
           per: Per = "token") -> JointCTCAttention:
    """Label-smoothed cross-entropy plus ctc_weight x CTC on the encoder, per token or per utterance."""
    return JointCTCAttention(ctc_weight, label_smoothing, per)
