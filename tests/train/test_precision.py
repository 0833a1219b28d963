"""Mixed precision: what "auto" picks, and bf16 training that follows fp32."""

from __future__ import annotations

import json

import pytest
import torch

from speechforge import precision
from speechforge.cli import main


@pytest.mark.parametrize("flags, speedup, expected", [
    (("amx_bf16", "avx512_bf16"), None, "bf16"),  # AMX: bf16 without measuring
    (("avx512_bf16",), 2.0, "bf16"),  # as on the AMD EPYC dev machines
    (("avx512_bf16",), 0.56, "no"),  # as on an Intel Xeon without AMX
    (("avx512_bf16",), 1.05, "no"),  # a near tie keeps fp32
    ((), None, "no"),
])
def test_auto_picks_bf16_only_where_the_cpu_multiplies_it_fast(monkeypatch, flags, speedup, expected):
    measured = []
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: measured.append(1) or speedup)
    chosen, why = precision.resolve("auto", "cpu")
    assert chosen == expected
    assert why.startswith("auto: ")
    assert bool(measured) == (speedup is not None)
    if speedup is not None:
        assert f"{speedup:.2f}x fp32's rate" in why
    assert all(f in why for f in flags[:1]) if flags else "neither AMX nor AVX512-BF16" in why


def test_the_cpu_probe_measures_a_positive_ratio_once():
    precision.cpu_bf16_speedup.cache_clear()
    first = precision.cpu_bf16_speedup()
    assert first > 0 and precision.cpu_bf16_speedup() == first


def test_an_explicit_precision_is_kept_whatever_the_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    assert precision.resolve("bf16", "cpu") == ("bf16", "as the recipe asks")
    assert precision.resolve("no", "cpu")[0] == "no"


def test_autocast_runs_matrix_products_in_bf16_and_keeps_fp32_weights():
    layer = torch.nn.Linear(4, 4)
    with precision.autocast("bf16", "cpu"):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    with precision.autocast("no", "cpu"):
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def _tied_decoder() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 10))
    model[2].weight = model[0].weight  # an output layer tied to the embedding
    return model


def test_autocast_weights_holds_linears_in_the_autocast_dtype_and_gives_the_same_products():
    model = _tied_decoder()
    tokens = torch.tensor([[1, 2, 3]])
    originals = [p for p in model.parameters()]
    with torch.inference_mode(), precision.autocast("bf16", "cpu"):
        want = model(tokens)
        with precision.autocast_weights(model):
            assert model[2].weight.dtype == model[2].bias.dtype == torch.bfloat16
            # the embedding and the norm are not matrix products: autocast leaves them fp32
            assert model[0].weight.dtype == model[1].weight.dtype == torch.float32
            got = model(tokens)
    assert torch.equal(got, want)
    assert [p for p in model.parameters()] == originals and model[2].weight is model[0].weight


def test_autocast_weights_changes_nothing_without_autocast():
    model = _tied_decoder()
    with precision.autocast_weights(model):
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_autocast_weights_recasts_a_weight_that_training_changed():
    layer = torch.nn.Linear(4, 4, bias=False)
    x = torch.randn(2, 4)
    with precision.autocast("bf16", "cpu"):
        with precision.autocast_weights(layer):
            before = layer(x)
        with torch.no_grad():
            layer.weight.mul_(2.0)  # an optimizer step, in place
        with precision.autocast_weights(layer):
            after = layer(x)
    assert torch.allclose(after.float(), 2 * before.float(), rtol=1e-2)


@pytest.mark.parametrize(("mixed", "steps"), [("bf16", (32, 16)), ("no", (1, 1))])
def test_a_bf16_run_pads_its_batches_in_steps_and_an_fp32_run_only_to_the_longest(tiny_recipe, tmp_path, mixed, steps):
    from speechforge import experiment, recipe as recipe_mod

    recipe = recipe_mod.load(tiny_recipe, [f'trainer.mixed_precision="{mixed}"'])
    exp = experiment.build(recipe, tmp_path / "run", log=lambda *a: None)
    assert exp.pad_steps == steps
    for batch in exp.loader("train", train=True)[0]:
        assert batch.feats.shape[1] % steps[0] == 0 and batch.tokens_in.shape[1] % steps[1] == 0
        # no more than the step beyond the longest utterance and the longest text (+ <sos>)
        assert batch.feats.shape[1] - int(batch.feat_lens.max()) < steps[0]
        assert batch.tokens_in.shape[1] - int(batch.token_lens.max()) - 1 < steps[1]


def _losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return [r["loss"] for r in records if "loss" in r]


def test_bf16_training_follows_the_fp32_loss_curve(tiny_recipe, tmp_path, capsys):
    """40 steps of char_tiny from the same weights, fp32 and bf16 (char_tiny has no dropout,
    so nothing random differs).

    The tolerance: bf16 keeps 8 bits of mantissa, so each product's inputs are rounded by up
    to 2^-9 (0.2%) relative, while products accumulate and the losses are computed in fp32.
    On the 2-core dev machine (AVX512-BF16) the two curves stayed within 0.05% of each other
    at every step. 2% per step and 1% on the mean of the last ten steps leave room for CPUs
    whose bf16 kernels round differently (AMX, or emulation where neither flag is present)
    and still catch what would matter: a loss or softmax left in bf16, weights trained in
    bf16 instead of fp32 master copies, or an update that drifts."""
    curves = {}
    for mixed in ("no", "bf16"):
        run_dir = tmp_path / mixed
        code = main(["--quiet", "run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "trainer.max_steps=40",
                     "--set", "trainer.epochs=40", "--set", "trainer.log_every_steps=1", "--set", "trainer.trackers=[]",
                     "--set", f'trainer.mixed_precision="{mixed}"', "--set", "data.dev=null", "--set", "data.test=null"])
        assert code == 0
        curves[mixed] = _losses(run_dir)
        assert json.loads((run_dir / "summary.json").read_text())["precision"] == mixed
    fp32, bf16 = curves["no"], curves["bf16"]
    assert len(fp32) == len(bf16) == 40
    assert fp32[-1] < 0.8 * fp32[0]  # the run learns, so the comparison means something
    gaps = [abs(b - f) / f for f, b in zip(fp32, bf16)]
    assert max(gaps) < 0.02, gaps
    assert abs(sum(bf16[-10:]) - sum(fp32[-10:])) / sum(fp32[-10:]) < 0.01


def test_the_run_log_says_which_precision_and_why(tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "trainer.max_steps=1",
                 "--set", "trainer.epochs=1", "--set", "trainer.trackers=[]"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("precision: "))
    chosen, why = precision.resolve("auto", "cpu")
    assert line == f"precision: {precision.name(chosen)} ({why})"


def test_a_bf16_decode_logs_and_records_the_products_its_search_measured(tiny_recipe, tmp_path, capsys, monkeypatch):
    from speechforge.model import packed

    # fp32 steps measured at half the time: the search multiplies in fp32
    monkeypatch.setattr(packed, "_step_seconds", lambda step, rows, **_: 2.0 if step.dtype == torch.bfloat16 else 1.0)
    run_dir = tmp_path / "run"
    assert main(["run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "trainer.max_steps=1",
                 "--set", "trainer.epochs=1", "--set", "trainer.trackers=[]",
                 "--set", 'trainer.mixed_precision="bf16"', "--set", "data.test=null"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "bf16 search products" in x)
    assert "rows in float32 (a bf16 step took 2.00x an fp32 one)" in line
    (metrics,) = (run_dir / "decode").glob("*/metrics.json")
    products = json.loads(metrics.read_text())["search_products"]
    assert products and set(products.values()) == {"float32"}
