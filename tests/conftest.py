"""Shared fixtures: the real HW4P2 sample beside the checkout, and tiny recipes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One intra-op thread for the test process and the runs it starts: the models here are
# tiny, and on a busy 2-core machine two threads contend and can be 4-40x slower
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
HW4P2 = SHARED / "hw4_data_subset" / "hw4p2_data"
HW4P1 = SHARED / "hw4_data_subset" / "hw4p1_data"
FSDD = SHARED / "fsdd" / "recordings"


@pytest.fixture
def hw4p2_root() -> Path:
    if not HW4P2.is_dir():
        pytest.skip(f"the shared HW4P2 sample is absent (expected {HW4P2})")
    return HW4P2


def write_tiny_recipe(path: Path, root: Path, max_frames: int = 12000, max_len: int = 40) -> Path:
    """The character recipe on ``root``, shrunk to a run of seconds: eight utterances of
    each split and short hypotheses."""
    path.write_text((REPO / "recipes" / "char_tiny.toml").read_text()
                    .replace('root = "../shared/data/hw4_data_subset/hw4p2_data"', f'root = "{root}"')
                    .replace("max_frames = 12000", f"max_frames = {max_frames}\nmax_utterances = 8")
                    .replace('[decode]\nname = "greedy"', f'[decode]\nname = "greedy"\nmax_len = {max_len}'))
    return path


@pytest.fixture
def tiny_recipe(tmp_path: Path, hw4p2_root: Path) -> Path:
    """The character recipe, shrunk to a model that trains in seconds."""
    return write_tiny_recipe(tmp_path / "tiny.toml", hw4p2_root)
