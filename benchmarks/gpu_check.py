"""The GPU check: speed, memory, FLOP utilisation and bf16 parity of the bpe5k_ctc model.

    bash benchmarks/gpu_check.sh            # on a GPU machine; at most about 8 minutes
    bash benchmarks/gpu_check.sh --quick    # anywhere, on the CPU: a tiny smoke test

The model is recipes/bpe5k_ctc.toml's (12 + 6 pre-norm layers, d_model 256, 5000 tokens),
built through the registry; the batch has the peer harness's shapes (8 utterances of
1050-1580 frames, 40-62 tokens; ../shared/bench/peers/spec.json). For fp32 (TF32 matrix
products on a GPU) and bf16 (autocast, fp32 master weights), each from the same seeded
initial weights and the same dropout draws:

- training: frames/s and s/step over timed steps after warm-up, peak device memory, and the
  model FLOP utilisation: FLOPs of one step (forward + backward, torch.utils.flop_counter)
  / step time / the device's dense bf16 rate measured here on a large matrix product;
- parity: the loss after `--steps` Adam steps on the batch, bf16 against fp32 (within 2%);
- decoding: beam 10 + CTC 0.3 over 32 utterances of 1000 frames in one batched call, every
  hypothesis forced to 100 tokens (the harness's equal-work rule), in bf16.

The speed path is what `speechforge run` takes on a GPU: bf16 autocast, TF32, fused Adam,
pinned host memory and non-blocking copies. `--compile [MODE]` times the model
under torch.compile, as `trainer.compile = true` runs it. The table comes last; `--json` writes it too.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speechforge import precision, recipe as recipes  # noqa: E402
from speechforge.data.tokenizers import EOS, PAD, SOS  # noqa: E402
from speechforge.decode.beam import beam_search  # noqa: E402

RECIPE = ROOT / "recipes" / "bpe5k_ctc.toml"
# the peer harness's training batch (spec.json "train"), so figures compare with its table
BATCH_FRAMES = [1580, 1490, 1420, 1375, 1310, 1240, 1160, 1050]
BATCH_TOKENS = [62, 58, 55, 53, 50, 47, 44, 40]
VOCAB, INPUT_DIM = 5000, 80


def build_model(seed: int, recipe: Path = RECIPE) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(seed)
    raw = recipes.read_toml(recipe)
    model = recipes.validate_component("models", raw["model"], "model").build(vocab_size=VOCAB, input_dim=INPUT_DIM)
    return model, recipes.validate_component("losses", raw["loss"], "loss").build()


def make_batch(frames: list[int], tokens: list[int], device: torch.device, seed: int = 0):
    """Random features and token ids with speechforge's padding and <sos>/<eos>, moved as the
    trainer moves a batch: from pinned memory, without blocking."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(frames), max(frames), INPUT_DIM, generator=g)
    for i, n in enumerate(frames):
        feats[i, n:] = 0.0
    width = max(tokens) + 1
    tokens_in = torch.full((len(tokens), width), PAD, dtype=torch.long)
    tokens_out = torch.full((len(tokens), width), PAD, dtype=torch.long)
    for i, n in enumerate(tokens):
        ids = torch.randint(5, VOCAB, (n,), generator=g)
        tokens_in[i, 0], tokens_in[i, 1 : n + 1] = SOS, ids
        tokens_out[i, :n], tokens_out[i, n] = ids, EOS
    host = [feats, torch.tensor(frames), tokens_in, tokens_out, torch.tensor(tokens)]
    if device.type == "cuda":
        host = [t.pin_memory() for t in host]
    return [t.to(device, non_blocking=True) for t in host]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_bf16_rate(device: torch.device, n: int) -> float:
    """FLOP/s of an n x n x n bf16 matrix product on random data (median of 10 after warm-up)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / sorted(times)[len(times) // 2]


def train(args, device: torch.device, mixed: str, batch) -> dict:
    """One precision: FLOPs of a step, the parity run, then timed steps and peak memory."""
    feats, feat_lens, tokens_in, tokens_out, token_lens = batch
    model, loss_fn = build_model(args.seed, args.recipe)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    # FLOPs are counted on an eager copy: a dispatch mode around a compiled model would recompile it
    flops = count_flops(copy.deepcopy(model), loss_fn, mixed, device, batch)
    # what `trainer.compile = true` does; the first step's time is then mostly compiling
    net = model if args.compile is None else torch.compile(model, dynamic=None, mode=args.compile)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with precision.autocast(mixed, device):
            out = net(feats, feat_lens, tokens_in)
        loss = loss_fn(out, tokens_out, token_lens)["loss"]
        loss.backward()
        opt.step()
        return loss.detach()

    # the parity run first, from the seeded weights: the same dropout draws in both precisions
    torch.manual_seed(args.seed + 1)
    sync(device)
    start = time.perf_counter()
    losses = [float(step())]
    first_step_s = time.perf_counter() - start
    losses += [float(step()) for _ in range(args.steps - 1)]
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.timed):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.timed
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"precision": precision.name(mixed), "s_per_step": seconds, "frames_per_s": float(feat_lens.sum()) / seconds,
            "flops_per_step": flops, "peak_mb": peak, "first_loss": losses[0], "final_loss": losses[-1],
            "first_step_s": first_step_s, "model": model}


def count_flops(model: torch.nn.Module, loss_fn, mixed: str, device: torch.device, batch) -> int:
    """FLOPs of one forward and backward (torch.utils.flop_counter: products, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    feats, feat_lens, tokens_in, tokens_out, token_lens = batch
    with FlopCounterMode(display=False) as counter:
        with precision.autocast(mixed, device):
            out = model(feats, feat_lens, tokens_in)
        loss_fn(out, tokens_out, token_lens)["loss"].backward()
    return counter.get_total_flops()


def decode(args, device: torch.device, model: torch.nn.Module) -> dict:
    g = torch.Generator().manual_seed(args.seed + 2)
    feats = torch.randn(args.utterances, args.utterance_frames, INPUT_DIM, generator=g).to(device)
    lens = torch.full((args.utterances,), args.utterance_frames, device=device)
    model.eval()
    with torch.inference_mode(), precision.autocast("bf16", device):
        def run():
            enc_out, enc_lens = model.encode(feats, lens)
            return beam_search(model, enc_out, enc_lens, beam_size=args.beam, ctc_weight=0.3,
                               force_length=args.output_tokens)

        run()  # warm-up
        sync(device)
        start = time.perf_counter()
        hyps = run()
        sync(device)
    seconds = time.perf_counter() - start
    lengths = [len(h[0].tokens) for h in hyps]
    return {"utt_per_s": args.utterances / seconds, "seconds": seconds, "tokens": sum(lengths) / len(lengths)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: short batch, 2 steps, tiny decode")
    parser.add_argument("--steps", type=int, default=20, help="Adam steps compared between bf16 and fp32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timed", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.02, help="relative final-loss difference allowed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--recipe", type=Path, default=RECIPE,
                        help="another model on the same batch, e.g. recipes/conformer_bpe5k_ctc.toml (5000 tokens)")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the model as trainer.compile does (MODE: default, reduce-overhead, ...)")
    parser.add_argument("--batch-scale", type=int, default=1,
                        help="the harness batch repeated N times (N x 8 utterances): where bf16 starts to pay on a GPU")
    args = parser.parse_args()
    args.utterances, args.utterance_frames, args.beam, args.output_tokens = 32, 1000, 10, 100
    frames, tokens = BATCH_FRAMES * args.batch_scale, BATCH_TOKENS * args.batch_scale
    if args.quick:
        device = torch.device("cpu")
        torch.set_num_threads(2)
        frames, tokens = [f // 10 for f in frames[:2]], [t // 10 for t in tokens[:2]]
        args.steps, args.warmup, args.timed = 2, 1, 1
        args.utterances, args.utterance_frames, args.beam, args.output_tokens = 2, 100, 2, 5
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("gpu_check: no CUDA device (run with --quick for the CPU smoke test)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({', '.join(precision.cpu_bf16_flags()) or 'no bf16 flags'})"
    precision.allow_tf32(device)
    print(f"device: {name}; torch {torch.__version__}; model: {args.recipe.name}; compile: {args.compile or 'no'}; "
          f"batch: {len(frames)} utterances, {sum(frames)} frames", flush=True)
    rate = dense_bf16_rate(device, 512 if args.quick else 8192)
    print(f"dense bf16 matrix product: {rate / 1e12:.1f} TFLOP/s", flush=True)
    batch = make_batch(frames, tokens, device, args.seed)
    results = {}
    for mixed in ("no", "bf16"):
        r = train(args, device, mixed, batch)
        model = r.pop("model")
        r["mfu"] = r["flops_per_step"] / r["s_per_step"] / rate
        results[r["precision"]] = r
        print(f"trained {r['precision']}: {r['s_per_step']:.3f} s/step (first step {r['first_step_s']:.1f} s)", flush=True)
    results["decode"] = decode(args, device, model)  # the bf16-trained model

    fp32, bf16 = results["fp32"], results["bf16"]
    gap = abs(bf16["final_loss"] - fp32["final_loss"]) / fp32["final_loss"]
    parity = gap <= args.tolerance
    results.update(recipe=args.recipe.name, compile=args.compile, batch_utterances=len(frames), device=name, dense_bf16_tflops=rate / 1e12, loss_gap=gap, parity=parity)
    print(f"\n{'':<6}{'frames/s':>10}{'s/step':>9}{'peak MB':>9}{'GFLOP/step':>12}{'MFU':>7}"
          f"{'loss 1st':>10}{'loss ' + str(args.steps):>10}")
    for r in (fp32, bf16):
        peak = "-" if r["peak_mb"] != r["peak_mb"] else f"{r['peak_mb']:.0f}"  # nan: no device counter (CPU)
        print(f"{r['precision']:<6}{r['frames_per_s']:>10.0f}{r['s_per_step']:>9.3f}{peak:>9}"
              f"{r['flops_per_step'] / 1e9:>12.1f}{r['mfu']:>7.1%}{r['first_loss']:>10.4f}{r['final_loss']:>10.4f}")
    d = results["decode"]
    print(f"bf16 / fp32 training frames/s: {bf16['frames_per_s'] / fp32['frames_per_s']:.2f}x")
    print(f"loss after {args.steps} steps: bf16 {bf16['final_loss']:.4f} vs fp32 {fp32['final_loss']:.4f}, "
          f"{gap:.2%} apart ({'within' if parity else 'OUTSIDE'} {args.tolerance:.0%})")
    print(f"beam {args.beam} + CTC 0.3, {args.utterances} utterances of {args.utterance_frames} frames in one batch, "
          f"bf16: {d['utt_per_s']:.1f} utt/s ({d['seconds']:.2f} s, {d['tokens']:.0f} tokens each)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if parity else 1


if __name__ == "__main__":
    sys.exit(main())
