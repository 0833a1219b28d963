"""An export folder, ready to transcribe: front end, normalization, the ONNX model, a
search and the tokenizer, as ``speechforge.transcribe.Transcriber`` has them for a run."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

from speechforge.data import normalization
from speechforge.data.audio import FrontEnd
from speechforge.data.tokenizers import load_tokenizer
from speechforge.recipe import RecipeError
from speechforge.runtime import bundle
from speechforge.runtime.model import OnnxModel, pad
from speechforge.runtime.decoders import DECODERS
from speechforge.runtime.search import Hypothesis


class Recognizer:
    def __init__(self, folder: Path, decode: dict[str, Any] | None = None, threads: int | None = None):
        self.folder = Path(folder)
        self.manifest = bundle.read_manifest(self.folder)
        files = self.manifest["files"]
        self.model = OnnxModel(self.folder, self.manifest, threads)
        self.tokenizer = load_tokenizer(self.folder / files["tokenizer"])
        self.normalizer = normalization.from_state(json.loads((self.folder / files["normalization"]).read_text()))
        self.front_end = FrontEnd(**json.loads((self.folder / files["features"]).read_text()))
        self.decode = checked_decoder(self.manifest["decode"], decode or {})

    def recognize(self, feats: list[np.ndarray], batch_size: int = 8) -> list[list[Hypothesis]]:
        """Hypotheses for each (T, F) array of normalised features, in the order given."""
        name, args = self.decode["name"], {k: v for k, v in self.decode.items() if k != "name"}
        out = []
        for start in range(0, len(feats), batch_size):
            out += DECODERS[name](self.model, self.model.encode(*pad(feats[start : start + batch_size])), **args)
        return out

    def transcribe(self, paths: list[str | Path], batch_size: int = 8) -> list[dict[str, Any]]:
        """One {"path", "text", "nbest"} per audio file or (num_mel_bins, T) feature .npy."""
        feats = [self.normalizer(self.front_end.features(p)) for p in paths]
        results = []
        for path, nbest in zip(paths, self.recognize(feats, batch_size)):
            texts = [self.tokenizer.decode(h.tokens) for h in nbest]
            results.append({"path": str(path), "text": texts[0],
                            "nbest": [{"text": t, "score": round(h.score, 4)} for t, h in zip(texts, nbest)]})
        return results


def checked_decoder(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` over ``base`` (the manifest's decoder), if the runtime has that decoder
    and it takes those arguments; a decoder chosen by name keeps those of ``base`` it takes."""
    name = changes.get("name", base["name"])
    if name not in DECODERS:
        raise RecipeError([("decode.name", f"the runtime has no decoder {name!r}; it has: {', '.join(DECODERS)}")])
    accepted = list(inspect.signature(DECODERS[name]).parameters)[2:]
    for key in changes:
        if key != "name" and key not in accepted:
            raise RecipeError([(f"decode.{key}", f"not an argument of the runtime's {name} decoder "
                                                 f"(it takes: {', '.join(accepted) or 'none'})")])
    return {**{k: v for k, v in base.items() if k in accepted}, **changes, "name": name}
