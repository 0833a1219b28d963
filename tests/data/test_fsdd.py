"""FSDD manifests: the shared digit recordings split by speaker or by take."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from speechforge.data.errors import DataError
from speechforge.data.fsdd import WORDS, speakers, write_manifests
from tests.conftest import FSDD


@pytest.fixture
def fsdd():
    if not FSDD.is_dir():
        pytest.skip(f"the shared FSDD recordings are absent (expected {FSDD})")
    return FSDD


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_leaving_a_speaker_out_puts_all_their_takes_in_test_and_none_elsewhere(fsdd, tmp_path):
    assert speakers(fsdd) == ["george", "jackson", "nicolas", "theo", "yweweler"]
    assert write_manifests(fsdd, tmp_path, ["theo"]) == {"train": 1800, "dev": 200, "test": 500}
    split = {name: _read(tmp_path / f"{name}.jsonl") for name in ("train", "dev", "test")}
    assert {u["speaker"] for u in split["test"]} == {"theo"}
    assert "theo" not in {u["speaker"] for u in split["train"] + split["dev"]}
    assert Counter(u["text"] for u in split["dev"]) == {w: 20 for w in WORDS}  # 4 speakers x 5 takes
    for u in split["train"][:50]:
        digit = int(u["audio"].rsplit("/", 1)[1].split("_")[0])
        assert u["text"] == WORDS[digit]


def test_without_a_held_out_speaker_every_speaker_is_in_every_split(fsdd, tmp_path):
    assert write_manifests(fsdd, tmp_path) == {"train": 2000, "dev": 250, "test": 250}
    ids = {name: {u["id"] for u in _read(tmp_path / f"{name}.jsonl")} for name in ("train", "dev", "test")}
    assert not (ids["train"] & ids["dev"] or ids["train"] & ids["test"] or ids["dev"] & ids["test"])
    assert {i.split("-")[0] for i in ids["test"]} == set(speakers(fsdd))


def test_an_unknown_speaker_is_named(fsdd, tmp_path):
    with pytest.raises(DataError, match="no recordings of nobody; speakers there: george, jackson"):
        write_manifests(fsdd, tmp_path, ["nobody"])
