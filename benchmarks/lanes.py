"""The peer harness and the quickstart on a many-core CPU, two cores per job, jobs side by side.

A lent GPU machine's CPU (an Intel Xeon with AMX) is the only AMX CPU this project gets, and only
for minutes at a time: the peer harness run one adapter after another (about an hour on two cores)
does not fit. Here every job gets two physical cores of its own (`taskset`, `OMP_NUM_THREADS=2`,
no GPU), and as many jobs run at once as there are free pairs of cores. Jobs that share the
machine share its memory bandwidth and last-level cache, so read ratios between rows of one run,
as the harness asks anyway; round 2 runs the adapters in the reverse order, so that no row keeps
one lane, and the table keeps each row's best (the harness's best.py). What it cost there: on
the lent H200 machine's 16-core Xeon, seven jobs at once ran at 0.46-0.65x the frames/s that one
job alone had measured on such a machine a session before. Not all of that is sharing: the
quickstart ran at 0.65x too in a call where the other lanes had failed at once. `--lanes 3` leaves
more of the machine to each job when minutes allow.

    python benchmarks/lanes.py --peers DIR --out DIR [--rounds 2] [--quickstart] [--deadline S]
                               [--lanes N] [--alongside CMD] [--reserve 2] [--quick]

DIR (--peers) holds the harness's spec.json, common.py, best.py, table.py and adapters, whose
toolkits import from the current python (benchmarks/gpu_wheels.sh --peers fetches them as wheels).
ESPnet and speechforge run the whole spec; plain PyTorch and SpeechBrain, whose rows here count
for training only, run it with decoding cut to one utterance of 20 tokens (their decodes at full
length would take most of the time). No job starts after --deadline seconds. --alongside runs a
shell command (benchmarks/gpu_check.sh, say) on the --reserve physical cores that no lane uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ONLY = ("torch", "speechbrain")  # rows whose decoding is cut, and left out of the table


def core_pairs(reserve: int) -> tuple[list[list[int]], list[int]]:
    """Pairs of logical CPUs on distinct physical cores, and the logical CPUs left over: the
    last `reserve` physical cores (all their threads) and the other threads of the paired ones."""
    first_of_core: dict[tuple[str, str], int] = {}
    for cpu in sorted(os.sched_getaffinity(0)):
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            key = ((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip())
        except OSError:
            key = ("?", str(cpu))
        first_of_core.setdefault(key, cpu)
    cpus = sorted(first_of_core.values())[: max(0, len(first_of_core) - reserve)]
    pairs = [cpus[i:i + 2] for i in range(0, len(cpus) - 1, 2)]
    used = {c for p in pairs for c in p}
    return pairs, [c for c in sorted(os.sched_getaffinity(0)) if c not in used]


def job_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


def adapter_jobs(peers: Path, rounds: int, quick: bool, precisions=("bf16", "fp32")) -> list[dict]:
    rows = [("espnet", "fp32")] + [(n, p) for p in precisions for n in ("speechforge", "torch", "speechbrain")]
    jobs = []
    for r in range(1, rounds + 1):
        order = rows if r % 2 else rows[::-1]
        for name, precision in order:
            script = ROOT / "benchmarks" / "peer_adapter.py" if name == "speechforge" else peers / f"{name}_adapter.py"
            if not script.exists():
                continue
            spec = peers / ("spec_train.json" if name in TRAIN_ONLY else "spec.json")
            tag = name + ("" if precision == "fp32" else f"-{precision}") + ("" if r == 1 else f".r{r}")
            cmd = [sys.executable, str(script), "--spec", str(spec), "--precision", precision] + ["--quick"] * quick
            jobs.append({"tag": tag, "precision": precision, "train_only": name in TRAIN_ONLY, "cwd": script.parent,
                         "cmd": cmd})
    return jobs


def quickstart_job(out: Path) -> dict:
    run_dir = out / "quickstart-run"
    cli = [sys.executable, "-m", "speechforge"]
    script = (f"{' '.join(cli)} run recipes/quickstart.toml --run-dir {run_dir} && "
              f"{' '.join(cli)} decode {run_dir} --split dev --set 'decode.name=\"beam\"' --set decode.ctc_weight=0.3")
    # the run and its beam decode take 6-8 minutes on two loaded AMX cores: more than an adapter's 420 s
    return {"tag": "quickstart", "cwd": ROOT, "timeout": 570, "cmd": ["bash", "-c", f"start=$(date +%s); {script}; "
                                                      "echo \"quickstart wall: $(( $(date +%s) - start )) s\""]}


def run_job(job: dict, cores: list[int], out: Path) -> None:
    log = out / f"{job['tag']}.log"
    cmd = ["taskset", "-c", ",".join(map(str, cores))] + job["cmd"]
    start = time.time()
    with open(out / f"{job['tag']}.out", "w") as stdout, open(log, "w") as stderr:
        try:
            rc = subprocess.run(cmd, cwd=job["cwd"], env=job_env(), stdout=stdout, stderr=stderr,
                                timeout=job.get("timeout", 420)).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    print(f"{job['tag']}: cores {cores}, {time.time() - start:.0f} s, rc {rc}", flush=True)
    if rc == 0 and "precision" in job:
        lines = (out / f"{job['tag']}.out").read_text().strip().splitlines()
        record = json.loads(lines[-1])
        if record.get("precision", "fp32") != job["precision"]:
            print(f"  {job['tag']}: the record does not say precision {job['precision']}; left out", flush=True)
            return
        if job["train_only"]:
            record["decode"] = {k: None for k in record.get("decode", {})}
            record.setdefault("notes", []).append("lanes.py: decoding cut to 1 utterance x 20 tokens; left out")
        (out / "records" / f"{job['tag']}.json").write_text(json.dumps(record))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quickstart", action="store_true")
    ap.add_argument("--deadline", type=float, default=330.0)
    ap.add_argument("--alongside", help="a shell command to run on the reserved cores meanwhile")
    ap.add_argument("--reserve", type=int, default=2, help="physical cores no lane uses")
    ap.add_argument("--lanes", type=int, default=0, help="at most this many jobs at once (0: a pair of cores each)")
    ap.add_argument("--quick", action="store_true", help="the adapters' --quick (a smoke test)")
    args = ap.parse_args()
    # adapters run from their own folder, so every path handed to them must be absolute
    args.peers, args.out = args.peers.resolve(), args.out.resolve()
    (args.out / "records").mkdir(parents=True, exist_ok=True)
    spec = json.loads((args.peers / "spec.json").read_text())
    spec["decode"].update(utterance_frames=spec["decode"]["utterance_frames"][:1], output_tokens=20)
    (args.peers / "spec_train.json").write_text(json.dumps(spec))

    pairs, spare = core_pairs(args.reserve)
    if args.lanes:
        spare += [c for p in pairs[args.lanes:] for c in p]
        pairs = pairs[: args.lanes]
    print(f"lanes (logical CPUs on distinct physical cores): {pairs}; spare: {spare}", flush=True)
    alongside = None
    if args.alongside:
        log = open(args.out / "alongside.log", "w")
        pin = ["taskset", "-c", ",".join(map(str, spare))] if spare else []
        alongside = subprocess.Popen(pin + ["bash", "-c", args.alongside],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    queue = ([quickstart_job(args.out)] if args.quickstart else []) + adapter_jobs(args.peers, args.rounds, args.quick)
    lock, start = threading.Lock(), time.time()

    def lane(cores):
        while True:
            with lock:
                if not queue or time.time() - start > args.deadline:
                    return
                job = queue.pop(0)
            run_job(job, cores, args.out)

    threads = [threading.Thread(target=lane, args=(p,)) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if alongside is not None:
        print(f"alongside: rc {alongside.wait()}", flush=True)
    if queue:
        print("not started (deadline): " + " ".join(j["tag"] for j in queue), flush=True)
    records = args.out / "records"
    subprocess.run([sys.executable, str(args.peers / "best.py"), str(records)], check=False)
    best = sorted((records / "best").glob("*.json"))
    table = subprocess.run([sys.executable, str(args.peers / "table.py"), *map(str, best)],
                           capture_output=True, text=True).stdout
    (args.out / "table.txt").write_text(table)
    print(table)
    shutil.rmtree(args.out / "quickstart-run" / "checkpoints", ignore_errors=True)


if __name__ == "__main__":
    main()
