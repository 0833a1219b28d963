"""What a finished run offers: transcription, reports, listings, averaging, decoding again."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import speechforge
from speechforge.cli import main
from tests.conftest import FSDD, HW4P2, REPO, write_tiny_recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if not HW4P2.is_dir():
        pytest.skip(f"the shared HW4P2 sample is absent (expected {HW4P2})")
    tmp = tmp_path_factory.mktemp("tools")
    recipe = write_tiny_recipe(tmp / "tiny.toml", HW4P2, max_frames=6000, max_len=25)
    out = tmp / "run"
    assert main(["--quiet", "run", str(recipe), "--run-dir", str(out), "--set", "trainer.epochs=2",
                 "--set", "trainer.checkpoint_every_steps=1"]) == 0
    return out


def test_python_api_transcribes_features_and_audio(run_dir):
    feats = sorted((HW4P2 / "dev-clean" / "fbank").glob("*.npy"))[0]
    paths = [feats]
    if FSDD.is_dir():
        paths.append(sorted(FSDD.glob("*.wav"))[0])  # 8 kHz: resampled to 16 kHz on the way in
    results = speechforge.load(run_dir).transcribe(paths)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    assert all(isinstance(r["text"], str) and r["nbest"] for r in results)


def test_transcribe_cli_prints_json_per_file(run_dir, capsys):
    feats = sorted((HW4P2 / "test-clean" / "fbank").glob("*.npy"))
    assert main(["transcribe", str(run_dir), *map(str, feats), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(l)["path"] for l in lines] == [str(p) for p in feats]


def test_transcribe_names_a_bad_file(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((40, 80), np.float32))
    assert main(["transcribe", str(run_dir), str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_run_bundle_is_enough_without_the_recipe_or_data(run_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    feats = sorted((HW4P2 / "dev-clean" / "fbank").glob("*.npy"))[0]
    a = speechforge.load(run_dir).transcribe([feats])[0]["text"]
    assert speechforge.load(moved).transcribe([feats])[0]["text"] == a
    for name in ("recipe.toml", "tokenizer/tokenizer.json", "normalization.json", "best.pt", "averaged.pt",
                 "metrics.jsonl", "plots/attention-latest.png"):
        assert (moved / name).exists(), name


def test_report_is_one_self_contained_page(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # loss, error rates, learning rate, attention
    assert "Worst dev utterances" in page and "src=\"http" not in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_its_images_in_a_headless_browser(run_dir, tmp_path):
    main(["report", str(run_dir)])
    probe = tmp_path / "probe.html"
    probe.write_text((run_dir / "report.html").read_text().replace(
        "</body>", "<script>window.onload=()=>{document.title=[...document.images]"
                   ".filter(i=>i.complete&&i.naturalWidth>0).length+'/'+document.images.length}</script></body>"))
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--dump-dom", f"file://{probe}"], capture_output=True, text=True, timeout=120)
    title = done.stdout.split("<title>")[1].split("</title>")[0]
    loaded, total = map(int, title.split("/"))
    assert total >= 4 and loaded == total


def test_runs_lists_the_run_with_its_best_cer(run_dir, capsys):
    assert main(["runs", str(run_dir.parent)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if str(run_dir) in l)
    assert "best dev CER" in line and "unfinished" not in line


def test_average_of_the_last_and_best_checkpoints(run_dir, capsys):
    assert main(["average", str(run_dir), "--last", "2"]) == 0
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    assert main(["average", str(run_dir), "--best", "2"]) == 0
    assert main(["--quiet", "decode", str(run_dir), "--weights", "averaged", "--split", "dev"]) == 0
    assert any(p.name.endswith("-averaged") for p in (run_dir / "decode").iterdir())


def test_plot_lr_draws_the_schedule_before_training(tmp_path, capsys, hw4p2_root):
    out = tmp_path / "lr.png"
    recipe = REPO / "recipes" / "char_tiny.toml"
    assert main(["plot-lr", str(recipe), "--set", f"data.root={hw4p2_root}", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "warmup_cosine" in capsys.readouterr().out


def test_check_and_plot_lr_warn_when_the_warm_up_outlasts_the_run(tmp_path, capsys, hw4p2_root):
    recipe = REPO / "recipes" / "bpe5k_ctc.toml"
    args = ["--set", f'data.root="{hw4p2_root}"', "--set", "trainer.epochs=1"]
    assert main(["check", str(recipe), *args]) == 0
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("warning: "))
    assert "scheduler.warmup_steps = 2000 but the run has" in warning and "never reaches its peak" in warning
    assert main(["plot-lr", str(recipe), *args, "--out", str(tmp_path / "lr.png")]) == 0
    assert warning in capsys.readouterr().out
    assert main(["check", str(recipe), *args, "--set", "scheduler.warmup_steps=1"]) == 0
    assert "warning:" not in capsys.readouterr().out


def test_report_opens_with_the_facts_and_every_decode(run_dir, capsys):
    assert main(["--quiet", "decode", str(run_dir), "--split", "dev", "--set", "decode.max_len_ratio=0.5"]) == 0
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    first = page[: page.index("<h2>Curves</h2>")]
    for fact in ("parameters", "training data", "hours", "training time", "best dev CER"):
        assert fact in first, fact
    decodes = list((run_dir / "decode").glob("*/metrics.json"))  # other tests of this module decode too
    assert len(decodes) >= 2 and first.count("<tr><td>greedy</td>") == len(decodes) and "max_len_ratio=0.5" in first
    assert '"best_dev_cer"' not in first  # the raw summary comes last, folded
