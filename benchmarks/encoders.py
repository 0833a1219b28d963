"""Transformer, Conformer and E-Branchformer encoders side by side at equal wall time.

    python benchmarks/encoders.py                 # about 20 minutes on 2 idle cores
    python benchmarks/encoders.py --seeds 0,1     # each model once per seed, CERs averaged
    python benchmarks/encoders.py --quick         # smoke test: a few steps each

Each model is the quickstart's (recipes/quickstart.toml, a Conformer; quickstart_transformer.toml,
quickstart_e_branchformer.toml: the same corpus, d_model, layers, feed-forward and training
settings; only the encoder layer differs, as tests/test_recipe.py checks). Equal wall time is
the quickstart's budget:

1. calibration: each model trains ``--calibrate`` steps and its training frames/s is read
   from its log (the models see the same batches, so frames/s is steps/s up to a constant);
2. the quickstart trains its whole schedule; each other model trains
   ``steps x its frames/s / the quickstart's``, so that its training takes the same time,
   its schedule compressed to fit, warm-up included (``trainer.max_steps`` and
   ``scheduler.warmup_steps`` scaled alike: a fixed warm-up would leave a slower model
   almost no steps at the peak learning rate);
3. each run is decoded on dev greedily (by the run itself) and with beam 10 + CTC 0.3;
   with several ``--seeds`` the step counts stay those of the calibration and the table gives
   each CER's mean over seeds, then the seeds' own.

The table (Markdown) comes last; ``--json`` writes it too. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speechforge import precision  # noqa: E402
from speechforge.recipe import read_toml  # noqa: E402
from speechforge.report import run_parameters  # noqa: E402

MODELS = {  # the first is the one whose whole schedule sets the time
    "Conformer (the quickstart)": "recipes/quickstart.toml",
    "Transformer (prenorm)": "recipes/quickstart_transformer.toml",
    "E-Branchformer (plugin)": "recipes/quickstart_e_branchformer.toml",
}
BEAM = ["--set", "decode.name=beam", "--set", "decode.beam_size=10", "--set", "decode.ctc_weight=0.3"]


def speechforge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "speechforge", "--quiet", *args], check=True, cwd=ROOT)


def log_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def calibrate(recipe: str, run_dir: Path, steps: int) -> float:
    """Training frames/s over ``steps`` steps, the first tenth (warm-up) left out."""
    speechforge("run", recipe, "--run-dir", str(run_dir), "--set", f"trainer.max_steps={steps}",
                "--set", f"trainer.log_every_steps={max(1, steps // 10)}")
    rates = [line["frames_per_s"] for line in log_lines(run_dir) if "loss" in line and "frames_per_s" in line]
    return sum(rates[1:]) / max(1, len(rates) - 1) if len(rates) > 1 else rates[0]


def train_and_decode(recipe: str, run_dir: Path, seed: int, steps: int | None, warmup: int | None = None) -> dict:
    extra = ["--set", f"seed={seed}"] + ([] if steps is None else ["--set", f"trainer.max_steps={steps}"])
    if warmup is not None:
        extra += ["--set", f"scheduler.warmup_steps={warmup}"]
    speechforge("run", recipe, "--run-dir", str(run_dir), *extra)
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = log_lines(run_dir)
    epochs = [line for line in lines if "train_loss" in line]
    speechforge("decode", str(run_dir), "--split", "dev", *BEAM)
    beam = json.loads(next((run_dir / "decode").glob("beam-*ctc_weight0.3*/metrics.json")).read_text())
    return {
        "parameters": run_parameters(run_dir),
        "steps": summary["step"],
        "train_seconds": round(sum(e["seconds"] for e in epochs), 1),
        "frames_per_s": round(sum(e["frames_per_s"] * e["seconds"] for e in epochs) / sum(e["seconds"] for e in epochs)),
        "greedy_cer": summary["decode"]["dev"]["cer"],
        "beam_ctc_cer": beam["dev"]["cer"],
        "wall_seconds": summary["seconds"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "encoders")
    parser.add_argument("--calibrate", type=int, default=100, help="steps timed per model before the runs")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 calibration steps, 6-step runs")
    parser.add_argument("--seeds", default="0", help="comma-separated: every model trains once per seed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    flags = ", ".join(precision.cpu_bf16_flags()) or "no bf16 flags"
    print(f"CPU: {flags}", flush=True)
    rates = {name: calibrate(recipe, args.out / f"calibrate-{i}", 4 if args.quick else args.calibrate)
             for i, (name, recipe) in enumerate(MODELS.items())}
    base = next(iter(MODELS))
    base_warmup = read_toml(ROOT / MODELS[base])["scheduler"]["warmup_steps"]
    seeds = [int(x) for x in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {name: [] for name in MODELS}
    for seed in seeds:
        full = None
        for i, (name, recipe) in enumerate(MODELS.items()):
            share = rates[name] / rates[base]
            if name == base:
                steps, warmup = (6 if args.quick else None), None
            else:
                steps, warmup = max(1, round(full * share)), max(1, round(base_warmup * share))
            runs[name].append(train_and_decode(recipe, args.out / f"run-{i}-seed{seed}", seed, steps, warmup))
            if name == base:
                full = runs[name][-1]["steps"]
            print(name, f"seed {seed}", runs[name][-1], flush=True)
    print(f"\nCPU: {flags}; calibration frames/s: "
          + ", ".join(f"{n.split(' ')[0]} {r:.0f}" for n, r in rates.items()) + f"; seeds {args.seeds}")

    def cer(rs: list[dict], key: str) -> str:
        mean = f"{sum(r[key] for r in rs) / len(rs):.3f}"
        return mean if len(rs) == 1 else f"{mean} ({', '.join(f'{r[key]:.3f}' for r in rs)})"

    print("\n| encoder | parameters | frames/s | steps | training s | dev CER greedy | dev CER beam 10 + CTC 0.3 |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        r = rs[0]
        seconds = sum(x["train_seconds"] for x in rs) / len(rs)
        frames = round(sum(x["frames_per_s"] for x in rs) / len(rs))
        print(f"| {name} | {r['parameters'] / 1e6:.2f}M | {frames:,} | {r['steps']} | {seconds:.0f} "
              f"| {cer(rs, 'greedy_cer')} | {cer(rs, 'beam_ctc_cer')} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": flags, "calibration": rates, "seeds": seeds, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
