"""Training (and decoding) speed by commit and precision: what each change was worth, side by side.

    python benchmarks/precision_speed.py --revs dfc4bce,HEAD                 # before / after
    python benchmarks/precision_speed.py --revs dfc4bce,A,B,HEAD --workload peer
    python benchmarks/precision_speed.py --revs 23cd521,HEAD --workload decode
    python benchmarks/precision_speed.py --quick                             # smoke test

Each revision is checked out into a temporary git worktree; for each revision and each
precision (fp32, and bf16 autocast with fp32 master weights, as `trainer.mixed_precision`
runs it) a worker process imports speechforge from that tree and builds the model, loss and
optimizer from that tree's recipe sections, and keeps freed memory as the trainer does where
the tree has speechforge.allocator (trees before 4aa0909 leave malloc as it is). The workers
are stepped in turn, one batch each (rotating who goes first), so load that comes and goes on
the machine falls on all of them alike; each batch counts its best time over the timed rounds.

Workloads:
  quickstart  recipes/quickstart.toml on the built-in corpus (data/synth, generated if
              missing): its real bucketed batches, SpecAugment included, AdamW, ce_ctc
  peer        recipes/bpe5k_ctc.toml on the peer harness's batch shapes (8 utterances of
              1050-1580 frames, random features and tokens), the recipe's optimizer
  decode      the peer harness's decoding: recipes/bpe5k_ctc.toml's model (random seeded
              weights), one utterance of 1000 frames a step, encoded and searched by beam 10
              + CTC 0.3 forced to 100 tokens, under torch.inference_mode as the harness runs it

Read the ratios, not the absolute times, and give the CPU flags beside them
(`grep -o 'amx_bf16\\|avx512_bf16' /proc/cpuinfo | sort -u`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stepped import SteppedWorker

ROOT = Path(__file__).resolve().parents[1]
PEER_FRAMES = [1580, 1490, 1420, 1375, 1310, 1240, 1160, 1050]
PEER_TOKENS = [62, 58, 55, 53, 50, 47, 44, 40]


# --- a worker: one revision, one precision ------------------------------------------


def batches(args, tree: Path):
    """The workload's batches, built with the tree's own code (the same in every tree)."""
    import torch

    from speechforge import recipe as recipes

    if args.workload == "decode":
        g = torch.Generator().manual_seed(0)
        frames, count = (200, 2) if args.quick else (1000, 4)
        return recipes.read_toml(args.recipe or tree / "recipes" / "bpe5k_ctc.toml"), 5000, [], [
            torch.randn(1, frames, 80, generator=g) for _ in range(count)]
    mixed = "bf16" if args.precision == "bf16" else "no"
    if args.workload == "peer":
        raw = recipes.read_toml(args.recipe or tree / "recipes" / "bpe5k_ctc.toml")
        from speechforge.data import batching

        g = torch.Generator().manual_seed(0)
        frames = [f // 8 for f in PEER_FRAMES[:2]] if args.quick else PEER_FRAMES
        tokens = [t // 8 for t in PEER_TOKENS[:2]] if args.quick else PEER_TOKENS
        items = [{"id": str(i), "feats": torch.randn(n, 80, generator=g), "text": None,
                  "tokens": torch.randint(5, 5000, (u,), generator=g).tolist()} for i, (n, u) in enumerate(zip(frames, tokens))]
        # padded as a run in this precision pads it, in trees that pad by precision
        steps = batching.pad_steps(mixed) if hasattr(batching, "pad_steps") else ()
        return raw, 5000, [], [batching.collate(items, *steps)]
    from speechforge import experiment

    path = args.recipe or tree / "recipes" / "quickstart.toml"
    root = ROOT / recipes.read_toml(path)["data"]["root"]  # the corpus beside this checkout, not the worktree's
    recipe = recipes.load(path, [f'data.root="{root}"', f'trainer.mixed_precision="{mixed}"'])
    exp = experiment.build(recipe, Path(tempfile.mkdtemp()), log=lambda *a: None)
    loader, _ = exp.loader("train", train=True, seed=0)
    chosen = []
    for batch in loader:
        chosen.append(batch)
        if len(chosen) == args.batches:
            break
    return recipes.read_toml(path), exp.tokenizer.vocab_size, exp.augment, chosen


def worker(args) -> None:
    import torch

    from speechforge import recipe as recipes

    torch.set_num_threads(args.threads)
    tree = Path(args.tree)
    try:  # freed memory kept, as `speechforge run`'s trainer keeps it, in trees that can
        from speechforge import allocator
    except ImportError:
        pass
    else:
        allocator.keep_freed_memory()
    raw, vocab, augment, data = batches(args, tree)
    torch.manual_seed(0)
    model = recipes.validate_component("models", raw["model"], "model").build(vocab_size=vocab, input_dim=80)
    loss_fn = recipes.validate_component("losses", raw["loss"], "loss").build()
    optimizer = recipes.validate_component("optimizers", raw["optimizer"], "optimizer").build(model=model)
    model.train()
    bf16 = args.precision == "bf16"
    from speechforge import precision

    lay_out = getattr(precision, "lay_out_convs", None)  # as the trainer does, in trees that have it
    if lay_out is not None:
        lay_out(model, "bf16" if bf16 else "no", training=args.workload != "decode")

    def decode(feats) -> None:
        from speechforge.decode.beam import beam_search

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            enc_out, enc_lens = model.encode(feats, torch.tensor([feats.shape[1]]))
            beam_search(model, enc_out, enc_lens, beam_size=10, ctc_weight=0.3, force_length=20 if args.quick else 100)

    def train_step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            feats = batch.feats
            for aug in augment:
                feats = aug(feats, batch.feat_lens)
            out = model(feats, batch.feat_lens, batch.tokens_in)
        loss = loss_fn(out, batch.tokens_out, batch.token_lens)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    if args.workload == "decode":
        model.eval()
    step = decode if args.workload == "decode" else train_step
    for batch in data[: args.warmup]:
        step(batch)
    print(json.dumps({"steps": len(data)}), flush=True)
    for _ in range(args.rounds):
        for batch in data:
            sys.stdin.readline()
            start = time.perf_counter()
            step(batch)
            frames = batch.shape[1] if args.workload == "decode" else int(batch.feat_lens.sum())
            print(json.dumps({"s": time.perf_counter() - start, "frames": frames}), flush=True)


# --- the side-by-side run ----------------------------------------------------------


class Worker(SteppedWorker):
    """One revision at one precision, in its own process with that tree's speechforge."""

    def __init__(self, name: str, tree: Path, precision: str, argv: list[str]):
        super().__init__(name, [sys.executable, __file__, *argv, "--worker", "--tree", str(tree), "--precision", precision],
                         env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree)
        self.steps = self.info["steps"]

    def frames_per_s(self) -> float:
        best = [min(t["s"] for t in self.records[i :: self.steps]) for i in range(self.steps)]
        return sum(t["frames"] for t in self.records[: self.steps]) / sum(best)


