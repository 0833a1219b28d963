"""`accelerate launch` with 2 CPU processes (gloo): the same losses as one process on the
same global batch, and decoding that writes every utterance exactly once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate launcher is not on PATH")

LAUNCH = ["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "speechforge"]
SINGLE = [sys.executable, "-m", "speechforge"]
TRAIN = ["--set", "trainer.max_steps=4", "--set", "trainer.epochs=2", "--set", "trainer.log_every_steps=1",
         "--set", "trainer.deterministic=true", "--set", "data.max_frames=6000"]


def step_losses(run_dir: Path) -> list[float]:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [l["loss"] for l in lines if "loss" in l]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    from tests.conftest import HW4P2, REPO

    if not HW4P2.is_dir():
        pytest.skip(f"the shared HW4P2 sample is absent (expected {HW4P2})")
    tmp = tmp_path_factory.mktemp("dist")
    recipe = tmp / "tiny.toml"
    text = (REPO / "recipes" / "char_tiny.toml").read_text()
    recipe.write_text(text.replace('root = "../shared/data/hw4_data_subset/hw4p2_data"', f'root = "{HW4P2}"')
                      .replace("max_frames = 12000", "max_frames = 12000\nmax_utterances = 12")
                      .replace('[decode]\nname = "greedy"', '[decode]\nname = "greedy"\nmax_len = 30'))
    one, two = tmp / "one", tmp / "two"
    subprocess.run([*SINGLE, "--quiet", "run", str(recipe), "--run-dir", str(one), *TRAIN], check=True,
                   capture_output=True)
    done = subprocess.run([*LAUNCH, "--quiet", "run", str(recipe), "--run-dir", str(two), *TRAIN],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return one, two


def test_two_processes_train_like_one_on_the_same_global_batch(runs):
    one, two = runs
    a, b = step_losses(one), step_losses(two)
    assert len(a) == len(b) == 4
    # each process normalises its loss by its own tokens; the mean over processes is
    # within 1% of the one-process loss of the same global batch
    for x, y in zip(a, b):
        assert abs(x - y) <= 0.01 * abs(x), (a, b)


def test_two_process_decode_writes_what_one_process_writes(runs):
    one, two = runs
    out_one, out_two = one / "redecode", two / "redecode"
    for run_dir, cmd in ((one, SINGLE), (two, LAUNCH)):
        done = subprocess.run([*cmd, "--quiet", "decode", str(run_dir), "--split", "dev", "--split", "test"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    (f1,) = (one / "decode").iterdir()
    (f2,) = (two / "decode").iterdir()
    assert (f1 / "submission.csv").read_text() == (f2 / "submission.csv").read_text()
    h1 = [json.loads(l) for l in (f1 / "dev.hyps.jsonl").read_text().splitlines()]
    h2 = [json.loads(l) for l in (f2 / "dev.hyps.jsonl").read_text().splitlines()]
    assert [r["id"] for r in h2] == sorted({r["id"] for r in h2})  # each once, in order
    assert [(r["id"], r["hyp"]) for r in h1] == [(r["id"], r["hyp"]) for r in h2]
    del out_one, out_two
