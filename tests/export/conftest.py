"""One tiny run of the character recipe, and its ONNX export, shared by the export tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from speechforge.cli import main
from tests.conftest import HW4P2, write_tiny_recipe

if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip('onnx and onnxruntime are not installed (pip install -e ".[export]")', allow_module_level=True)

MAX_LEN = 25


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """char_tiny on 8 utterances, one optimizer step, output projection untied: a model
    near its initialisation, whose greedy transcripts differ from utterance to utterance
    and from step to step, so they exercise the cache. (A few steps more and every
    utterance decodes to the same run of spaces; tied, the decoder repeats <sos>.)"""
    if not HW4P2.is_dir():
        pytest.skip(f"the shared HW4P2 sample is absent (expected {HW4P2})")
    tmp = tmp_path_factory.mktemp("export")
    recipe = write_tiny_recipe(tmp / "tiny.toml", HW4P2, max_frames=6000, max_len=MAX_LEN)
    run_dir = tmp / "run"
    assert main(["--quiet", "run", str(recipe), "--run-dir", str(run_dir), "--set", "trainer.epochs=1",
                 "--set", "trainer.max_steps=1", "--set", "model.tie_embeddings=false",
                 "--set", "trainer.trackers=[]"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def tiny_export(tiny_run) -> Path:
    assert main(["--quiet", "export", str(tiny_run), "--format", "onnx"]) == 0
    return tiny_run / "onnx"


def hw4p2_features() -> list[Path]:
    """Every feature file of the sample: 28 train, 2 dev, 2 test utterances."""
    return sorted(HW4P2.glob("*/fbank/*.npy"))
