"""Loader throughput against what a training step consumes, per batching.

    python benchmarks/loader_speed.py            # synth corpus (or the HW4P2 subset) + FSDD audio
    python benchmarks/loader_speed.py --quick    # smoke test: fewer utterances and steps

For each data set and batching the script prints, side by side in one run:

    padding     share of the padded batch that is padding
    loader      utterances/s and real frames/s the DataLoader delivers (read, normalize,
                tokenize, collate), over one epoch, with 0 and with 2 worker processes
    train       real frames/s one training step of the recipe's model consumes (forward,
                backward, optimizer step) on the same batches, already loaded
    ratio       loader frames/s over train frames/s: above 1 the loader keeps ahead

Batchings: "fixed" is shuffled fixed-size batches (the size is the bucketed batching's
average, so both see the same number of steps); "bucketed" is BucketBatchSampler's
length-bucketed dynamic batches bounded by --max-frames.

Data sets: stored features in the HW4P2 layout (data/synth, else the shared HW4P2
subset), and the FSDD recordings read through a JSON-lines manifest with features
computed on the fly after speed perturbation and noise (the waveform-augmentation path).
Frames/s counts real (unpadded) 10 ms frames in both columns, so the ratio is like for
like. Absolute numbers drift on a shared machine; the ratios within one run much less.

Measured on the 2-core development machine while it was shared (load ~5), quickstart
model (d_model 144, 4+2 layers), 1000 utterances per data set, default settings:

    data                    batching        workers  padding  loader frames/s  train frames/s  ratio
    features (data/synth)   fixed (59)            0    0.447          163,150             929    176
    features (data/synth)   fixed (59)            2    0.447          232,205             929    250
    features (data/synth)   bucketed (16000)      0    0.066          182,319           1,928     95
    features (data/synth)   bucketed (16000)      2    0.066          279,821           1,928    145
    FSDD on the fly         fixed (250)           0    0.484           17,288             780     22
    FSDD on the fly         fixed (250)           2    0.484           10,518             780     14
    FSDD on the fly         bucketed (16000)      0    0.221           18,026           1,460     12
    FSDD on the fly         bucketed (16000)      2    0.221           14,909           1,460     10

(prepare: 256 FSDD recordings/s into the cache.) Stored features load 100-250 times
faster than this model trains; features computed on the fly with speed perturbation
and noise 10-20 times faster, so neither starves a CPU step. Bucketing halves the
step's cost per real frame (padding 45% -> 7%). Two workers help stored features and
hurt on-the-fly ones here: with two busy cores they compete with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch
from torch.utils.data import DataLoader

from speechforge import recipe as recipe_mod
from speechforge.data.batching import BucketBatchSampler, UtteranceDataset, collate, make_batches, padding_fraction
from speechforge.data.tokenizers import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FSDD = SHARED / "fsdd" / "recordings"
WORDS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()


def feature_corpus(args):
    root = Path(args.data) if args.data else ROOT / "data" / "synth"
    if not (root / "train-clean-100" / "fbank").is_dir():
        root = SHARED / "hw4_data_subset" / "hw4p2_data"
    section = {"name": "hw4p2", "root": str(root), "max_utterances": args.utterances}
    return f"features ({root.relative_to(root.parents[1])})", recipe_mod.validate_component("datasets", section, "data").build()


def audio_corpus(args, workdir: Path):
    """The FSDD recordings in a manifest; training features computed on the fly after augmentation."""
    lines = []
    for wav in sorted(FSDD.glob("*.wav"))[: args.utterances]:
        lines.append(json.dumps({"id": wav.stem, "audio": str(wav), "text": WORDS[int(wav.stem[0])],
                                 "duration": sf.info(wav).duration}))
    (workdir / "train.jsonl").write_text("\n".join(lines) + "\n")
    section = {"name": "jsonl", "root": str(workdir), "dev": None, "test": None,
               "augment": [{"name": "speed_perturb"}, {"name": "noise", "prob": 1.0}]}
    corpus = recipe_mod.validate_component("datasets", section, "data").build()
    start = time.perf_counter()
    corpus.prepare(log=lambda msg: None)
    seconds = time.perf_counter() - start
    print(f"prepare (FSDD, 8 kHz -> 16 kHz fbank, cached): {len(lines) / seconds:,.0f} recordings/s")
    return "audio on the fly (FSDD, speed+noise)", corpus


def loader_rate(dataset, batches: list[list[int]], workers: int) -> tuple[float, float]:
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers)
    start, utts, frames = time.perf_counter(), 0, 0
    for batch in loader:
        utts += len(batch.ids)
        frames += int(batch.feat_lens.sum())
    seconds = time.perf_counter() - start
    return utts / seconds, frames / seconds


def train_rate(recipe, vocab_size: int, batches: list, warmup: int) -> float:
    torch.manual_seed(0)
    model = recipe.model.build(vocab_size=vocab_size, input_dim=80)
    loss_fn = recipe.loss.build()
    optimizer = recipe.optimizer.build(model=model)
    model.train()

    def step(batch) -> None:
        out = model(batch.feats, batch.feat_lens, batch.tokens_in)
        loss_fn(out, batch.tokens_out, batch.token_lens)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:warmup]:
        step(batch)
    start, frames = time.perf_counter(), 0
    for batch in batches[warmup:]:
        step(batch)
        frames += int(batch.feat_lens.sum())
    return frames / (time.perf_counter() - start)


def measure(name: str, corpus, recipe, args) -> list[tuple]:
    from speechforge.data.normalization import GlobalMVN

    mvn = GlobalMVN()
    split = corpus.split("train", visit=mvn.update)
    tokenizer = CharTokenizer()
    tokenizer.fit([u.text for u in split.utterances])
    dataset = UtteranceDataset(split.utterances, mvn, tokenizer)
    lengths = [u.num_frames for u in split.utterances]
    bucketed = BucketBatchSampler(lengths, args.max_frames, None, seed=0).batches()
    size = max(1, round(len(lengths) / len(bucketed)))
    fixed = make_batches(lengths, None, size, bucketed=False, rng=random.Random(0))
    print(f"{name}: {len(lengths)} utterances, {sum(lengths) / len(lengths):.0f} frames on average")
    rows = []
    for batching, batches in ((f"fixed ({size}/batch)", fixed), (f"bucketed (<= {args.max_frames} frames)", bucketed)):
        # the first batches of the epoch, cycled where a small data set has fewer
        timed = [batches[i % len(batches)] for i in range(args.warmup + args.steps)]
        loaded = list(DataLoader(dataset, batch_sampler=timed, collate_fn=collate))
        train = train_rate(recipe, tokenizer.vocab_size, loaded, args.warmup)
        for workers in (0, 2):
            utts, frames = loader_rate(dataset, batches, workers)
            rows.append((name, batching, workers, padding_fraction(lengths, batches), utts, frames, train))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.toml"), help="whose model trains")
    ap.add_argument("--data", default=None, help="a corpus in the HW4P2 layout (default data/synth)")
    ap.add_argument("--utterances", type=int, default=1000, help="utterances per data set")
    ap.add_argument("--max-frames", type=int, default=16000, help="bucketed batches' bound (padded frames)")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per batching")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="200 utterances, 2 steps")
    args = ap.parse_args()
    if args.quick:
        args.utterances, args.steps, args.warmup = 200, 2, 1
    recipe = recipe_mod.load(Path(args.recipe), [])
    print(f"model: {args.recipe} ({recipe.model.name}); torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cores")
    rows = measure(*feature_corpus(args), recipe, args)
    if FSDD.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            rows += measure(*audio_corpus(args, Path(tmp)), recipe, args)
    else:
        print(f"(no FSDD recordings at {FSDD}: the on-the-fly audio rows are left out)", file=sys.stderr)
    print()
    header = ("data", "batching", "workers", "padding", "loader utt/s", "loader frames/s", "train frames/s",
              "loader/train")
    print(f"{header[0]:<38} {header[1]:<28} {header[2]:>7} {header[3]:>8} {header[4]:>12} {header[5]:>15} "
          f"{header[6]:>14} {header[7]:>12}")
    for name, batching, workers, pad, utts, frames, train in rows:
        print(f"{name:<38} {batching:<28} {workers:>7} {pad:>8.3f} {utts:>12,.0f} {frames:>15,.0f} "
              f"{train:>14,.0f} {frames / train:>12.1f}")


if __name__ == "__main__":
    main()
