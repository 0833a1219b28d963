"""A third-party decoder for speechforge: ancestral sampling with a temperature.

Nothing here touches speechforge itself: the entry point in pyproject.toml puts
``sampling`` in the ``decoders`` registry, and a recipe selects it with
``[decode] name = "sampling"``. Its signature is its recipe schema.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from speechforge.data.tokenizers import EOS, SOS
from speechforge.decode.search import Hypothesis, max_lengths


class SamplingDecoder:
    def __init__(self, temperature: float, num_samples: int, seed: int, max_len_ratio: float):
        self.temperature, self.num_samples, self.seed = temperature, num_samples, seed
        self.max_len_ratio = max_len_ratio

    @torch.no_grad()
    def __call__(self, model, enc_out: torch.Tensor, enc_lens: torch.Tensor) -> list[list[Hypothesis]]:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        b, n = enc_out.shape[0], self.num_samples
        index = torch.arange(b, device=enc_out.device).repeat_interleave(n)  # (B*N,)
        state = model.init_state(enc_out, enc_lens).select(index)
        caps = max_lengths(enc_lens, self.max_len_ratio, None)[index]
        tokens = torch.full((b * n,), SOS, dtype=torch.long, device=enc_out.device)
        seqs, scores = [], torch.zeros(b * n)
        done = torch.zeros(b * n, dtype=torch.bool)
        for t in range(int(caps.max())):
            log_probs = (model.step(tokens, state).float() / self.temperature).log_softmax(-1).cpu()
            tokens = torch.multinomial(log_probs.exp(), 1, generator=gen).squeeze(1)
            tokens[done] = EOS
            scores += torch.where(done, 0.0, log_probs.gather(1, tokens[:, None]).squeeze(1))
            seqs.append(tokens.clone())
            done |= (tokens == EOS) | (t + 1 >= caps.cpu())
            tokens = tokens.to(enc_out.device)
            if bool(done.all()):
                break
        rows = torch.stack(seqs, 1).tolist()
        out = []
        for i in range(b):
            hyps = []
            for j in range(i * n, (i + 1) * n):
                seq = rows[j][: rows[j].index(EOS)] if EOS in rows[j] else rows[j]
                hyps.append(Hypothesis(seq, float(scores[j])))
            out.append(sorted(hyps, key=lambda h: -h.score))
        return out


def sampling(
    temperature: Annotated[float, Field(gt=0.0)] = 0.7,
    num_samples: Annotated[int, Field(ge=1)] = 8,
    seed: int = 0,
    max_len_ratio: Annotated[float, Field(gt=0.0)] = 1.0,
) -> SamplingDecoder:
    """Draw num_samples transcripts at a temperature; keep the most likely (plugin example)."""
    return SamplingDecoder(temperature, num_samples, seed, max_len_ratio)
