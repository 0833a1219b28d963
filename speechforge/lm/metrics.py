"""Perplexities, of a trained LM and of the unigram baseline it must beat.

Token perplexity is exp(total NLL / predicted tokens), <eos> included. It depends on
the tokenizer, so models with different vocabularies are compared by the
character-normalised perplexity exp(total NLL / characters), where a sentence counts
its characters, spaces included, plus one for <eos>: the same total NLL spread over a
unit every tokenizer shares.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

from speechforge.data.tokenizers import EOS, PAD


def perplexities(total_nll: float, tokens: int, chars: int) -> dict[str, float]:
    return {
        "nll": total_nll / max(tokens, 1),  # per token, nats
        "ppl": math.exp(total_nll / max(tokens, 1)),
        "char_ppl": math.exp(total_nll / max(chars, 1)),
        "tokens": tokens,
        "chars": chars,
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device | str = "cpu") -> dict[str, float]:
    """Summed NLL of every sentence of a loader, as token and character perplexities."""
    was_training = model.training
    model.eval()
    total, tokens, chars = 0.0, 0, 0
    for batch in loader:
        b = batch.to(device)
        logits = model(b.tokens_in).float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.tokens_out.reshape(-1),
                                       ignore_index=PAD, reduction="sum"))
        tokens += int(b.token_lens.sum())
        chars += int(b.char_lens.sum())
    model.train(was_training)
    return perplexities(total, tokens, chars)


class UnigramLM:
    """Add-one smoothed token frequencies over the whole vocabulary, <eos> counted once
    per sentence: the model with no context at all."""

    def __init__(self, train: list[list[int]], vocab_size: int):
        counts = Counter(t for ids in train for t in [*ids, EOS])
        total = sum(counts.values()) + vocab_size
        self.log_probs = [math.log((counts.get(i, 0) + 1) / total) for i in range(vocab_size)]

    def evaluate(self, sentences: list[list[int]], texts: list[str]) -> dict[str, float]:
        nll = -sum(self.log_probs[t] for ids in sentences for t in [*ids, EOS])
        return perplexities(nll, sum(len(ids) + 1 for ids in sentences), sum(len(t) + 1 for t in texts))
