"""Greedy decoding, batched over utterances, with the decoder's key/value cache."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from speechforge import precision, registry
from speechforge.data.tokenizers import EOS, SOS
from speechforge.decode.search import Hypothesis, max_lengths


@precision.searches_with_autocast_weights
@torch.no_grad()
def greedy_search(
    model, enc_out: torch.Tensor, enc_lens: torch.Tensor, max_len_ratio: float = 1.0,
    max_len: int | None = None, use_cache: bool = True, force_length: int | None = None,
) -> list[list[Hypothesis]]:
    """Pick the most likely token at each step until every utterance has ended.

    ``force_length`` masks <eos> so every hypothesis has exactly that many tokens
    (benchmarks use it to make configurations do equal work)."""
    b = enc_out.shape[0]
    caps = max_lengths(enc_lens, max_len_ratio, max_len) if force_length is None else torch.full((b,), force_length)
    caps = caps.to(enc_out.device)
    state = model.init_state(enc_out, enc_lens) if use_cache else None
    prefix = torch.full((b, 1), SOS, dtype=torch.long, device=enc_out.device)
    scores = torch.zeros(b, device=enc_out.device)
    done = torch.zeros(b, dtype=torch.bool, device=enc_out.device)
    for t in range(int(caps.max())):
        logits = model.step(prefix[:, -1], state) if use_cache else model.step_uncached(prefix, enc_out, enc_lens)
        log_probs = logits.float().log_softmax(-1)
        if force_length is not None:
            log_probs[:, EOS] = float("-inf")
        best, token = log_probs.max(-1)
        token = torch.where(done, torch.full_like(token, EOS), token)
        scores += torch.where(done, torch.zeros_like(best), best)
        done |= (token == EOS) | (t + 1 >= caps)
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        if bool(done.all()):
            break
    out = []
    for i in range(b):
        seq = prefix[i, 1:].tolist()
        seq = seq[: seq.index(EOS)] if EOS in seq else seq
        out.append([Hypothesis(seq[: int(caps[i])], float(scores[i]))])
    return out


class GreedyDecoder:
    def __init__(self, max_len_ratio: float, max_len: int | None, use_cache: bool = True):
        self.max_len_ratio, self.max_len, self.use_cache = max_len_ratio, max_len, use_cache

    def __call__(self, model, enc_out: torch.Tensor, enc_lens: torch.Tensor) -> list[list[Hypothesis]]:
        return greedy_search(model, enc_out, enc_lens, self.max_len_ratio, self.max_len, self.use_cache)

    def length_caps(self, enc_lens: torch.Tensor) -> torch.Tensor:
        """The most tokens each utterance's hypothesis may have (it stops there without <eos>)."""
        return max_lengths(enc_lens, self.max_len_ratio, self.max_len)


@registry.decoders.register("greedy")
def greedy(
    max_len_ratio: Annotated[float, Field(gt=0.0)] = 1.0,
    max_len: Annotated[int, Field(gt=0)] | None = None,
    use_cache: bool = True,
) -> GreedyDecoder:
    """Batched greedy attention decoding with the key/value cache."""
    return GreedyDecoder(max_len_ratio, max_len, use_cache)
