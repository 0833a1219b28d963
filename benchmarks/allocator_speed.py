"""trainer.keep_freed_memory: the peer harness's training step with glibc's malloc as it is, and
with the memory each step frees kept for the next (speechforge.allocator).

    python benchmarks/allocator_speed.py                       # fp32 and bf16, 3 rounds, ~9 min on 2 cores
    python benchmarks/allocator_speed.py --precisions fp32 --rounds 1 --steps 2
    python benchmarks/allocator_speed.py --quick               # smoke test: one small step each
    python benchmarks/allocator_speed.py --profile 25          # and where a step of each goes

The step is the harness's (../shared/bench/peers/spec.json): recipes/bpe5k_ctc.toml's model built
as benchmarks/peer_adapter.py builds it, the fixed batch of 8 utterances (1050-1580 frames),
Adam, forward under the precision's autocast. Each configuration runs in its own process (the
setting is process-wide, and so is peak RSS), two untimed steps and then --steps timed ones;
the rounds alternate the two settings, and each keeps its best step. Page faults are the
process's minor faults over the timed steps, per step. With --profile ROWS, each configuration's
last-round process then runs one more step under torch.profiler and the table of its ROWS
costliest operators (self CPU time) follows the figures: where fresh memory's cost lands.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "bench" / "peers"

WORKER = r"""
import json, resource, sys, time
spec_path, precision, keep, steps, quick = sys.argv[1], sys.argv[2], sys.argv[3] == "keep", int(sys.argv[4]), sys.argv[5] == "1"
rows = int(sys.argv[6])
sys.argv = [sys.argv[0], "--spec", spec_path, "--precision", precision] + ["--quick"] * quick
sys.path.insert(0, ".")  # run from benchmarks/, beside peer_adapter.py
from speechforge import allocator
kept = allocator.keep_freed_memory(keep)
import peer_adapter as pa
_, step, frames = pa.training_step(pa.common.load_spec())
for _ in range(2):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
usage = resource.getrusage(resource.RUSAGE_SELF)
table = None
if rows:  # after the counts: the profiler's own allocations stay out of them
    from torch.profiler import profile
    with profile() as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
print(json.dumps({"s_per_step": min(times), "frames": frames, "faults_per_step": (usage.ru_minflt - faults) / steps,
                  "peak_rss_mb": usage.ru_maxrss / 1024, "malloc": kept, "profile": table}))
"""


def run(spec: Path, precision: str, keep: bool, steps: int, quick: bool, rows: int = 0) -> dict:
    cmd = [sys.executable, "-c", WORKER, str(spec), precision, "keep" if keep else "as-is", str(steps), str(int(quick)),
           str(rows)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
    if out.returncode:
        sys.exit(f"worker failed ({precision}, keep={keep}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=PEERS / "spec.json")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="also profile one step of each configuration (its last round) and print ROWS operators")
    args = ap.parse_args()
    if not args.spec.exists():
        sys.exit(f"no harness spec at {args.spec}: pass --spec (../shared/bench/peers/spec.json)")
    if args.quick:
        args.rounds, args.steps = 1, 1
    import platform

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    for precision in args.precisions.split(","):
        best: dict[bool, dict] = {}
        profiles: dict[bool, str] = {}
        for r in range(args.rounds):
            last = r == args.rounds - 1
            for keep in ((False, True) if r % 2 == 0 else (True, False)):
                rec = run(args.spec, precision, keep, args.steps, args.quick, args.profile if last else 0)
                if rec["profile"]:
                    profiles[keep] = rec["profile"]
                if keep not in best or rec["s_per_step"] < best[keep]["s_per_step"]:
                    best[keep] = rec
        for keep in (False, True):
            b = best[keep]
            print(f"{precision:5s} {'kept for reuse' if keep else 'malloc as is':15s} {b['s_per_step']:7.3f} s/step "
                  f"{b['frames'] / b['s_per_step']:7.0f} frames/s {b['faults_per_step']:9.0f} faults/step "
                  f"{b['peak_rss_mb']:7.0f} MB peak RSS")
        print(f"{precision:5s} kept / as is: {best[False]['s_per_step'] / best[True]['s_per_step']:.2f}x the frames/s, "
              f"{best[True]['peak_rss_mb'] / best[False]['peak_rss_mb']:.2f}x the peak RSS")
        for keep, table in profiles.items():
            setting = "kept for reuse" if keep else "malloc as is"
            print(f"\n{precision} {setting}: one step under torch.profiler\n{table}")


if __name__ == "__main__":
    main()
