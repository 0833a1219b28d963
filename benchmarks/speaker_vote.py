"""A majority vote over several leave-one-speaker-out runs: what an ensemble of them would score.

Each folder is one recipe's runs from benchmarks/speaker_independent.py (<work>/<recipe>, holding
a run per held-out speaker); every folder's runs must have decoded the same takes with the same
decoder (``--tag``, a folder under each run's decode/). For each take, the transcript most runs
chose wins; a tie goes to the transcript whose runs' scores sum highest.

    python benchmarks/speaker_vote.py runs/si_final/mix_channel runs/si_ch_s1/mix_channel runs/si_ch_s2/mix_channel

Prints each held-out speaker's WER and the mean, for each run alone and for the vote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

DEFAULT_TAG = "greedy-max_len12-max_len_ratio4.0-fp32"


def read_hypotheses(run: Path, tag: str) -> list[dict]:
    path = run / "decode" / tag / "test.hyps.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (decode the run with that decoder, or pass --tag)")
    return [json.loads(line) for line in path.read_text().splitlines()]


def vote(runs: list[list[dict]]) -> list[dict]:
    """One record per take (id, ref, hyp): the hypothesis most runs gave, ties to the highest summed score."""
    ids = [r["id"] for r in runs[0]]
    for other in runs[1:]:
        if [r["id"] for r in other] != ids:
            raise SystemExit("the runs decoded different takes: vote over runs of the same folds")
    out = []
    for takes in zip(*runs):
        counts = Counter(t["hyp"] for t in takes)
        scores: dict[str, float] = defaultdict(float)
        for t in takes:
            scores[t["hyp"]] += t["nbest"][0]["score"]
        best = max(counts, key=lambda hyp: (counts[hyp], scores[hyp]))
        out.append({"id": takes[0]["id"], "ref": takes[0]["ref"], "hyp": best})
    return out


def word_error_rate(records: list[dict]) -> float:
    from speechforge.metrics import wer

    return wer([r["ref"] for r in records], [r["hyp"] for r in records])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+", help="<work>/<recipe> folders of speaker_independent.py")
    ap.add_argument("--tag", default=DEFAULT_TAG, help=f"the decode folder to read (default {DEFAULT_TAG})")
    args = ap.parse_args(argv)
    speakers = sorted(p.name for p in args.folders[0].iterdir() if (p / "decode").is_dir())
    if not speakers:
        raise SystemExit(f"{args.folders[0]}: no decoded runs")
    rows = {str(folder): [] for folder in args.folders}
    voted = []
    for speaker in speakers:
        runs = [read_hypotheses(folder / speaker, args.tag) for folder in args.folders]
        for folder, records in zip(args.folders, runs):
            rows[str(folder)].append(word_error_rate(records))
        voted.append(word_error_rate(vote(runs)))
    rows[f"vote of {len(args.folders)}"] = voted
    print("| runs | " + " | ".join(speakers) + " | mean WER |")
    print("|---" * (len(speakers) + 2) + "|")
    for name, wers in rows.items():
        print(f"| {name} | " + " | ".join(f"{w:.3f}" for w in wers) + f" | **{statistics.mean(wers):.3f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
