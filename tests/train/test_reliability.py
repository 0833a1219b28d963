"""Runs survive kills and bad numbers: exact resume, clean stops, non-finite skips."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from speechforge import registry
from speechforge.cli import main
from speechforge.train import checkpoint
from speechforge.train.losses import JointCTCAttention

SETTINGS = ["--set", "trainer.deterministic=true", "--set", "trainer.epochs=2", "--set", "trainer.checkpoint_every_steps=3",
            "--set", "trainer.validate_every_epochs=1", "--set", "data.max_frames=4000"]


def cli(recipe: Path, run_dir: Path, *extra: str, quiet: bool = True) -> list[str]:
    return [sys.executable, "-m", "speechforge", *(["--quiet"] if quiet else []), "run", str(recipe), "--run-dir", str(run_dir), *SETTINGS, *extra]


def final_state(run_dir: Path) -> tuple[dict, dict]:
    state = checkpoint.load(checkpoint.latest(run_dir / "checkpoints"))
    summary = json.loads((run_dir / "summary.json").read_text())
    return state, summary


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, min_step: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = checkpoint.checkpoints(run_dir / "checkpoints")
        if found and found[-1][0] >= min_step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {min_step}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_recipe, tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(cli(tiny_recipe, whole), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(tiny_recipe, killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(killed, proc, min_step=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()  # it really died mid-run
    resumed = subprocess.run(cli(tiny_recipe, killed, quiet=False), check=True, capture_output=True, text=True)
    # 8 utterances in batches of at most 4000 padded frames make 4 batches an epoch: the
    # checkpoint of step 3 is inside the first one
    assert re.search(r"resumed from .*ckpt-\d+\.pt \(epoch \d+, batch \d+, step \d+\)", resumed.stdout)

    a_state, a_summary = final_state(whole)
    b_state, b_summary = final_state(killed)
    assert a_state["step"] == b_state["step"]
    assert a_summary["best_dev_cer"] == b_summary["best_dev_cer"]
    assert a_summary["decode"]["dev"]["cer"] == b_summary["decode"]["dev"]["cer"]
    for key, value in a_state["model"].items():
        torch.testing.assert_close(b_state["model"][key], value, rtol=0, atol=0, msg=key)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli(tiny_recipe, run_dir, "--set", "trainer.checkpoint_every_steps=1000",
                                "--set", "trainer.epochs=50"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run_dir / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130
    assert "checkpoint saved" in err and "Resume with" in err and "Traceback" not in err
    assert checkpoint.latest(run_dir / "checkpoints") is not None


class NaNAfter(JointCTCAttention):
    """The real loss, turned NaN from a given call on."""

    calls = 0

    def __init__(self, start: int):
        super().__init__(ctc_weight=0.3, label_smoothing=0.0)
        self.start = start

    def __call__(self, out, tokens_out, token_lens):
        NaNAfter.calls += 1
        result = super().__call__(out, tokens_out, token_lens)
        if NaNAfter.calls >= self.start:
            result["loss"] = result["loss"] * float("nan")
        return result


@pytest.fixture
def nan_loss():
    @registry.losses.register("test_nan_after")
    def test_nan_after(start: int = 3) -> NaNAfter:
        """Test-only: the joint loss, NaN from call `start` on."""
        return NaNAfter(start)

    NaNAfter.calls = 0
    yield
    registry.losses.get_all()  # keep the registry consistent for later tests


def test_nonfinite_loss_skips_updates_counts_them_and_stops_after_k(tiny_recipe, tmp_path, capsys, nan_loss):
    run_dir = tmp_path / "run"
    code = main(["run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "loss.name=test_nan_after",
                 "--set", "loss.start=3", "--set", "trainer.max_nonfinite=3", "--set", "trainer.epochs=3"])
    captured = capsys.readouterr()
    assert code == 1
    assert "step 3: non-finite loss; update skipped (1 so far)" in captured.out
    assert "step 5: non-finite loss; update skipped (3 so far)" in captured.out
    assert "3 consecutive non-finite updates: stopping" in captured.err
    assert "learning rate" in captured.err and "mixed precision" in captured.err.replace("fp16", "mixed precision")


def test_resume_refuses_a_recipe_with_another_model_shape(tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--quiet", "run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "trainer.max_steps=1",
                 "--set", "trainer.epochs=1"]) == 0
    code = main(["run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "model.d_model=64"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.d_model: 128 in the run, 64 now" in err


def test_resume_flag_without_a_run_is_an_error(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe), "--run-dir", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_unwritable_run_dir_fails_before_any_compute(tiny_recipe, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", str(tiny_recipe), "--run-dir", str(blocker / "run")]) == 2
    assert capsys.readouterr().err.startswith("error: run_dir:")


def test_checkpoints_load_as_data_and_keep_the_last_n(tmp_path):
    for step in range(1, 6):
        checkpoint.save_atomic({"step": step, "model": {"w": torch.ones(2) * step}}, tmp_path / f"ckpt-{step:08d}.pt")
        checkpoint.prune(tmp_path, keep_last=2)
    assert [s for s, _ in checkpoint.checkpoints(tmp_path)] == [4, 5]
    assert not list(tmp_path.glob("*.tmp"))
    avg = checkpoint.average_state_dicts([p for _, p in checkpoint.checkpoints(tmp_path)])
    torch.testing.assert_close(avg["w"], torch.full((2,), 4.5))


@pytest.mark.slow
def test_compiled_model_trains_through_changing_batch_shapes_like_the_eager_one(tiny_recipe, tmp_path):
    # batches of different lengths and sizes: the first shape change recompiles with dynamic shapes
    extra = ["--set", "trainer.max_steps=3", "--set", "trainer.log_every_steps=1", "--set", "trainer.epochs=1"]
    losses = {}
    for name, compiled in (("eager", "false"), ("compiled", "true")):
        run_dir = tmp_path / name
        subprocess.run(cli(tiny_recipe, run_dir, "--set", f"trainer.compile={compiled}", *extra), check=True,
                       capture_output=True)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if "loss" in r]
    assert len(losses["eager"]) == 3
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)
