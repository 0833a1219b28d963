"""speechforge export: the folder it writes, the graphs against PyTorch, its errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from speechforge import experiment
from speechforge.cli import main
from speechforge.data.audio import FrontEnd
from speechforge.data.tokenizers import SOS, load_tokenizer
from speechforge.runtime import bundle
from speechforge.runtime.model import OnnxModel, pad

from tests.export.conftest import hw4p2_features


def test_export_folder_holds_checked_graphs_and_a_manifest_naming_every_input_and_output(tiny_export, tiny_run):
    manifest = json.loads((tiny_export / "export.json").read_text())
    assert manifest["format"] == "speechforge-onnx" and manifest["weights"] == "best"
    assert set(manifest["graphs"]) == {"encoder", "decoder_step"}
    for graph in manifest["graphs"].values():
        path = tiny_export / graph["file"]
        onnx.checker.check_model(str(path), full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i["name"] for i in graph["inputs"]] == [i.name for i in session.get_inputs()]
        assert [o["name"] for o in graph["outputs"]] == [o.name for o in session.get_outputs()]
    encoder = manifest["graphs"]["encoder"]
    assert encoder["inputs"][0] == {"name": "feats", "dtype": "float32", "shape": ["batch", "frames", 80]}
    assert [o["name"] for o in encoder["outputs"]][-1] == "ctc_log_probs"
    step_inputs = {i["name"]: i["shape"] for i in manifest["graphs"]["decoder_step"]["inputs"]}
    assert step_inputs["self_k"] == [1, "hyps", 4, "past", 32]  # the cache is an explicit input
    assert json.loads((tiny_export / "features.json").read_text()) == FrontEnd().settings()
    assert load_tokenizer(tiny_export / "tokenizer").vocab_size == manifest["model"]["vocab_size"]
    assert (tiny_export / "normalization.json").read_text() == (tiny_run / "normalization.json").read_text()
    assert manifest["decode"] == {"name": "greedy", "max_len_ratio": 1.0, "max_len": 25}
    assert max(manifest["max_abs_difference_from_torch"].values()) < 1e-4


@torch.no_grad()
def test_graphs_match_pytorch_on_real_speech_step_by_step_through_the_cache(tiny_run, tiny_export):
    """A padded batch of real utterances; the decoder fed each reference transcript one
    token at a time (teacher forcing), so every cached step is compared, not only argmaxes."""
    run = experiment.open_run(tiny_run)
    model, onnx_model = run.model, OnnxModel(tiny_export)
    paths = [p for p in hw4p2_features() if "train-clean-100" in str(p)][:5]
    feats, lens = pad([run.normalizer(FrontEnd().features(p)) for p in paths])
    enc = onnx_model.encode(feats, lens)
    enc_out, enc_lens = model.encode(torch.from_numpy(feats), torch.from_numpy(lens))
    assert enc.enc_lens.tolist() == enc_lens.tolist()
    valid = enc.memory_valid
    np.testing.assert_allclose(enc.enc_out[valid], enc_out.numpy()[valid], atol=1e-4)
    np.testing.assert_allclose(enc.ctc_log_probs[valid], model.ctc_log_probs(enc_out).numpy()[valid], atol=1e-4)

    texts = [np.load(str(p).replace("fbank", "text")).tolist() for p in paths]
    targets = [run.tokenizer.encode("".join(t)) for t in texts]
    steps = min(len(t) for t in targets)
    state, onnx_state = model.init_state(enc_out, enc_lens), onnx_model.init_state(enc)
    tokens = np.full(len(paths), SOS)
    for t in range(steps):
        expected = model.step(torch.from_numpy(tokens), state).float().log_softmax(-1).numpy()
        np.testing.assert_allclose(onnx_model.step(tokens, onnx_state), expected, atol=1e-4)
        tokens = np.array([target[t] for target in targets])
    assert steps > 20 and onnx_state.self_k.shape[3] == steps


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: not a run directory (no recipe.toml)"


def test_export_will_not_write_into_a_folder_that_is_not_an_export(tiny_run, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", str(tiny_run), "--out", str(tmp_path)]) == 2
    assert "exists and is not an export folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_without_onnx_says_how_to_install_it(tiny_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what find_spec reports for a missing package
    assert main(["export", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert "speechforge export needs the onnx package" in err and 'pip install -e ".[export]"' in err


def test_export_of_the_last_checkpoint_goes_to_its_own_folder_and_replaces_an_older_export(tiny_run, capsys):
    assert main(["export", str(tiny_run), "--weights", "last"]) == 0
    assert main(["export", str(tiny_run), "--weights", "last"]) == 0  # over its own earlier export
    out = capsys.readouterr().out
    folder = tiny_run / "onnx-last"
    assert json.loads((folder / bundle.MANIFEST).read_text())["weights"] == "last"
    assert f"bytes in {folder}" in out and "encoder.onnx" in out
    assert not (tiny_run / "onnx-last.partial").exists()


def test_a_conformer_run_exports_with_its_batch_norm_in_evaluation_mode(tmp_path, hw4p2_root):
    """The Conformer's batch norm makes the mode matter: the parity check at export (which
    refuses a graph more than 1e-3 from PyTorch) must compare against the model in
    evaluation mode, which torch.onnx.export would otherwise leave in training mode."""
    from tests.conftest import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path / "tiny.toml", hw4p2_root, max_frames=6000, max_len=10)
    run_dir = tmp_path / "run"
    assert main(["--quiet", "run", str(recipe), "--run-dir", str(run_dir), "--set", "trainer.epochs=1",
                 "--set", "trainer.max_steps=2", "--set", "trainer.trackers=[]",
                 "--set", "model.encoder.name=conformer", "--set", "model.encoder.kernel_size=5",
                 "--set", "model.embedding.positions=none"]) == 0
    assert main(["--quiet", "export", str(run_dir), "--format", "onnx"]) == 0
    manifest = json.loads((run_dir / "onnx" / "export.json").read_text())
    assert max(manifest["max_abs_difference_from_torch"].values()) < 1e-3
