"""Transcribing files with a trained run: ``speechforge.load(run_dir).transcribe(paths)``.

A run directory is enough: the recipe, tokenizer, normalization statistics and
weights are all in it, so no corpus or recipe file needs to be at hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechforge import experiment
from speechforge.precision import autocast


class Transcriber:
    def __init__(self, run_dir: str | Path, overrides: list[str] | None = None, weights: str = "best"):
        self.run = experiment.open_run(Path(run_dir), overrides, weights)
        self.decoder = self.run.recipe.decode.build()
        if hasattr(self.decoder, "bind"):
            self.decoder.bind(self.run.tokenizer)
        self.front_end = experiment.front_end(self.run.recipe)
        from speechforge.pipeline import decode_precision

        self.precision = decode_precision(self.run.recipe, "cpu")

    @torch.no_grad()
    def transcribe(self, paths: list[str | Path], batch_size: int = 8) -> list[dict[str, Any]]:
        """One {"path", "text", "nbest"} per file, in the order given."""
        model, tok = self.run.model, self.run.tokenizer
        feats = [self.run.normalizer(self.front_end.features(p)) for p in paths]
        results = []
        for start in range(0, len(feats), batch_size):
            chunk = [torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)) for f in feats[start : start + batch_size]]
            lens = torch.tensor([c.shape[0] for c in chunk])
            padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)
            with autocast(self.precision, "cpu"):
                enc_out, enc_lens = model.encode(padded, lens)
                hyps = self.decoder(model, enc_out, enc_lens)
            for i, nbest in enumerate(hyps):
                texts = [tok.decode(h.tokens) for h in nbest]
                results.append({"path": str(paths[start + i]), "text": texts[0],
                                "nbest": [{"text": t, "score": round(h.score, 4)} for t, h in zip(texts, nbest)]})
        return results


def load(run_dir: str | Path, overrides: list[str] | None = None, weights: str = "best") -> Transcriber:
    return Transcriber(run_dir, overrides, weights)
