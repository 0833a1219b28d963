"""benchmarks/speaker_independent.py: each fold points a recipe's real speech at that fold's
manifests, whether the recipe reads FSDD alone or mixes it with synthetic voices."""

from __future__ import annotations

import importlib.util
import json

import pytest

from speechforge import recipe as recipe_mod
from tests.conftest import FSDD, REPO

RECIPES = sorted((REPO / "recipes" / "speaker_independent").glob("*.toml"))


def _benchmark():
    spec = importlib.util.spec_from_file_location("speaker_independent", REPO / "benchmarks" / "speaker_independent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_a_fold_points_every_recipes_real_corpus_at_its_manifests(path, tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    recipe = _benchmark().fold_recipe(path, tmp_path, tmp_path / "features", ["trainer.epochs=1"])
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
    recipe = recipe_mod.load(REPO / "recipes" / "fsdd_digits.toml")
    assert recipe.data.name == "mix" and counts == {"train": 2000, "dev": 250, "test": 250}
    assert json.loads((tmp_path / "data" / "fsdd" / "dev.jsonl").read_text().splitlines()[0])["text"] == "ZERO"