def worktree(rev: str, into: Path) -> Path:
    sha = subprocess.check_output(["git", "rev-parse", "--short", rev], cwd=ROOT, text=True).strip()
    path = into / sha
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), sha], cwd=ROOT, check=True,
                   capture_output=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", default="HEAD", help="comma-separated git revisions, oldest first (default HEAD)")
    parser.add_argument("--workload", choices=["quickstart", "peer", "decode"], default="quickstart")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--recipe", help="one recipe file for every revision (default: each tree's own recipe of "
                                         "the workload), so that a comparison across revisions is of code alone")
    parser.add_argument("--batches", type=int, default=12, help="quickstart batches per round (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; each batch counts its best (default 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke test: two batches, one round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds, args.warmup = 2, 1, 1
    if args.worker:
        worker(args)
        return
    if args.recipe:
        args.recipe = str(Path(args.recipe).resolve())
    argv = [a for a in sys.argv[1:] if not a.startswith("--recipe") and a != args.recipe]
    argv += [f"--recipe={args.recipe}"] if args.recipe else []
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: ROOT if rev == "." else worktree(rev, Path(tmp)) for rev in args.revs.split(",")}
        try:
            workers = [Worker(f"{rev}/{p}", tree, p, argv) for rev, tree in trees.items()
                       for p in args.precisions.split(",")]
            print(f"workload {args.workload}: {workers[0].steps} batches x {args.rounds} rounds, "
                  f"{args.threads} threads; workers: {', '.join(w.name for w in workers)}", flush=True)
            for i in range(workers[0].steps * args.rounds):
                k = i % len(workers)
                for w in workers[k:] + workers[:k]:
                    w.step()
            for w in workers:
                w.proc.wait()
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    base = workers[0].frames_per_s()
    rate = "utt/s" if args.workload == "decode" else "frames/s"
    per_unit = workers[0].records[0]["frames"] if args.workload == "decode" else 1  # frames an utterance
    print(f"\n{'revision/precision':<24}{rate:>10}{'vs first':>10}")
    for w in workers:
        print(f"{w.name:<24}{w.frames_per_s() / per_unit:>10.{2 if per_unit > 1 else 0}f}{w.frames_per_s() / base:>9.2f}x")


if __name__ == "__main__":
    main()
