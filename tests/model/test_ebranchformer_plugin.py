"""The E-Branchformer plugin package: found through its entry point, padding-safe, and a
whole run with it trains and decodes."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from speechforge import registry
from speechforge.cli import main
from speechforge.recipe import validate_component

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("speechforge_ebranchformer") is None,
    reason="the example layer plugin is not installed (pip install -e plugins/speechforge-ebranchformer)",
)


def build(train: bool = False):
    section = {
        "name": "transformer_ctc", "d_model": 32, "dropout": 0.0,
        "embedding": {"name": "conv2d", "time_reduction": 4, "channels": 8, "positions": "none"},
        "encoder": {"name": "e_branchformer", "num_layers": 2, "num_heads": 4, "d_ff": 64, "cgmlp_units": 64,
                    "cgmlp_kernel": 7, "merge_kernel": 3, "dropout": 0.0},
        "decoder": {"num_layers": 1, "num_heads": 4, "d_ff": 64, "dropout": 0.0},
    }
    torch.manual_seed(0)
    return validate_component("models", section, "model").build(vocab_size=11, input_dim=20).train(train)


def test_the_registry_lists_the_layer_with_the_package_that_provides_it(capsys):
    providers = {name: dist for name, _, dist in registry.describe("encoder_layers")}
    assert providers["e_branchformer"] == "speechforge-ebranchformer"
    assert providers["conformer"] == providers["prenorm"] == "speechforge"
    assert main(["registry", "encoder_layers"]) == 0
    assert "[speechforge-ebranchformer]" in capsys.readouterr().out


@pytest.mark.parametrize("train", [False, True])
def test_noise_in_the_padding_does_not_reach_real_frames(train):
    torch.manual_seed(1)
    feats, lens = torch.randn(2, 120, 20), torch.tensor([120, 70])
    noisy = feats.clone()
    feats[1, 70:] = 0.0
    noisy[1, 70:] = 50.0 * torch.randn(50, 20)
    a, enc_lens = build(train).encode(feats, lens)
    b, _ = build(train).encode(noisy, lens)
    n = int(enc_lens[1])
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a[1, :n], b[1, :n], atol=1e-5, rtol=1e-4)


def test_a_run_with_the_plugin_encoder_trains_and_decodes(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    code = main(["--quiet", "run", str(tiny_recipe), "--run-dir", str(run_dir),
                 "--set", "model.encoder.name=e_branchformer", "--set", "model.encoder.cgmlp_kernel=5",
                 "--set", "model.encoder.merge_kernel=3", "--set", "model.embedding.positions=none",
                 "--set", "trainer.max_steps=3", "--set", "trainer.epochs=1", "--set", "trainer.log_every_steps=1",
                 "--set", "decode.name=beam", "--set", "decode.beam_size=2", "--set", "decode.ctc_weight=0.3"])
    assert code == 0
    recipe = (run_dir / "recipe.toml").read_text()
    assert 'name = "e_branchformer"' in recipe
    losses = [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(losses) >= 2 and losses[-1] < losses[0]  # it learns
    (folder,) = (run_dir / "decode").iterdir()
    assert len((folder / "dev.hyps.jsonl").read_text().splitlines()) == 2
