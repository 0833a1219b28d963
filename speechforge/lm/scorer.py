"""A trained Transformer LM as a shallow-fusion scorer for beam search.

It follows the ``LMScorer`` protocol of ``speechforge.decode.lm_fusion``: beam search
feeds the newest token of each hypothesis and gets log P(next | prefix) back, the
state being the LM's key/value caches, reordered with the surviving hypotheses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from speechforge import precision, registry
from speechforge.lm.model import LMState, TransformerLM
from speechforge.lm.transfer import load_lm, vocabulary_mismatch
from speechforge.recipe import RecipeError, Runtime


class TransformerLMScorer:
    def __init__(self, model: TransformerLM):
        self.model = model.eval()

    def init_state(self, batch: int) -> LMState:
        return self.model.init_state(batch)

    @torch.no_grad()
    def score(self, tokens_last: torch.Tensor, state: LMState) -> tuple[torch.Tensor, LMState]:
        """(N,) newest tokens -> (N, V) next-token log-probabilities; the state grows in place."""
        if next(self.model.parameters()).device != tokens_last.device:
            self.model.to(tokens_last.device)
        with precision.autocast_weights(self.model):
            return self.model.step(tokens_last, state).float().log_softmax(-1), state

    def select(self, state: LMState, index: torch.Tensor) -> LMState:
        return state.select(index)


@registry.lm_scorers.register("transformer_lm")
def transformer_lm(
    tokenizer: Runtime[Any],
    run_dir: str,
    weights: Literal["best", "last"] = "best",
) -> TransformerLMScorer:
    """A Transformer LM trained with a task = "lm" recipe (its run directory); same tokenizer as the ASR run."""
    path = Path(run_dir)
    if not (path / "recipe.toml").exists():
        raise RecipeError([("decode.lm.run_dir", f"{path} is not an LM run directory (no recipe.toml)")])
    model, lm_tokenizer = load_lm(path, weights)
    reason = vocabulary_mismatch(lm_tokenizer, tokenizer)
    if reason:
        raise RecipeError([("decode.lm.run_dir", f"the LM in {path} was trained with another tokenizer ({reason}); "
                            "fusion needs the ASR run's vocabulary: train the ASR model with "
                            "[tokenizer] name = \"lm_run\", or the LM on a recipe with the ASR tokenizer")])
    return TransformerLMScorer(model)
