"""What one optimizer update of a LibriSpeech-100 recipe costs, and the training time it implies.

    python benchmarks/recipe_step.py                 # all three recipes, on CUDA if present (< 90 s on a GPU)
    python benchmarks/recipe_step.py --count-only    # FLOPs only, no timing (what the README's estimate uses)
    python benchmarks/recipe_step.py --cpu-quick     # a tiny smoke test on the CPU (the tests run it)

For each recipe in recipes/librispeech100/ the model, loss and optimizer are built through
the registry from the recipe itself. One update is what the recipe's trainer does on one
GPU: trainer.grad_accum_steps micro-batches of data.max_frames padded frames, each forward
and backward in the precision trainer.mixed_precision picks for the device (bf16 autocast on
a GPU that has it), then one optimizer step.

The synthetic micro-batch: utterances of 15 s (1500 frames of 80 log-mel bins) with 52 BPE
tokens each, as many as fill data.max_frames (32 for 48,000). 52 = 15 s x 3.45 tokens/s: ESPnet's
own BPE-5000 token count of test-clean (66,983 tokens, its README's TER table) over the split's
5.40 hours. Real batches are length-bucketed (a few percent of padding) with utterances of
1-25 s; the step's cost is nearly linear in frames, so the frame rate carries over.

FLOPs (torch.utils.flop_counter: matrix products, convolutions, attention) are counted on one
utterance of the batch's shape and multiplied by the batch size, which is exact for a batch of
equal lengths and keeps the count cheap on a CPU. The printed JSON per recipe: params,
flops_per_update, step_s (seconds per update, median of the timed ones), frames_per_s (padded
frames, all of them real here) and hours: trainer.epochs over train-clean-100 (100.6 h =
36.2M frames at 10 ms, times the speed-perturbation factors' mean length) at that rate,
validation and decoding not included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speechforge import precision, recipe as recipes  # noqa: E402
from speechforge.data.tokenizers import EOS, PAD, SOS  # noqa: E402
from speechforge.model.transformer import count_parameters  # noqa: E402

RECIPES = [ROOT / "recipes" / "librispeech100" / f"{name}.toml" for name in ("transformer", "conformer", "e_branchformer")]
VOCAB, INPUT_DIM = 5000, 80
TRAIN_FRAMES = 36.2e6  # train-clean-100: 100.6 h at 100 frames/s
TOKENS_PER_SECOND = 3.45  # ESPnet's test-clean: 66,983 BPE-5000 tokens / 5.40 h


def build(raw: dict, device: torch.device):
    """The recipe's model, loss and optimizer, built through the registry."""
    model = recipes.validate_component("models", raw["model"], "model").build(vocab_size=VOCAB, input_dim=INPUT_DIM)
    model.to(device).train()
    loss_fn = recipes.validate_component("losses", raw["loss"], "loss").build()
    optimizer = recipes.validate_component("optimizers", raw["optimizer"], "optimizer").build(model=model)
    return model, loss_fn, optimizer


