"""Language models for shallow fusion: the protocol beam search talks to, and a token
bigram that works with no training run.

Beam search adds ``lm_weight * log P_lm(token | prefix)`` to each candidate. An LM scorer
is built with the run's tokenizer (its vocabulary must be the ASR model's), so every
``lm_scorers`` factory takes ``tokenizer: Runtime[Any]``; decoders keep the LM's Spec
and build it in ``bind(tokenizer)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

import torch
from pydantic import Field

from speechforge import registry
from speechforge.data.tokenizers import EOS, SOS
from speechforge.recipe import Runtime


@runtime_checkable
class LMScorer(Protocol):
    """Step-by-step next-token log-probabilities over N hypotheses.

    ``score`` is fed the newest token of each hypothesis (<sos> first) and returns
    log P(next | prefix) (N, V) with the state that includes that token; ``select``
    reorders or repeats the state along N, as beam search keeps hypotheses."""

    def init_state(self, batch: int) -> Any: ...

    def score(self, tokens_last: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...

    def select(self, state: Any, index: torch.Tensor) -> Any: ...


class BigramLM:
    """log P(b | a) with add-k smoothing over the whole vocabulary; sentences are
    <sos> w1 ... wn <eos>. The previous token is all the state there is, and beam
    search hands it in as ``tokens_last``, so the state is empty."""

    def __init__(self, log_probs: torch.Tensor):
        self.log_probs = log_probs  # (V, V): row = previous token

    @classmethod
    def train(cls, sentences: list[list[int]], vocab_size: int, k: float = 1.0) -> "BigramLM":
        counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
        for ids in sentences:
            seq = torch.tensor([SOS, *ids, EOS])
            counts.index_put_((seq[:-1], seq[1:]), torch.ones(len(seq) - 1, dtype=torch.float64), accumulate=True)
        smoothed = counts + k
        return cls((smoothed / smoothed.sum(1, keepdim=True)).log().float())

    def init_state(self, batch: int) -> None:
        return None

    def score(self, tokens_last: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        if self.log_probs.device != tokens_last.device:
            self.log_probs = self.log_probs.to(tokens_last.device)
        return self.log_probs.index_select(0, tokens_last), None

    def select(self, state: None, index: torch.Tensor) -> None:
        return None

    def sentence_log_prob(self, ids: list[int]) -> float:
        """log P(<sos> ids <eos>): what fusion adds up over a finished hypothesis."""
        seq = [SOS, *ids, EOS]
        return sum(float(self.log_probs[a, b]) for a, b in zip(seq[:-1], seq[1:]))


@registry.lm_scorers.register("ngram")
def ngram(
    tokenizer: Runtime[Any],
    text: str,
    k: Annotated[float, Field(gt=0.0)] = 1.0,
) -> BigramLM:
    """Token bigram with add-k smoothing, counted from a text file (one sentence a line)."""
    path = Path(text)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise FileNotFoundError(f"decode.lm.text: cannot read {path} ({err.strerror or err})") from None
    sentences = [tokenizer.encode(line.strip()) for line in lines if line.strip()]
    if not sentences:
        raise ValueError(f"decode.lm.text: {path} holds no sentences")
    return BigramLM.train(sentences, tokenizer.vocab_size, k)

