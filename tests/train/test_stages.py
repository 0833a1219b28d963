"""Progressive training: stages grow the model, change regularisation and data, freeze."""

from __future__ import annotations

import json

import pytest
import torch

from speechforge.cli import main
from speechforge.recipe import RecipeError, StageSection, load, validate_component
from speechforge.train.stages import apply_stage, freeze, grow, set_dropout
from speechforge.train.losses import JointCTCAttention


def tiny_model():
    section = {"name": "transformer_ctc", "d_model": 16, "embedding": {"channels": 4},
               "encoder": {"num_layers": 3, "d_ff": 32}, "decoder": {"num_layers": 2, "d_ff": 32}}
    torch.manual_seed(0)
    return validate_component("models", section, "model").build(vocab_size=9, input_dim=20)


def test_growing_a_stack_copies_the_last_active_layer():
    model = tiny_model()
    stack = model.encoder
    stack.num_active = 1
    added = grow(stack, 3, copy_last=True)
    assert added == [1, 2] and stack.num_active == 3
    for i in (1, 2):
        for a, b in zip(stack.layers[0].parameters(), stack.layers[i].parameters()):
            assert torch.equal(a, b)


def test_fresh_growth_keeps_the_new_layers_own_weights():
    model = tiny_model()
    before = [p.clone() for p in model.encoder.layers[2].parameters()]
    model.encoder.num_active = 1
    grow(model.encoder, 3, copy_last=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder.layers[2].parameters()))


def test_inactive_layers_do_not_change_the_output():
    model = tiny_model().eval()
    feats, lens, tokens = torch.randn(1, 40, 20), torch.tensor([40]), torch.tensor([[2, 5, 6]])
    model.encoder.num_active = 1
    a = model(feats, lens, tokens)["logits"]
    with torch.no_grad():
        for p in model.encoder.layers[2].parameters():
            p.add_(1.0)
    torch.testing.assert_close(model(feats, lens, tokens)["logits"], a)


def test_freeze_by_pattern_and_name_counts_values():
    model = tiny_model()
    n_embed = sum(p.numel() for p in model.embedding.parameters())
    frozen = freeze(model, [r"^embedding\."], {"decoder.out.bias"})
    assert frozen == n_embed + 9
    assert not model.decoder.out.bias.requires_grad and model.encoder.layers[0].norm1.weight.requires_grad


def test_stage_sets_dropout_label_smoothing_and_specaugment():
    model = tiny_model()
    loss = JointCTCAttention(0.3, 0.1)
    on = [True]
    stage = StageSection(epochs=1, encoder_layers=2, decoder_layers=1, dropout=0.0, label_smoothing=0.0,
                         specaugment=False, freeze_earlier=True)
    model.encoder.num_active, model.decoder.stack.num_active = 1, 1
    info = apply_stage(model, stage, loss, on, set())
    assert (info["encoder_layers"], info["decoder_layers"]) == (2, 1) and info["new_encoder_layers"] == [1]
    assert loss.label_smoothing == 0.0 and on == [False]
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    # the layer that was active before the stage is frozen, the new one trains
    assert not model.encoder.layers[0].ffn[0].weight.requires_grad
    assert model.encoder.layers[1].ffn[0].weight.requires_grad
    set_dropout(model, 0.2)
    assert model.encoder.layers[0].self_attn.dropout == 0.2


def test_a_stage_needs_exactly_one_length(tiny_recipe, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(tiny_recipe.read_text() + "\n[[stages]]\nencoder_layers = 1\n")
    with pytest.raises(RecipeError) as e:
        load(path)
    assert str(e.value).startswith("stages[0]: give a stage its length as either epochs or steps")


PROGRESSIVE = """
[[stages]]
name = "shallow"
epochs = 1
encoder_layers = 1
data_fraction = 0.5
specaugment = false

[[stages]]
name = "deeper"
steps = 2
encoder_layers = 2
freeze_earlier = true
max_seconds = 14.0

[[stages]]
name = "all"
epochs = 1
dropout = 0.0
"""


def test_three_stage_run_logs_each_transition(tiny_recipe, tmp_path, capsys):
    path = tmp_path / "progressive.toml"
    path.write_text(tiny_recipe.read_text() + PROGRESSIVE)
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "stage 1/3 (shallow) from epoch 1, step 0: 1 encoder / 1 decoder layers active" in out
    assert "stage 2/3 (deeper)" in out and "new [1]/[]" in out
    assert "stage 3/3 (all)" in out and ", 0 parameters frozen" in out.split("stage 3/3")[1]
    starts = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if "stage_start" in l]
    assert [s["stage_start"] for s in starts] == [1, 2, 3]
    assert starts[1]["frozen_parameters"] > 0
    assert starts[1]["step"] + 2 == starts[2]["step"]  # the second stage lasted 2 steps


def test_asr_decoder_starts_from_an_lm_frozen_then_unfrozen(tiny_recipe, tmp_path, capsys):
    from tests.conftest import HW4P1, REPO

    if not HW4P1.is_dir():
        pytest.skip(f"the shared HW4P1 text is absent (expected {HW4P1})")
    lm_recipe = tmp_path / "lm.toml"
    lm_recipe.write_text((REPO / "recipes" / "lm_char.toml").read_text()
                         .replace('root = "../shared/data/hw4_data_subset/hw4p1_data"', f'root = "{HW4P1}"'))
    lm_dir = tmp_path / "lm"
    assert main(["--quiet", "run", str(lm_recipe), "--run-dir", str(lm_dir), "--set", "trainer.max_steps=2",
                 "--set", "model.decoder.num_layers=1"]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "asr"
    code = main(["run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "tokenizer.name=lm_run",
                 "--set", f"tokenizer.run_dir={lm_dir}", "--set", f"init.lm_run={lm_dir}",
                 "--set", "init.freeze_epochs=1", "--set", "trainer.epochs=2"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((run_dir / "transfer.json").read_text())
    assert "decoder.embed.weight" in report["transferred"]
    assert all("cross_attn" in n or "norm2" in n for n in report["fresh"])
    assert f"init: {report['frozen_parameters']:,} parameters frozen for the first 1 epoch(s)" in out
    assert "init: epoch 2: the" in out and "transferred tensors are unfrozen" in out
    # the LM's weights moved only once unfrozen, and then at a tenth of the learning rate
    lm = torch.load(lm_dir / "best.pt", weights_only=True)["model"]
    asr = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    assert not torch.equal(lm["decoder.stack.layers.0.ffn.0.weight"], asr["decoder.stack.layers.0.ffn.0.weight"])
