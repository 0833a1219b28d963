"""Checkpoints: written atomically, read back as data (``weights_only=True``), pruned."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP = re.compile(r"ckpt-(\d+)\.pt$")


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file and rename: a kill mid-write never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    # checkpoints may come from anyone: never unpickle code
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for p in directory.glob("ckpt-*.pt"):
        m = _STEP.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(directory: Path) -> Path | None:
    found = checkpoints(directory)
    return found[-1][1] if found else None


def prune(directory: Path, keep_last: int) -> None:
    for _, path in checkpoints(directory)[:-keep_last]:
        path.unlink(missing_ok=True)


def _score(path: Path) -> float:
    # "score" ranks by the run's trainer.select_by (lower is better); older runs ranked by dev CER
    state = load(path)
    return state.get("score", state["dev_cer"])


def keep_best(weights: dict[str, Any], directory: Path, keep: int) -> None:
    """Keep the model weights of the ``keep`` best validations (lowest score)."""
    save_atomic(weights, directory / f"step-{weights['step']:08d}.pt")
    scored = sorted((_score(p), p) for p in directory.glob("step-*.pt"))
    for _, path in scored[keep:]:
        path.unlink(missing_ok=True)


def best_checkpoints(directory: Path, n: int) -> list[Path]:
    return [p for _, p in sorted((_score(p), p) for p in directory.glob("step-*.pt"))[:n]]


def average_state_dicts(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = load(path)
        weights = state.get("model", state)
        for key, value in weights.items():
            if key not in total:
                total[key] = value.clone().double() if value.is_floating_point() else value.clone()
            elif value.is_floating_point():
                total[key] += value.double()
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}
