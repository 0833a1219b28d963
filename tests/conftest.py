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


@pytest.fixture
def tiny_recipe(tmp_path: Path, hw4p2_root: Path) -> Path:
    """The character recipe, shrunk to a model that trains in seconds."""
    text = (REPO / "recipes" / "char_tiny.toml").read_text().replace(
        'root = "../shared/data/hw4_data_subset/hw4p2_data"', f'root = "{hw4p2_root}"'
    )
    # eight utterances and short hypotheses: a whole run takes seconds
    text = text.replace("max_frames = 12000", "max_frames = 12000\nmax_utterances = 8")
    text = text.replace('[decode]\nname = "greedy"', '[decode]\nname = "greedy"\nmax_len = 40')
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path
