"""Training speed: speechforge against a plain PyTorch reference of the same architecture.

    python benchmarks/train_speed.py            # an epoch of 64 utterances, timed twice, per configuration
    python benchmarks/train_speed.py --quick    # smoke test: a few short utterances

The model is recipes/bpe5k_ctc.toml's (12 + 6 pre-norm layers, d_model 256, 5000 tokens).
The epoch has real utterance lengths: drawn (seeded, with repeats) from the shared HW4P2
subset's fbank files, with their real features and random transcripts of frames / 25 tokens
(the peer spec's ratio). Four configurations, each in its own process (so peak RSS is its own):

    reference      torch.nn.Transformer(norm_first=True), key-padding masks, shuffled
                   fixed-size batches (the usual unbucketed loader); its one dropout rate
                   (0.1) also drops attention probabilities
    reference_a0   the same without attention-probability dropout, as the recipe trains
    sf_same        speechforge on exactly the reference's batches: with reference_a0, the
                   implementation alone
    speechforge    speechforge with its length-bucketed dynamic batches (BucketBatchSampler,
                   bounded by max_frames); the reference's batch size is this one's average

The four are stepped in turn, one batch each, the first of each turn rotating: every step
runs alone while the other processes wait, and a load that comes and goes on a shared
machine falls on all of them alike. `--warmup` steps are untimed, then `--epochs` epochs are
timed; each batch counts its best time over those epochs. Frames/s counts real (unpadded)
input frames; padded frames/s counts what was computed. Read the ratios: absolute times
drift on a shared machine, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from stepped import SteppedWorker
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "bpe5k_ctc.toml"
DATA = ROOT.parent / "shared" / "data" / "hw4_data_subset" / "hw4p2_data"
VOCAB, INPUT_DIM = 5000, 80
FRAMES_PER_TOKEN = 25  # the peer spec's batch: 1580 frames / 62 tokens
CONFIGS = ("reference", "reference_a0", "sf_same", "speechforge")


# --- the workload ------------------------------------------------------------


def corpus(data: Path) -> list[torch.Tensor]:
    """Every fbank file of the subset as a (T, 80) tensor (the files are stored (80, T))."""
    files = sorted(data.glob("*/fbank/*.npy"))
    if not files:
        sys.exit(f"no fbank files under {data}/*/fbank/: point --data at the HW4P2 subset")
    return [torch.from_numpy(np.ascontiguousarray(np.load(f).T, dtype=np.float32)) for f in files]


def epoch(args) -> tuple[list[torch.Tensor], list[list[int]], list[list[int]], list[list[int]]]:
    """The utterances (features, token ids) and both batchings; deterministic from --seed,
    so every subprocess rebuilds the same epoch."""
    from speechforge.data.batching import BucketBatchSampler, make_batches

    real = corpus(Path(args.data))
    rng = random.Random(args.seed)
    feats = [real[rng.randrange(len(real))] for _ in range(args.utterances)]
    if args.quick:
        feats = [f[: max(64, f.shape[0] // 8)] for f in feats]
    lengths = [f.shape[0] for f in feats]
    g = torch.Generator().manual_seed(args.seed)
    tokens = [torch.randint(5, VOCAB, (max(1, n // FRAMES_PER_TOKEN),), generator=g).tolist() for n in lengths]
    bucketed = BucketBatchSampler(lengths, args.max_frames, None, bucketed=True, shuffle=True, seed=args.seed).batches()
    size = max(1, round(len(lengths) / len(bucketed)))  # the same average batch size, unbucketed
    fixed = make_batches(lengths, None, size, bucketed=False, rng=random.Random(args.seed))
    return feats, tokens, bucketed, fixed


def padding(lengths: list[int], batches: list[list[int]]) -> float:
    from speechforge.data.batching import padding_fraction

    return padding_fraction(lengths, batches)


# --- the plain PyTorch reference ---------------------------------------------


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 convolutions, then a linear layer: (B, T, 80) -> (B, ~T/4, d)."""

    def __init__(self, input_dim: int, d_model: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, d_model, 3, 2), nn.ReLU(), nn.Conv2d(d_model, d_model, 3, 2), nn.ReLU())
        self.out = nn.Linear(d_model * (((input_dim - 1) // 2 - 1) // 2), d_model)

    def forward(self, feats, lens):
        x = self.conv(feats.unsqueeze(1))  # (B, d, T', F')
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f)), ((lens - 1) // 2 - 1) // 2


def sinusoids(length: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(length).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


class Reference(nn.Module):
    """The recipe's architecture the way a careful student writes it with torch.nn.Transformer;
    the output projection is tied to the token embedding, as in the recipe."""

    def __init__(self, d=256, heads=4, d_ff=1024, enc_layers=12, dec_layers=6, dropout=0.1, vocab=VOCAB):
        super().__init__()
        self.subsample = Conv2dSubsampling(INPUT_DIM, d)
        self.embed = nn.Embedding(vocab, d)
        self.transformer = nn.Transformer(
            d_model=d, nhead=heads, num_encoder_layers=enc_layers, num_decoder_layers=dec_layers,
            dim_feedforward=d_ff, dropout=dropout, batch_first=True, norm_first=True,
        )
        self.out = nn.Linear(d, vocab)
        self.out.weight = self.embed.weight
        self.ctc = nn.Linear(d, vocab)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoids(4096, d), persistent=False)
        self.scale = math.sqrt(d)

    def forward(self, feats, feat_lens, tokens_in, token_pad):
        x, lens = self.subsample(feats, feat_lens)
        pad = torch.arange(x.shape[1]) >= lens.unsqueeze(1)  # True at padding, torch's convention
        mem = self.transformer.encoder(self.dropout(x * self.scale + self.pe[: x.shape[1]]), src_key_padding_mask=pad)
        n = tokens_in.shape[1]
        y = self.dropout(self.embed(tokens_in) * self.scale + self.pe[:n])
        y = self.transformer.decoder(
            y, mem, tgt_mask=nn.Transformer.generate_square_subsequent_mask(n), tgt_is_causal=True,
            tgt_key_padding_mask=token_pad, memory_key_padding_mask=pad,
        )
        return self.out(y), self.ctc(mem).log_softmax(-1), lens


def reference_loss(model, feats, feat_lens, tokens_in, tokens_out, token_lens, pad_id=0):
    """The same joint loss as speechforge's ce_ctc: (1 - 0.3) CE + 0.3 CTC, each per target token."""
    logits, ctc_logp, enc_lens = model(feats, feat_lens, tokens_in, tokens_in == pad_id)
    ce = F.cross_entropy(logits.flatten(0, 1), tokens_out.flatten(), ignore_index=pad_id, label_smoothing=0.1,
                         reduction="sum") / (tokens_out != pad_id).sum()
    ctc = F.ctc_loss(ctc_logp.transpose(0, 1), tokens_out, enc_lens, token_lens, blank=4, reduction="sum",
                     zero_infinity=True) / token_lens.sum()
    return 0.7 * ce + 0.3 * ctc


# --- one configuration, in its own process -------------------------------------


def speechforge_model():
    """recipes/bpe5k_ctc.toml's [model] and [loss], built through the registry."""
    from speechforge import recipe as recipes

    raw = recipes.read_toml(RECIPE)
    model = recipes.validate_component("models", raw["model"], "model").build(vocab_size=VOCAB, input_dim=INPUT_DIM)
    return model, recipes.validate_component("losses", raw["loss"], "loss").build()


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(args) -> None:
    """Build one configuration, then train one batch per line read from stdin, answering
    with that step's seconds; the parent steps the configurations in turn, so each step
    runs while the other processes wait, and drift on the machine hits all of them alike."""
    from speechforge.data.batching import collate

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    feats, tokens, bucketed, fixed = epoch(args)
    batches = bucketed if args.worker == "speechforge" else fixed
    # collate is speechforge's; the reference gets the same tensors (PAD 0, <sos> 2, <eos> 3, blank 4)
    data = [collate([{"id": str(i), "feats": feats[i], "text": None, "tokens": tokens[i]} for i in b]) for b in batches]
    if args.worker.startswith("reference"):
        model = Reference()
        if args.worker == "reference_a0":
            for layer in model.modules():
                if isinstance(layer, nn.MultiheadAttention):
                    layer.dropout = 0.0  # what the recipe's attention_dropout = 0 does

        def loss_of(batch):
            return reference_loss(model, batch.feats, batch.feat_lens, batch.tokens_in, batch.tokens_out, batch.token_lens)
    else:
        model, loss_fn = speechforge_model()

        def loss_of(batch):
            return loss_fn(model(batch.feats, batch.feat_lens, batch.tokens_in), batch.tokens_out, batch.token_lens)["loss"]

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    rss_built = maxrss_mb()
    reply = {"params": sum(p.numel() for p in model.parameters()), "steps": len(data),
             "padding_fraction": padding([f.shape[0] for f in feats], batches)}
    print(json.dumps(reply), flush=True)
    schedule = data[: args.warmup] + data * args.epochs  # what the parent steps through, in order
    for batch in schedule:
        sys.stdin.readline()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_of(batch).backward()
        opt.step()
        seconds = time.perf_counter() - start
        frames = int(batch.feat_lens.sum())
        print(json.dumps({"s": seconds, "frames": frames, "padded": batch.feats.shape[0] * batch.feats.shape[1]}),
              flush=True)
    print(json.dumps({"peak_rss_mb": maxrss_mb(), "train_rss_mb": maxrss_mb() - rss_built}), flush=True)


# --- the side-by-side run ------------------------------------------------------


class Config(SteppedWorker):
    """A configuration's worker process, stepped one batch at a time."""

    def __init__(self, name: str, argv: list[str]):
        super().__init__(name, [sys.executable, __file__, *argv, "--worker", name])

    def finish(self, warmup: int) -> dict:
        self.info.update(self.read())
        self.proc.wait()
        # each batch's best time over the timed epochs: a burst of load elsewhere only
        # lengthens a step, so the minimum is the estimate it spoils least (as timeit does)
        n = self.info["steps"]
        timed = self.records[warmup:]
        best = [min(x["s"] for x in timed[i::n]) for i in range(n)]
        seconds = sum(best)
        return dict(self.info, seconds=seconds, s_per_step=seconds / n,
                    frames_per_s=sum(x["frames"] for x in timed[:n]) / seconds,
                    padded_frames_per_s=sum(x["padded"] for x in timed[:n]) / seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: short utterances, a tiny epoch")
    parser.add_argument("--utterances", type=int, default=64, help="utterances in the epoch (default 64)")
    parser.add_argument("--max-frames", type=int, default=16000,
                        help="speechforge's padded-frame bound per batch (longest x count; default 16000)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before the timed epochs")
    parser.add_argument("--epochs", type=int, default=2,
                        help="timed epochs per configuration; each batch counts its best time (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(DATA), help="the HW4P2 subset (its */fbank/*.npy give the lengths)")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.utterances, args.max_frames, args.warmup, args.epochs = 6, 600, 1, 1
    if args.worker:
        worker(args)
        return

    feats, _, bucketed, fixed = epoch(args)
    lengths = [f.shape[0] for f in feats]
    print(f"epoch: {len(lengths)} utterances, {min(lengths)}-{max(lengths)} frames (mean {sum(lengths) / len(lengths):.0f}), "
          f"{sum(lengths)} frames; speechforge {len(bucketed)} bucketed batches (max_frames {args.max_frames}), "
          f"reference {len(fixed)} shuffled batches of {len(fixed[0])}; torch {torch.__version__}, "
          f"{args.threads} threads, {args.warmup} warm-up steps, {args.epochs} timed epoch(s)", flush=True)
    configs = [Config(name, sys.argv[1:]) for name in CONFIGS]  # one at a time: each loads, then waits
    rounds = max(args.warmup + c.info["steps"] * args.epochs for c in configs)
    for i in range(rounds):
        turn = configs[i % len(configs):] + configs[: i % len(configs)]  # rotate who goes first
        for c in turn:
            if len(c.records) < args.warmup + c.info["steps"] * args.epochs:
                x = c.step()
                print(f"  step {i + 1}/{rounds} {c.name}: {x['s']:.2f} s, {x['padded']} padded frames",
                      file=sys.stderr, flush=True)
    results = {c.name: c.finish(args.warmup) for c in configs}
    for name in CONFIGS:
        results[name]["mean_batch"] = len(lengths) / len(bucketed if name == "speechforge" else fixed)

    cols = ["frames/s", "padded fr/s", "s/step", "steps", "mean B", "padding", "peak MB", "train MB"]
    print(f"\n{'':<13}" + "".join(f"{c:>12}" for c in cols))
    for name in CONFIGS:
        x = results[name]
        cells = [f"{x['frames_per_s']:.0f}", f"{x['padded_frames_per_s']:.0f}", f"{x['s_per_step']:.2f}",
                 f"{x['steps']}", f"{x['mean_batch']:.1f}", f"{x['padding_fraction']:.1%}",
                 f"{x['peak_rss_mb']:.0f}", f"{x['train_rss_mb']:.0f}"]
        print(f"{name:<13}" + "".join(f"{c:>12}" for c in cells))
    print(f"params: reference {results['reference']['params'] / 1e6:.2f}M, "
          f"speechforge {results['speechforge']['params'] / 1e6:.2f}M")

    def ratio(a: str, b: str, key: str) -> float:
        return results[a][key] / results[b][key]

    # sf_same and reference_a0 train the same model on identical batches: their per-step ratios show the noise
    same = sorted(r["s"] / s["s"] for r, s in zip(configs[1].records[args.warmup:], configs[2].records[args.warmup:]))
    print("\nratios (>1 means the first is faster)")
    print(f"  speechforge / reference, frames/s:     {ratio('speechforge', 'reference', 'frames_per_s'):.2f}x"
          "   (the issue's target: >= 1.2x)")
    print(f"  reference_a0 / reference, frames/s:    {ratio('reference_a0', 'reference', 'frames_per_s'):.2f}x"
          "   (no attention dropout: fused attention while training)")
    print(f"  sf_same / reference_a0, frames/s:      {ratio('sf_same', 'reference_a0', 'frames_per_s'):.2f}x"
          f"   (same model, same batches: the implementation alone; per step {same[0]:.2f}x-{same[-1]:.2f}x, "
          f"median {same[len(same) // 2]:.2f}x)")
    print(f"  speechforge / sf_same, frames/s:       {ratio('speechforge', 'sf_same', 'frames_per_s'):.2f}x"
          "   (bucketing alone)")


if __name__ == "__main__":
    main()
