"""Transcribing with an export folder (``speechforge export``): numpy and onnxruntime, no torch.

    from speechforge import runtime
    recognizer = runtime.load("runs/quickstart/onnx")
    recognizer.transcribe(["a.wav", "b.flac"])   # [{"path", "text", "nbest"}, ...]

Features come from the same front end training used (``speechforge.data.audio``, through
kaldi-native-fbank) with the settings the export stores; decoding is the numpy search in
``speechforge.runtime.search`` over the two ONNX graphs (``speechforge.runtime.model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(export_dir: str | Path, decode: dict[str, Any] | None = None, threads: int | None = None):
    """A ``Recognizer`` for an export folder. ``decode`` overrides the manifest's decoder
    ({"name": "beam", "beam_size": 10, "ctc_weight": 0.3}); ``threads`` bounds onnxruntime's."""
    from speechforge.extras import require

    require("export", ("onnxruntime",), "speechforge.runtime")
    from speechforge.runtime.recognizer import Recognizer

    return Recognizer(Path(export_dir), decode, threads)


def decode_overrides(overrides: list[str]) -> dict[str, Any]:
    """``--set decode.KEY=VALUE`` items as a dict (values in TOML syntax, as for a run);
    an export has no other section to set."""
    from speechforge.recipe import RecipeError, parse_value

    decode: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.startswith("decode.") or key.count(".") != 1:
            raise RecipeError([("--set", f"an export folder takes only decode.KEY=VALUE, got {item!r}")])
        decode[key.split(".", 1)[1]] = parse_value(text.strip())
    return decode
