"""`speechforge check`'s memory estimate against the peak a real training step reaches.

    python benchmarks/memory_estimate.py                      # char_tiny and the quickstart, fp32 and bf16
    python benchmarks/memory_estimate.py --recipes recipes/char_tiny.toml --precisions no
    python benchmarks/memory_estimate.py --recipes recipes/quickstart.toml --set data.max_frames=16000

Each recipe and precision runs in a fresh process: the recipe's training split is cut to its
heaviest batch (the batch the estimate is for, `speechforge.train.memory.heaviest_batch`), and
the real trainer (`AccelerateTrainer.fit`: Accelerate's autocast, backward, gradient clipping,
fused AdamW) trains on it for --steps steps under torch.profiler's memory tracking. The measured
peak is the model's parameters and buffers, alive before training, plus the highest total of
CPU tensor memory allocated during training (the profiler's "Total Allocated": every tensor,
optimizer state and backward's temporaries included; the allocator's cache and the Python heap
are not, so this is the figure to compare on a GPU with torch.cuda.max_memory_allocated). The
estimate is computed first, in the same process, as `speechforge check` computes it.

The quickstart reads its corpus from --synth-root (data/synth beside this checkout; generated
there if missing, about 40 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [ROOT / "recipes" / "char_tiny.toml", ROOT / "recipes" / "quickstart.toml"]


def measure(args) -> dict:
    """One recipe at one precision, in this process: the estimate, then the measured peak."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from speechforge import experiment, recipe as recipes
    from speechforge.data.batching import pad_steps
    from speechforge.train import memory

    torch.set_num_threads(args.threads)
    path = Path(args.recipe)
    overrides = [f"trainer.mixed_precision={json.dumps(args.precision)}", "trainer.cpu=true", "trainer.trackers=[]",
                 f"trainer.max_steps={args.steps}", "trainer.validate_every_epochs=100000"]
    if recipes.read_toml(path)["data"]["name"] == "synth":
        overrides.append(f"data.root={json.dumps(str(args.synth_root))}")
    else:
        shared = (ROOT / recipes.read_toml(path)["data"]["root"]).resolve()  # relative to the checkout
        overrides.append(f"data.root={json.dumps(str(shared))}")
    recipe = recipes.load(path, overrides + args.overrides)
    with tempfile.TemporaryDirectory(prefix="memory-estimate-") as tmp:
        exp = experiment.build(recipe, Path(tmp), log=lambda msg: None)
        exp.save_assets()
        split = exp.corpus.split("train")
        # the heaviest batch as this precision pads it: cut at fp32's, a bf16 run pads the same
        # utterances past max_frames and trains them as two batches, one step each
        frame_step = pad_steps(args.precision)[0]
        split.utterances = [split.utterances[i] for i in memory.heaviest_batch(
            [u.num_frames for u in split.utterances], exp.corpus.max_frames, exp.corpus.batch_size, frame_step)]
        trainer = recipe.trainer.build()
        loss_fn = recipe.loss.build()
        # before training: Accelerate's prepare() wraps the model's forward, and check sees it unwrapped
        est = memory.for_experiment(exp, loss_fn, recipe.optimizer.build(model=exp.model), trainer.cfg)
        optimizer = recipe.optimizer.build(model=exp.model)
        schedule = recipe.scheduler.build(total_steps=args.steps).attach(optimizer)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            trainer.fit(exp, loss_fn, optimizer, schedule, log=lambda msg: None, progress=False)
        allocated, where = peak_allocated(prof, Path(tmp) / "trace.json")
        measured = memory.model_bytes(exp.model) + allocated
    return {"recipe": path.stem, "precision": args.precision, "batch": f"{est.utterances} x {est.frames}",
            "tokens": est.tokens, "estimate": est.total, "activations": est.activations,
            "rest": est.parameters + est.gradients + est.optimizer, "measured": measured, "peak_in": where,
            "line": est.line(exp.corpus.max_frames, recipe.optimizer.name)}


def peak_allocated(prof, trace: Path) -> tuple[int, str]:
    """The highest "Total Allocated" of the CPU until the last optimizer step ends (the training
    steps, not the checkpoint averaging fit() does after them), and the backward function or
    operation running then. The profiler counts from its start: tensors made before (the model)
    are not in it."""
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    end = max(e["ts"] + e["dur"] for e in events if e.get("name", "").startswith("Optimizer.step#"))
    peak = max((e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
                and e["ts"] <= end), key=lambda e: e["args"]["Total Allocated"])
    running = sorted((e for e in events if e.get("ph") == "X" and e["ts"] <= peak["ts"] <= e["ts"] + e["dur"]
                      and not e["name"].startswith("PyTorch Profiler")), key=lambda e: e["ts"])
    backward = [e["name"].split(": ")[-1] for e in running if e["name"].startswith("autograd::engine::evaluate_function")]
    return peak["args"]["Total Allocated"], (backward or [e["name"] for e in running] or ["-"])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(str(r) for r in RECIPES))
    ap.add_argument("--precisions", default="no,bf16", help="Accelerate's names: no (fp32), bf16, fp16")
    ap.add_argument("--steps", type=int, default=3, help="training steps on the heaviest batch (the first has no Adam state yet)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--synth-root", type=Path, default=ROOT / "data" / "synth")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="a recipe override for every recipe (repeatable), e.g. --set data.max_frames=16000")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args)))
        return

    rows = []
    for recipe in args.recipes.split(","):
        for prec in args.precisions.split(","):
            # a fresh process each: nothing allocated by one measurement is left for the next
            proc = subprocess.run([sys.executable, __file__, "--worker", "--recipe", recipe, "--precision", prec,
                                   "--steps", str(args.steps), "--threads", str(args.threads),
                                   "--synth-root", str(args.synth_root),
                                   *(f"--set={o}" for o in args.overrides)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if proc.returncode != 0:
                sys.exit(f"{recipe} {prec}: the worker failed (exit {proc.returncode})")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1]["line"], flush=True)

    mib, width = 2**20, max(len(r["recipe"]) for r in rows)
    print()
    print(f"{'recipe':<{width}} {'precision':<9} {'batch':>10} {'tokens':>6} {'estimate MiB':>12} {'(activations)':>13} "
          f"{'measured MiB':>12} {'estimate/measured':>17}  peak in")
    for r in rows:
        print(f"{r['recipe']:<{width}} {r['precision'].replace('no', 'fp32'):<9} {r['batch']:>10} {r['tokens']:>6} "
              f"{r['estimate'] / mib:>12.1f} {r['activations'] / mib:>13.1f} {r['measured'] / mib:>12.1f} "
              f"{r['estimate'] / r['measured']:>16.2f}x  {r['peak_in']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