def make_batch(utterances: int, frames: int, tokens: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """Random features and token ids with speechforge's padding and <sos>/<eos>."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(utterances, frames, INPUT_DIM, generator=g)
    ids = torch.randint(5, VOCAB, (utterances, tokens), generator=g)
    tokens_in = torch.cat([torch.full((utterances, 1), SOS), ids], 1)
    tokens_out = torch.cat([ids, torch.full((utterances, 1), EOS)], 1)
    assert PAD not in (SOS, EOS)
    host = [feats, torch.full((utterances,), frames), tokens_in, tokens_out, torch.full((utterances,), tokens)]
    return [t.to(device) for t in host]


def forward_backward(model, loss_fn, batch, mixed: str, device: torch.device, accum: int) -> None:
    feats, feat_lens, tokens_in, tokens_out, token_lens = batch
    with precision.autocast(mixed, device):
        out = model(feats, feat_lens, tokens_in)
    (loss_fn(out, tokens_out, token_lens)["loss"] / accum).backward()


def grouped_conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                                _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward: each gradient asked for (input, weight) costs what the forward
    does. torch's own formula ignores groups in the weight gradient, which counts a depthwise
    convolution's backward `groups` times over (x256 in the Conformer, x512 in the E-Branchformer)."""
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(model, loss_fn, batch, mixed: str, device: torch.device) -> int:
    """Forward + backward FLOPs of the batch, counted on its first utterance (all are alike)."""
    from torch.utils.flop_counter import FlopCounterMode

    one = [t[:1] for t in batch]
    fixed = {torch.ops.aten.convolution_backward: grouped_conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=fixed) as counter:
        forward_backward(model, loss_fn, one, mixed, device, 1)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() * batch[0].shape[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(path: Path, args, device: torch.device) -> dict:
    raw = recipes.read_toml(path)
    trainer, data = raw["trainer"], raw["data"]
    accum = 1 if args.cpu_quick else trainer.get("grad_accum_steps", 1)
    frames = args.frames
    utterances = max(1, data["max_frames"] // frames) if args.utterances is None else args.utterances
    tokens = args.tokens or round(frames / 100 * TOKENS_PER_SECOND)
    torch.manual_seed(0)
    model, loss_fn, optimizer = build(raw, device)
    mixed = precision.resolve(args.precision or trainer.get("mixed_precision", "auto"), device)[0]
    batch = make_batch(utterances, frames, tokens, device)
    flops = count_flops(model, loss_fn, batch, mixed, device) * accum
    result = {"recipe": str(path.relative_to(ROOT)), "device": device_name(device), "precision": precision.name(mixed),
              "params": count_parameters(model), "micro_batch": {"utterances": utterances, "frames": frames,
                                                                 "tokens": tokens}, "grad_accum_steps": accum,
              "flops_per_update": flops}
    if args.count_only:
        return result

    def update() -> None:
        for _ in range(accum):
            forward_backward(model, loss_fn, batch, mixed, device, accum)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        update()
    times = []
    for _ in range(args.timed):
        sync(device)
        start = time.perf_counter()
        update()
        sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    if args.profile:
        print_profile(update, device)
    frames_per_s = accum * utterances * frames / step_s
    factors = next((a.get("factors", [0.9, 1.0, 1.1]) for a in data.get("augment", []) if a["name"] == "speed_perturb"),
                   [1.0])
    epoch_frames = TRAIN_FRAMES * statistics.mean(1 / f for f in factors)  # a slower copy is longer
    epochs = trainer.get("epochs", 1)
    result.update(step_s=round(step_s, 4), frames_per_s=round(frames_per_s), flops_per_s=flops / step_s,
                  epochs=epochs, hours=round(epochs * epoch_frames / frames_per_s / 3600, 2))
    if device.type == "cuda":
        result["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    return result


def print_profile(update, device: torch.device, rows: int = 15) -> None:
    """Where one update's time goes: the operators that take most of it, to stderr."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        update()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows), file=sys.stderr)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", type=Path, default=RECIPES)
    parser.add_argument("--cpu-quick", action="store_true", help="CPU smoke test: 2 short utterances, one update")
    parser.add_argument("--count-only", action="store_true", help="count FLOPs of the full micro-batch, no timing")
    parser.add_argument("--frames", type=int, default=1500, help="frames per utterance (default 15 s)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per utterance (default 3.45 per second)")
    parser.add_argument("--utterances", type=int, default=None, help="per micro-batch (default: fill data.max_frames)")
    parser.add_argument("--precision", choices=["auto", "no", "bf16"], help="instead of the recipe's trainer.mixed_precision")
    parser.add_argument("--profile", action="store_true", help="also print the operators one update spends most time in")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cpu_quick:
        args.frames, args.tokens, args.utterances, args.warmup, args.timed = 200, 6, 2, 0, 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_quick else "cpu")
    precision.allow_tf32(device)
    for path in args.recipes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        print(json.dumps(measure(Path(path).resolve(), args, device)), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
