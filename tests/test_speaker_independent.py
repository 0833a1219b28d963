"""benchmarks/speaker_independent.py: each fold points a recipe's real speech at that fold's
manifests, whether the recipe reads FSDD alone or mixes it with synthetic voices."""

from __future__ import annotations

import importlib.util
import json

import pytest

from speechforge import recipe as recipe_mod
from tests.conftest import FSDD, REPO

# the fold recipes; pretrain_synth.toml hears no FSDD speaker (benchmark --pretrain trains it)
RECIPES = sorted(p for p in (REPO / "recipes" / "speaker_independent").glob("*.toml") if p.stem != "pretrain_synth")


def _script(name: str):
    """A script of benchmarks/ as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _benchmark():
    return _script("speaker_independent")


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_a_fold_points_every_recipes_real_corpus_at_its_manifests(path, tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    overrides = ["trainer.epochs=1"]
    if "init" in recipe_mod.read_toml(path):  # the pretrained run --pretrain would make
        (tmp_path / "pre").mkdir()
        (tmp_path / "pre" / "recipe.toml").write_text("")
        overrides.append(f"init.asr_run={tmp_path / 'pre'}")
    recipe = _benchmark().fold_recipe(path, tmp_path, tmp_path / "features", overrides)
    data = recipe.data
    real = [c for c in data.args["corpora"] if c.name == "jsonl"] if data.name == "mix" else [data]
    assert len(real) == 1
    assert real[0].args["root"] == str(tmp_path) and real[0].args["cache_dir"] == str(tmp_path / "features")
    assert recipe.trainer.args["epochs"] == 1


def test_the_digit_recipe_validates_as_a_user_gets_it(tmp_path, monkeypatch):
    if not FSDD.is_dir():
        pytest.skip(f"the shared FSDD recordings are absent (expected {FSDD})")
    from speechforge.data.fsdd import write_manifests

    monkeypatch.chdir(tmp_path)
    counts = write_manifests(FSDD, tmp_path / "data" / "fsdd")
    with pytest.raises(recipe_mod.RecipeError, match="init.asr_run.*train it with speechforge run first"):
        recipe_mod.load(REPO / "recipes" / "fsdd_digits.toml")  # before the pretraining the README runs first
    (tmp_path / "runs" / "pretrain_synth").mkdir(parents=True)
    (tmp_path / "runs" / "pretrain_synth" / "recipe.toml").write_text("")
    recipe = recipe_mod.load(REPO / "recipes" / "fsdd_digits.toml")
    assert recipe.data.name == "mix" and counts == {"train": 2000, "dev": 250, "test": 250}
    assert json.loads((tmp_path / "data" / "fsdd" / "dev.jsonl").read_text().splitlines()[0])["text"] == "ZERO"


def test_a_finished_pretraining_of_the_same_recipe_is_reused_and_its_time_counted(tmp_path, capsys):
    from types import SimpleNamespace

    recipe_path = REPO / "recipes" / "speaker_independent" / "pretrain_synth.toml"
    args = SimpleNamespace(work=tmp_path, overrides_pretrain=[], verbose=False)
    run_dir = tmp_path / "pretrain" / "pretrain_synth"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.toml").write_text(recipe_mod.dumps(recipe_mod.load(recipe_path).to_dict()))  # as a run saves it
    (run_dir / "summary.json").write_text(json.dumps({"seconds": 251.5}))
    assert _benchmark().pretrain(recipe_path, args) == (run_dir, 251.5)
    assert "reusing" in capsys.readouterr().out


def test_a_pretraining_made_with_other_settings_is_trained_again(tmp_path, monkeypatch):
    from types import SimpleNamespace

    recipe_path = REPO / "recipes" / "speaker_independent" / "pretrain_synth.toml"
    run_dir = tmp_path / "pretrain" / "pretrain_synth"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.toml").write_text(recipe_mod.dumps(recipe_mod.load(recipe_path, ["trainer.epochs=2"]).to_dict()))
    (run_dir / "summary.json").write_text(json.dumps({"seconds": 99.0}))
    benchmark = _benchmark()
    trained = []
    monkeypatch.setattr(benchmark.pipeline, "run", lambda recipe, run_dir, **kw: trained.append(recipe) or
                        {"step": 1, "decode": {"dev": {"cer": 0.5}}})
    benchmark.pretrain(recipe_path, SimpleNamespace(work=tmp_path, overrides_pretrain=[], verbose=False))
    assert len(trained) == 1 and trained[0].trainer.args["epochs"] == 5


def _vote_module():
    return _script("speaker_vote")


def _take(utt, hyp, score, ref="SIX"):
    return {"id": utt, "ref": ref, "hyp": hyp, "nbest": [{"text": hyp, "score": score}]}


def test_a_vote_takes_the_word_most_runs_gave_and_breaks_ties_by_summed_score():
    vote = _vote_module().vote
    runs = [[_take("a", "SIX", -0.1), _take("b", "SEVEN", -0.2)],
            [_take("a", "SEVEN", -0.1), _take("b", "SIX", -0.9)],
            [_take("a", "SIX", -0.5)]]
    assert [r["hyp"] for r in vote([runs[0][:1], runs[1][:1], runs[2]])] == ["SIX"]  # two runs to one
    # one run each: SEVEN's -0.2 beats SIX's -0.9
    assert vote([runs[0][1:], runs[1][1:]]) == [{"id": "b", "ref": "SIX", "hyp": "SEVEN"}]


def test_a_vote_refuses_runs_that_decoded_different_takes():
    vote = _vote_module().vote
    with pytest.raises(SystemExit, match="different takes"):
        vote([[_take("a", "SIX", 0.0)], [_take("b", "SIX", 0.0)]])


def test_the_vote_script_reads_each_speakers_decoded_takes(tmp_path, capsys):
    module = _vote_module()
    folders = []
    for n, hyps in enumerate([["SIX", "SIX"], ["SIX", "SEVEN"], ["EIGHT", "SEVEN"]]):
        run = tmp_path / f"seed{n}" / "theo" / "decode" / module.DEFAULT_TAG
        run.mkdir(parents=True)
        lines = [_take(f"theo-6-0{i}", hyp, -0.1) for i, hyp in enumerate(hyps)]
        (run / "test.hyps.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        folders.append(str(tmp_path / f"seed{n}"))
    assert module.main(folders) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[-1] == "| vote of 3 | 0.500 | **0.500** |"  # SIX wins take 0, SEVEN take 1
    assert rows[2].endswith("| 0.000 | **0.000** |") and rows[4].endswith("| 1.000 | **1.000** |")
