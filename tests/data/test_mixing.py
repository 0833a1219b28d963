"""Corpus mixing: each epoch draws from each corpus by weight; statistics, tokenizer and
batching over the mix; dev and test from one corpus; each corpus's share reported."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from speechforge import experiment, pipeline, recipe as recipe_mod
from speechforge.data.batching import BucketBatchSampler
from speechforge.data.mixing import WeightedDraw, apportion
from speechforge.recipe import RecipeError
from tests.conftest import REPO


def test_apportion_is_whole_numbers_in_proportion_summing_to_the_total():
    assert apportion(10, [1, 1]) == [5, 5]
    assert apportion(10, [3, 1]) == [8, 2]  # 7.5 / 2.5: the tie goes to one of them, the sum stays 10
    assert apportion(7, [1, 1, 1]) in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    for total in range(0, 50):
        counts = apportion(total, [0.2, 1.3, 4.0])
        assert sum(counts) == total
        assert all(abs(c - total * w / 5.5) < 1 for c, w in zip(counts, [0.2, 1.3, 4.0]))


def test_an_epoch_takes_each_corpus_share_repeating_a_small_corpus_and_sampling_a_large_one():
    groups = [0] * 100 + [1] * 10
    drawn = WeightedDraw(groups, [1.0, 1.0], 110)(random.Random(0))
    per_corpus = Counter(groups[i] for i in drawn)
    assert per_corpus == {0: 55, 1: 55}
    large = [i for i in drawn if groups[i] == 0]
    assert len(set(large)) == 55  # a subset, each once
    small = Counter(i for i in drawn if groups[i] == 1)
    assert sorted(set(small.values())) == [5, 6] and set(small) == set(range(100, 110))


def test_a_sampler_with_a_draw_batches_exactly_the_drawn_utterances_the_same_on_resume():
    lengths = [random.Random(i).randint(40, 120) for i in range(60)]
    draw = WeightedDraw([0] * 50 + [1] * 10, [1.0, 3.0], 40)
    sampler = BucketBatchSampler(lengths, 600, None, seed=3, draw=draw)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == sorted(draw(random.Random("draw/3/2")))
    assert Counter(i >= 50 for b in batches for i in b) == {True: 30, False: 10}
    resumed = BucketBatchSampler(lengths, 600, None, seed=3, draw=draw)
    resumed.resume_at(2, 3)
    assert list(resumed) == batches[3:]
    other = BucketBatchSampler(lengths, 600, None, seed=3, draw=draw)
    other.set_epoch(3)
    assert list(other) != batches  # a new epoch draws afresh


def _feature_corpus(root: Path, n: int, texts: list[str], offset: float, seed: int) -> Path:
    """An HW4P2-layout corpus of random features around ``offset``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train-clean-100", n), ("dev-clean", 2), ("test-clean", 2)):
        for sub in ("fbank", "text"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            frames = int(rng.integers(30, 60))
            np.save(root / split / "fbank" / f"{root.name}-{i}.npy",
                    (offset + rng.standard_normal((80, frames))).astype(np.float32))
            np.save(root / split / "text" / f"{root.name}-{i}.npy", np.array(list(texts[i % len(texts)])))
    return root


@pytest.fixture
def mix_recipe(tmp_path: Path) -> dict:
    real = _feature_corpus(tmp_path / "real", 12, ["ONE", "TWO"], 0.0, 0)
    extra = _feature_corpus(tmp_path / "extra", 4, ["ZERO"], 4.0, 1)
    raw = recipe_mod.read_toml(REPO / "recipes" / "char_tiny.toml")
    raw["data"] = {"name": "mix", "weights": [1.0, 3.0], "max_frames": 400, "dev": 1, "test": 0,
                   "corpora": [{"name": "hw4p2", "root": str(real)}, {"name": "hw4p2", "root": str(extra)}]}
    raw["trainer"].update(epochs=1, trackers=[], mixed_precision="no")
    raw["decode"]["max_len"] = 8
    return raw


def test_statistics_tokenizer_and_batches_cover_the_mix_and_eval_splits_come_from_one_corpus(mix_recipe, tmp_path):
    exp = experiment.build(recipe_mod.validate(mix_recipe), tmp_path / "run", log=lambda m: None)
    train = exp.corpus.split("train").utterances
    assert Counter(u.corpus for u in train) == {"hw4p2#0": 12, "hw4p2#1": 4}
    frames = np.concatenate([np.load(u.feats).T for u in train])
    np.testing.assert_allclose(exp.normalizer.state()["mean"], frames.mean(0), atol=1e-4)
    assert {"Z", "O", "N", "E", "T", "W"} <= set(exp.tokenizer.chars)  # ZERO only in the second
    assert {u.id.split("-")[0] for u in exp.corpus.split("dev").utterances} == {"extra"}
    assert {u.id.split("-")[0] for u in exp.corpus.split("test").utterances} == {"real"}
    loader, sampler = exp.loader("train", train=True, seed=0)
    drawn = Counter(train[i].corpus for b in sampler.batches() for i in b)
    assert drawn == {"hw4p2#0": 4, "hw4p2#1": 12}  # 16 an epoch, weighted 1:3


def test_a_mixed_run_reports_each_corpus_share_in_dataset_stats_and_the_log(mix_recipe, tmp_path):
    lines: list[str] = []
    pipeline.run(recipe_mod.validate(mix_recipe), tmp_path / "run", log=lines.append, progress=False)
    shares = json.loads((tmp_path / "run" / "dataset_stats.json").read_text())["train"]["corpora"]
    assert shares["hw4p2#0"]["utterances"] == 12 and shares["hw4p2#1"]["utterances"] == 4
    assert shares["hw4p2#0"]["share"] == 0.25 and shares["hw4p2#1"]["share"] == 0.75
    assert shares["hw4p2#0"]["epoch_utterances"] == 4 and shares["hw4p2#1"]["weight"] == 3.0
    assert any(line.startswith("data.train.corpora hw4p2#1: 4 utterances") and "75.0% of its utterances" in line
               for line in lines), lines


def test_without_weights_a_mix_is_a_plain_concatenation(mix_recipe, tmp_path):
    del mix_recipe["data"]["weights"]
    exp = experiment.build(recipe_mod.validate(mix_recipe), tmp_path / "run", log=lambda m: None)
    _, sampler = exp.loader("train", train=True)
    assert sorted(i for b in sampler.batches() for i in b) == list(range(16))


@pytest.mark.parametrize("change, where, says", [
    ({"weights": [1.0]}, "data.weights", "one weight per corpus (2), got 1"),
    ({"dev": 2}, "data.dev", "index of one of the 2 corpora"),
    ({"corpora.1.max_frames": 100}, "data.corpora[1].max_frames", "set data.max_frames instead"),
    ({"corpora.0.augment": [{"name": "specaugment"}]}, "data.corpora[0].augment", "put it in data.augment"),
    ({"weights": [1.0, 0.0]}, "data.weights[1]", "greater than 0"),
])
def test_a_bad_mix_is_refused_naming_the_key(mix_recipe, change, where, says):
    for key, value in change.items():
        recipe_mod.apply_overrides(mix_recipe, [f"data.{key}={json.dumps(value) if not isinstance(value, list) else _toml(value)}"])
    with pytest.raises(RecipeError) as err:
        recipe_mod.validate(mix_recipe).data.build()
    assert any(path == where and says in reason for path, reason in err.value.problems), err.value.problems


def _toml(value: list) -> str:
    if value and isinstance(value[0], dict):
        return "[" + ", ".join("{" + ", ".join(f'{k} = "{v}"' for k, v in d.items()) + "}" for d in value) + "]"
    return json.dumps(value)


def test_set_reaches_into_an_array_of_tables_by_index(mix_recipe):
    recipe_mod.apply_overrides(mix_recipe, ['data.corpora.1.root="elsewhere"'])
    assert mix_recipe["data"]["corpora"][1]["root"] == "elsewhere"
    with pytest.raises(RecipeError, match=r"a list of 2: expected an index 0-1, got \"5\""):
        recipe_mod.apply_overrides(mix_recipe, ['data.corpora.5.root="x"'])


def test_a_mix_takes_normalization_options_its_corpora_leave_at_their_defaults(mix_recipe, tmp_path):
    mix_recipe["data"]["normalization"] = {"name": "global_mvn", "cepstral_order": 20}
    # the corpora's own default normalization, filled in by validation, does not count as set
    exp = experiment.build(recipe_mod.validate(mix_recipe), tmp_path / "run", log=lambda m: None)
    assert exp.normalizer.state()["cepstral_order"] == 20
