"""Helpers of the LM tests: paths, tiny sentences, the tiny recipe."""

from __future__ import annotations

import random
from pathlib import Path

from speechforge import recipe as recipe_mod

REPO = Path(__file__).resolve().parents[2]
HW4P1 = REPO.parent / "shared" / "data" / "hw4_data_subset" / "hw4p1_data"

WORDS = ["THE", "CAT", "DOG", "SAT", "RAN", "ON", "A", "MAT", "HILL", "AND", "SLEPT", "HE", "SAID", "IT'S"]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))) for _ in range(n)]


def tiny_recipe(text_files: dict[str, Path], tokenizer: str = 'name = "char"', **sets: str):
    raw = recipe_mod.read_toml(REPO / "recipes" / "lm_char.toml")
    raw["data"] = {"name": "text_lines", **{k: str(v) for k, v in text_files.items()}, "batch_size": 8}
    overrides = [
        "model.d_model=32", "model.decoder.num_layers=2", "model.decoder.num_heads=2", "model.decoder.d_ff=64",
        "trainer.epochs=2", "scheduler.warmup_steps=2", "generate.max_tokens=20", "generate.prompts=[\"THE \", \"\"]",
    ] + [f"{k}={v}" for k, v in sets.items()]
    recipe_mod.apply_overrides(raw, overrides)
    raw["tokenizer"] = recipe_mod.tomllib.loads(tokenizer)
    return recipe_mod.validate(raw)
