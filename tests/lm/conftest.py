"""Tiny text files and one tiny trained LM run, shared by the LM tests."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

import torch

from lm_fixtures import sentences, tiny_recipe


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: with two threads on a busy machine, thread hand-off
    costs more than the arithmetic (measured 40x slower). Restored after each test."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def text_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("text")
    files = {}
    for role, n, seed in (("train", 40, 0), ("val", 6, 1), ("test", 6, 2)):
        files[role] = folder / f"{role}.txt"
        files[role].write_text("\n".join(sentences(n, seed)) + "\n")
    return files


@pytest.fixture(scope="session")
def lm_run(text_files, tmp_path_factory) -> tuple[Path, dict]:
    """A two-epoch character LM on the tiny text (a few seconds)."""
    from speechforge.lm.pipeline import run

    run_dir = tmp_path_factory.mktemp("lm") / "run"
    with torch_threads(1):  # session fixtures start before the per-test one_thread
        summary = run(tiny_recipe(text_files), run_dir, log=lambda msg: None)
    return run_dir, summary
