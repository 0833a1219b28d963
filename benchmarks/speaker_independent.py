"""Leave-one-speaker-out on the shared FSDD digits: how well a recipe does on a voice it never heard.

For each recipe and each of the five speakers: train on the other four (their takes 0, 10, 20,
... as dev), test on every take of the fifth, and print the test WER per speaker and the mean.
A recipe's real speech is its ``jsonl`` corpus (``[data]`` itself, or an entry of a mix's
``[[data.corpora]]``): its ``root`` is pointed at each fold's manifests; every other corpus of
a mix (the synthetic voices) is used as the recipe says.

    python benchmarks/speaker_independent.py recipes/speaker_independent/real.toml [more recipes]
    python benchmarks/speaker_independent.py RECIPE --speakers theo --set trainer.epochs=2   # a quick look
    python benchmarks/speaker_independent.py RECIPE --pretrain PRETRAIN_RECIPE

``--pretrain`` trains a recipe that hears none of the real speakers (the synthetic voices) once,
before the folds, and starts every fold's model from it (``init.asr_run``); its time counts in
each recipe's wall time. A finished pretraining of the same recipe in <work>/pretrain is reused.

Results go to <work>/results.jsonl (one line a fold) and the table to stdout; runs to
<work>/<recipe>/<speaker>/, features of the recordings to <work>/features (computed once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from speechforge import pipeline, recipe as recipe_mod  # noqa: E402
from speechforge.data import fsdd  # noqa: E402

DEFAULT_RECORDINGS = REPO.parent / "shared" / "data" / "fsdd" / "recordings"


def real_corpora(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe's jsonl sections: the real speech the folds replace."""
    data = raw.get("data", {})
    sections = data.get("corpora", []) if data.get("name") == "mix" else [data]
    found = [s for s in sections if isinstance(s, dict) and s.get("name") == "jsonl"]
    if not found:
        raise SystemExit("the recipe has no jsonl corpus (in [data] or [[data.corpora]]) to hold the real speech")
    return found


def fold_recipe(path: Path, manifests: Path, features: Path, overrides: list[str]) -> recipe_mod.Recipe:
    raw = recipe_mod.read_toml(path)
    for section in real_corpora(raw):
        section["root"] = str(manifests)
        section["cache_dir"] = str(features)
    recipe_mod.apply_overrides(raw, overrides)
    return recipe_mod.validate(raw)


def run_fold(path: Path, speaker: str, args) -> dict[str, Any]:
    manifests = args.work / "manifests" / speaker
    fsdd.write_manifests(args.recordings, manifests, [speaker])
    recipe = fold_recipe(path, manifests, args.work / "features", args.init + args.overrides)
    run_dir = args.work / path.stem / speaker
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resumed one
    started = time.perf_counter()
    summary = pipeline.run(recipe, run_dir, log=(print if args.verbose else lambda msg: None), progress=False)
    test = summary["decode"]["test"]
    return {"recipe": str(path), "speaker": speaker, "wer": test["wer"], "cer": test["cer"],
            "utterances": test["utterances"], "steps": summary["step"], "seconds": round(time.perf_counter() - started, 1),
            "overrides": args.init + args.overrides}


def pretrain(path: Path, args) -> tuple[Path, float]:
    """Train the recipe into <work>/pretrain/<name> (or reuse a finished run of the same
    recipe there); its run directory and the seconds it took."""
    recipe = recipe_mod.load(path, args.overrides_pretrain)
    run_dir = args.work / "pretrain" / path.stem
    summary = run_dir / "summary.json"
    # the whole recipe must match, not only what a resumed run checks: other data or epochs make another model
    if summary.exists() and recipe_mod.validate(recipe_mod.read_toml(run_dir / "recipe.toml")).to_dict() == recipe.to_dict():
        seconds = json.loads(summary.read_text())["seconds"]
        print(f"pretraining {path.stem}: reusing {run_dir} ({seconds:.0f} s when it was trained)", flush=True)
        return run_dir, seconds
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    result = pipeline.run(recipe, run_dir, log=(print if args.verbose else lambda msg: None), progress=False)
    seconds = time.perf_counter() - started
    print(f"pretraining {path.stem}: {result['step']} steps, {seconds:.0f} s, synthetic dev CER "
          f"{result['decode']['dev']['cer']:.3f}", flush=True)
    return run_dir, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", type=Path, nargs="+")
    ap.add_argument("--speakers", nargs="+", help="held-out speakers (default: all five)")
    ap.add_argument("--recordings", type=Path, default=DEFAULT_RECORDINGS)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "speaker_independent")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override every recipe's value, as speechforge run --set does")
    ap.add_argument("--pretrain", type=Path, metavar="RECIPE",
                    help="train this recipe once, before the folds, and start every fold from it (init.asr_run)")
    ap.add_argument("--set-pretrain", dest="overrides_pretrain", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override the pretraining recipe's value")
    ap.add_argument("--verbose", action="store_true", help="print each run's log")
    args = ap.parse_args(argv)
    args.recipes = [path.resolve() for path in args.recipes]
    if args.pretrain is not None:
        args.pretrain = args.pretrain.resolve()
    args.recordings, args.work = args.recordings.resolve(), args.work.resolve()
    os.chdir(REPO)  # a recipe's relative paths (data/synth_digits) mean what they mean to speechforge run
    if not args.recordings.is_dir():
        raise SystemExit(f"no FSDD recordings at {args.recordings} (shared/data/fsdd/recordings)")
    speakers = args.speakers or fsdd.speakers(args.recordings)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    pretrain_seconds, args.init = 0.0, []
    if args.pretrain is not None:
        pretrained, pretrain_seconds = pretrain(args.pretrain, args)
        args.init = [f"init.asr_run={pretrained}"]

    table = []
    for path in args.recipes:
        started = time.perf_counter() - pretrain_seconds  # the pretraining is part of every recipe's time
        rows = []
        for speaker in speakers:
            row = run_fold(path, speaker, args)
            rows.append(row)
            with open(args.work / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{path.stem} held out {speaker}: WER {row['wer']:.3f} CER {row['cer']:.3f} "
                  f"({row['steps']} steps, {row['seconds']:.0f} s)", flush=True)
        name = [path.stem, *([f"pretrained: {args.pretrain.stem}"] if args.pretrain else []), *args.overrides]
        table.append((" ".join(name), rows, time.perf_counter() - started))

    print()
    print("| recipe | " + " | ".join(speakers) + " | mean WER | wall time |")
    print("|---" * (len(speakers) + 3) + "|")
    for name, rows, seconds in table:
        wers = [r["wer"] for r in rows]
        print(f"| {name} | " + " | ".join(f"{w:.3f}" for w in wers)
              + f" | **{statistics.mean(wers):.3f}** | {seconds / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
