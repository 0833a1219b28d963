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
from speechforge.data.corpus import load_features
from speechforge.data.errors import DataError
from speechforge.precision import autocast

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".sph"}


def features_of(path: Path, num_mel_bins: int = 80) -> np.ndarray:
    """(T, num_mel_bins) features of an audio file or an (80, T) feature .npy."""
    if path.suffix == ".npy":
        return load_features(path, num_mel_bins)
    if path.suffix.lower() in AUDIO_SUFFIXES:
        from speechforge.data.features import fbank, read_audio

        return fbank(read_audio(path, 16000), 16000, num_mel_bins).T
    raise DataError(f"not an audio file ({', '.join(sorted(AUDIO_SUFFIXES))}) or a feature .npy", path)


class Transcriber:
    def __init__(self, run_dir: str | Path, overrides: list[str] | None = None, weights: str = "best"):
        self.run = experiment.open_run(Path(run_dir), overrides, weights)
        self.decoder = self.run.recipe.decode.build()
        if hasattr(self.decoder, "bind"):
            self.decoder.bind(self.run.tokenizer)
        self.num_mel_bins = int(self.run.recipe.data.args.get("num_mel_bins", 80))
        from speechforge.pipeline import decode_precision

        self.precision = decode_precision(self.run.recipe, "cpu")

    @torch.no_grad()
    def transcribe(self, paths: list[str | Path], batch_size: int = 8) -> list[dict[str, Any]]:
        """One {"path", "text", "nbest"} per file, in the order given."""
        model, tok = self.run.model, self.run.tokenizer
        feats = [self.run.normalizer(features_of(Path(p), self.num_mel_bins)) for p in paths]
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
