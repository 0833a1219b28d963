"""Whole runs through the command line: train, evaluate, decode, reuse the run."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from speechforge import registry
from speechforge.cli import main



def run_cli(*args: str) -> int:
    return main(["--quiet", *args])


def test_run_writes_checkpoints_metrics_hypotheses_and_submission(tiny_recipe, tmp_path, hw4p2_root, capsys):
    run_dir = tmp_path / "run"
    code = run_cli("run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "trainer.max_steps=3",
                   "--set", "trainer.epochs=1")
    out = capsys.readouterr().out
    assert code == 0
    assert "dev: CER" in out and f"run directory: {run_dir}" in out
    for name in ("recipe.toml", "tokenizer/tokenizer.json", "normalization.json", "best.pt", "metrics.jsonl",
                 "dataset_stats.json", "summary.json"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))
    (folder,) = (run_dir / "decode").iterdir()
    rows = list(csv.reader(open(folder / "submission.csv")))
    test_ids = sorted(p.stem for p in (hw4p2_root / "test-clean" / "fbank").glob("*.npy"))
    assert rows[0] == ["id", "transcription"] and [r[0] for r in rows[1:]] == test_ids
    dev = [json.loads(line) for line in open(folder / "dev.hyps.jsonl")]
    assert len(dev) == 2 and all(r["ref"] and "nbest" in r for r in dev)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["dev"]) >= {"cer", "wer", "utterances"}
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    assert stats["train"]["utterances"] == 8 and 0 <= stats["train"]["padding_fraction"] < 0.2


def test_decode_swaps_decoder_on_the_command_line(tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_cli("run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "trainer.max_steps=2",
                   "--set", "trainer.epochs=1") == 0
    assert run_cli("decode", str(run_dir), "--set", "decode.max_len_ratio=0.5", "--split", "dev") == 0
    folders = sorted(p.name for p in (run_dir / "decode").iterdir())
    assert len(folders) == 2 and any("max_len_ratio0.5" in f for f in folders)


@pytest.mark.skipif(importlib.util.find_spec("speechforge_sampling") is None,
                    reason="the example plugin is not installed (pip install -e plugins/speechforge-sampling)")
def test_plugin_decoder_is_listed_and_used_by_a_run(tiny_recipe, tmp_path, capsys):
    assert "sampling" in registry.names("decoders")
    assert run_cli("registry", "decoders") == 0
    listing = capsys.readouterr().out
    assert "sampling" in listing and "[speechforge-sampling]" in listing
    run_dir = tmp_path / "run"
    code = run_cli("run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "trainer.max_steps=2",
                   "--set", "trainer.epochs=1", "--set", "decode.name=sampling", "--set", "decode.num_samples=3")
    assert code == 0
    (folder,) = (run_dir / "decode").iterdir()
    assert folder.name.startswith("sampling")
    first = json.loads(open(folder / "dev.hyps.jsonl").readline())
    assert len(first["nbest"]) == 3


@pytest.mark.slow
def test_overfits_two_training_utterances_below_10_percent_cer(tiny_recipe, tmp_path, capsys):
    """The issue's overfit check (28 utterances, CER below 10%), scaled down to 2. With the
    recipe's cosine decay, not a constant 3e-3: at a constant rate the last step can land on a
    loss spike, and which one it lands on changes with bf16 rounding (batch shapes included)."""
    run_dir = tmp_path / "run"
    code = run_cli("run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "data.dev=train-clean-100",
                   "--set", "data.max_utterances=2", "--set", "trainer.epochs=500", "--set", "trainer.validate_every_epochs=500",
                   "--set", "optimizer.lr=3e-3", "--set", "decode.max_len=250",
                   "--set", "trainer.log_every_steps=100", "--set", "trainer.trackers=[]")
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["decode"]["dev"]["utterances"] == 2
    assert summary["decode"]["dev"]["cer"] < 0.10, summary["decode"]["dev"]


def test_a_run_lists_every_skipped_file_and_counts_them_by_reason(tiny_recipe, tmp_path, hw4p2_root, capsys):
    import shutil

    import numpy as np

    root = tmp_path / "data"
    shutil.copytree(hw4p2_root, root)
    fbank = root / "train-clean-100" / "fbank"
    (fbank / "empty.npy").write_bytes(b"")
    (fbank / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(fbank / "flat.npy", np.zeros(5, np.float32))
    for name in ("empty", "corrupt", "flat"):
        np.save(root / "train-clean-100" / "text" / f"{name}.npy", np.array(list("A")))
    run_dir = tmp_path / "run"
    code = run_cli("run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", f'data.root="{root}"',
                   "--set", 'data.on_bad_file="skip"', "--set", "data.max_utterances=40", "--set", "trainer.max_steps=1",
                   "--set", "trainer.epochs=1", "--set", "trainer.trackers=[]")
    assert code == 0
    rows = (run_dir / "skipped.tsv").read_text().splitlines()
    assert rows[0] == "split\tfile\treason" and len(rows) == 4
    assert {r.split("\t")[1] for r in rows[1:]} == {str(fbank / f"{n}.npy") for n in ("empty", "corrupt", "flat")}
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    assert sum(stats["train"]["skipped_by_reason"].values()) == 3
