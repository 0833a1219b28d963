"""Language models for shallow fusion: the protocol beam search talks to, and a token
n-gram that works with no training run.

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


class NGramLM:
    """A token n-gram: log P(w | the last order - 1 tokens) with add-k smoothing over the
    whole vocabulary, counted from sentences <sos> w1 ... wn <eos> (the context before w1
    padded with <sos>). A context never seen backs off to its longest seen suffix, down to
    the unigram. Over a small vocabulary of words (digits, commands) a high order spells
    out the lexicon: after T H R E, <eos> is as unlikely as the text made it.

    The state of each hypothesis is its last order - 2 tokens; beam search hands in the
    newest one as ``tokens_last``. Distributions are built on first use per context and
    kept (a vocabulary-sized row each)."""

    def __init__(self, counts: dict[tuple[int, ...], dict[int, int]], order: int, vocab_size: int, k: float):
        self.counts, self.order, self.vocab_size, self.k = counts, order, vocab_size, k
        self.totals = {ctx: sum(nxt.values()) for ctx, nxt in counts.items()}
        self.rows: dict[tuple[int, ...], torch.Tensor] = {}

    @classmethod
    def train(cls, sentences: list[list[int]], vocab_size: int, k: float = 1.0, order: int = 2) -> "NGramLM":
        counts: dict[tuple[int, ...], dict[int, int]] = {}
        for ids in sentences:
            seq = [SOS] * (order - 1) + [*ids, EOS]
            for i in range(order - 1, len(seq)):
                for m in range(order):  # every context length, for the back-off
                    following = counts.setdefault(tuple(seq[i - m : i]), {})
                    following[seq[i]] = following.get(seq[i], 0) + 1
        return cls(counts, order, vocab_size, k)

    def context_of(self, history: list[int]) -> tuple[int, ...]:
        """The longest suffix of ``history`` (order - 1 tokens at most) that the text had."""
        for m in range(min(self.order - 1, len(history)), 0, -1):
            if tuple(history[-m:]) in self.counts:
                return tuple(history[-m:])
        return ()

    def row(self, context: tuple[int, ...]) -> torch.Tensor:
        """log P(. | context), (V,), for a context the text had."""
        if context not in self.rows:
            denominator = self.totals[context] + self.k * self.vocab_size
            row = torch.full((self.vocab_size,), self.k / denominator, dtype=torch.float64)
            following = self.counts[context]
            row[list(following)] = (torch.tensor(list(following.values()), dtype=torch.float64) + self.k) / denominator
            self.rows[context] = row.log().float()
        return self.rows[context]

    def init_state(self, batch: int) -> torch.Tensor:
        return torch.full((batch, max(self.order - 2, 0)), SOS, dtype=torch.long)

    def score(self, tokens_last: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        history = torch.cat([state.to(tokens_last.device), tokens_last[:, None]], dim=1)  # (N, order - 1)
        rows = torch.stack([self.row(self.context_of(h)) for h in history.tolist()])
        return rows.to(tokens_last.device), history[:, 1:]

    def select(self, state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index.to(state.device))

    def sequence_log_prob(self, tokens: list[int]) -> float:
        """log P(tokens | <sos>): what fusion adds up over them."""
        history = [SOS] * (self.order - 1)
        total = 0.0
        for tok in tokens:
            total += float(self.row(self.context_of(history))[tok])
            history.append(tok)
        return total

    def sentence_log_prob(self, ids: list[int]) -> float:
        """log P(<sos> ids <eos>): what fusion adds up over a finished hypothesis."""
        return self.sequence_log_prob([*ids, EOS])


@registry.lm_scorers.register("ngram")
def ngram(
    tokenizer: Runtime[Any],
    text: str,
    order: Annotated[int, Field(ge=1, le=12)] = 2,
    k: Annotated[float, Field(gt=0.0)] = 1.0,
) -> NGramLM:
    """Token n-gram (order 2: a bigram) with add-k smoothing and back-off, counted from a text file (one sentence a line)."""
    path = Path(text)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise FileNotFoundError(f"decode.lm.text: cannot read {path} ({err.strerror or err})") from None
    sentences = [tokenizer.encode(line.strip()) for line in lines if line.strip()]
    if not sentences:
        raise ValueError(f"decode.lm.text: {path} holds no sentences")
    return NGramLM.train(sentences, tokenizer.vocab_size, k, order)
