"""[init] asr_run: a run starts from another ASR run's weights and tokenizer (pretrain, then fine-tune)."""

from __future__ import annotations

import pytest
import torch

from speechforge import experiment, pipeline
from speechforge.cli import main
from speechforge.recipe import RecipeError, load


@pytest.fixture
def pretrained(tiny_recipe, tmp_path):
    run_dir = tmp_path / "pretrained"
    assert main(["--quiet", "run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", "trainer.max_steps=2"]) == 0
    return run_dir


def test_the_model_starts_from_every_tensor_of_the_run(tiny_recipe, pretrained, tmp_path):
    recipe = load(tiny_recipe, [f"init.asr_run={pretrained}", "seed=7"])
    exp = experiment.build(recipe, tmp_path / "finetune", log=lambda msg: None)
    lines = []
    pipeline.init_from_asr(exp.model, recipe.init.asr_run, lines.append)
    source = torch.load(pretrained / "best.pt", weights_only=True)["model"]
    for name, tensor in exp.model.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    assert lines and lines[0].startswith(f"init: {len(source)} tensors")


def test_the_tokenizer_is_the_runs_whatever_the_recipe_asks(tiny_recipe, pretrained, tmp_path):
    # an alphabet the pretrained run never had would change every output row's meaning
    recipe = load(tiny_recipe, [f"init.asr_run={pretrained}", "tokenizer.alphabet=\"ABC ' XYZQ\""])
    exp = experiment.build(recipe, tmp_path / "finetune", log=lambda msg: None)
    original = experiment.open_run(pretrained).tokenizer
    assert exp.tokenizer.vocab_size == original.vocab_size
    assert exp.tokenizer.encode("HELLO WORLD") == original.encode("HELLO WORLD")
    assert any("init.asr_run" in note for note in exp.notes)


def test_a_run_of_another_model_is_refused_with_the_key_and_nothing_copied(tiny_recipe, pretrained, tmp_path):
    recipe = load(tiny_recipe, [f"init.asr_run={pretrained}", "model.d_model=48"])
    exp = experiment.build(recipe, tmp_path / "finetune", log=lambda msg: None)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    with pytest.raises(RecipeError) as err:
        pipeline.init_from_asr(exp.model, recipe.init.asr_run, print)
    assert "init.asr_run" in str(err.value) and "this recipe builds" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in exp.model.state_dict().items())


def test_a_fine_tuning_run_trains_from_the_pretrained_weights(tiny_recipe, pretrained, tmp_path, capsys):
    run_dir = tmp_path / "finetune"
    assert main(["run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", f"init.asr_run={pretrained}",
                 "--set", "trainer.max_steps=1"]) == 0
    out = capsys.readouterr().out
    assert f"from {pretrained}" in out and "transferred tensors are unfrozen" not in out
    # one step at a small learning rate: close to the pretrained weights, not equal to them
    source = torch.load(pretrained / "best.pt", weights_only=True)["model"]
    tuned = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    name = "encoder.layers.0.ffn.0.weight"
    assert not torch.equal(source[name], tuned[name])
    assert (source[name] - tuned[name]).abs().max() < 0.1


@pytest.mark.parametrize("overrides, message", [
    (["init.asr_run={run}", "init.lm_run={run}"], "give one of asr_run"),
    (["init.asr_run={run}", "init.freeze_epochs=2"], "apply to lm_run"),
    (["init.asr_run={missing}"], "not a trained run directory"),
])
def test_bad_init_sections_fail_before_any_compute(tiny_recipe, pretrained, tmp_path, overrides, message):
    values = {"run": pretrained, "missing": tmp_path / "nowhere"}
    with pytest.raises(RecipeError) as err:
        load(tiny_recipe, [o.format(**values) for o in overrides])
    assert "init" in str(err.value) and message in str(err.value)


def test_a_fine_tuned_run_decodes_after_its_pretrained_run_is_gone(tiny_recipe, pretrained, tmp_path):
    import shutil

    run_dir = tmp_path / "finetune"
    assert main(["--quiet", "run", str(tiny_recipe), "--run-dir", str(run_dir), "--set", f"init.asr_run={pretrained}",
                 "--set", "trainer.max_steps=1"]) == 0
    shutil.rmtree(pretrained)
    run = experiment.open_run(run_dir)
    assert run.tokenizer.vocab_size == run.model.vocab_size
