"""onnxruntime against PyTorch: greedy decoding of a trained run's dev split, batch 1 and
batched, side by side in one run; the transcripts compared; the export folder's size.

Both sides decode the same normalised features (read once, before timing) with the
same batches (utterances in length order), in fp32, with the same number of threads;
the time covers the encoder and the greedy search, not reading files or computing
filterbanks. Each round times every configuration once, in turn; a configuration
counts its best round.

    python benchmarks/export_speed.py                       # runs/quickstart, dev split
    python benchmarks/export_speed.py --run RUN --split test --batch 16 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jiwer
import numpy as np
import torch

from speechforge import experiment, runtime
from speechforge.data.corpus import load_features
from speechforge.decode.greedy import greedy_search
from speechforge.export import export_onnx
from speechforge.runtime import bundle
from speechforge.runtime.model import pad


def batches(feats: list[np.ndarray], size: int) -> list[list[int]]:
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


def decode_torch(model, feats, groups, args) -> dict[int, list[int]]:
    out = {}
    with torch.no_grad():
        for group in groups:
            x, lens = pad([feats[i] for i in group])
            enc_out, enc_lens = model.encode(torch.from_numpy(x), torch.from_numpy(lens))
            for i, hyps in zip(group, greedy_search(model, enc_out, enc_lens, **args)):
                out[i] = hyps[0].tokens
    return out


def decode_onnx(recognizer, feats, groups, args) -> dict[int, list[int]]:
    out = {}
    for group in groups:
        hyps = recognizer.recognize([feats[i] for i in group], batch_size=len(group))
        out.update({i: h[0].tokens for i, h in zip(group, hyps)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/quickstart"))
    ap.add_argument("--split", choices=["dev", "test"], default="dev")
    ap.add_argument("--batch", type=int, default=16, help="the batched configurations' batch size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    folder = args.run / "onnx"
    if not bundle.is_export_dir(folder):
        export_onnx(args.run, folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    print(f"export folder {folder}: {sum(p.stat().st_size for p in files) / 1e6:.2f} MB")
    for p in files:
        print(f"  {p.stat().st_size:>11,}  {p.relative_to(folder)}")

    run = experiment.open_run(args.run, need_data=True)
    corpus = run.recipe.data.build()
    utterances = corpus.split(args.split).utterances
    feats = [run.normalizer(load_features(u.feats, corpus.num_mel_bins)).astype(np.float32) for u in utterances]
    recognizer = runtime.load(folder, threads=args.threads)
    decode_args = {k: v for k, v in recognizer.decode.items() if k != "name"}
    if recognizer.decode["name"] != "greedy":
        sys.exit(f"{folder}: the export's decoder is {recognizer.decode['name']}; this benchmark compares greedy")
    seconds = sum(u.num_frames for u in utterances) / 100
    print(f"{args.split}: {len(utterances)} utterances, {seconds:.0f} s of speech; greedy {decode_args}; "
          f"{args.threads} threads; torch {torch.__version__}")

    configs = {}
    for size in (1, args.batch):
        groups = batches(feats, size)
        configs[f"torch b{size}"] = lambda g=groups: decode_torch(run.model, feats, g, decode_args)
        configs[f"onnx b{size}"] = lambda g=groups: decode_onnx(recognizer, feats, g, decode_args)
    best = {name: float("inf") for name in configs}
    results = {}
    for _ in range(args.rounds):
        for name, fn in configs.items():
            start = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)

    print(f"\n{'':<12}{'utt/s':>9}{'s':>8}")
    for name, s in best.items():
        print(f"{name:<12}{len(feats) / s:>9.1f}{s:>8.2f}")
    print("\nratios (>1: onnxruntime faster)")
    for size in (1, args.batch):
        print(f"  onnx / torch, batch {size:<3} {best[f'torch b{size}'] / best[f'onnx b{size}']:.2f}x")

    refs = [u.text for u in utterances]
    print("\ntranscripts, onnxruntime against PyTorch")
    for size in (1, args.batch):
        t, o = results[f"torch b{size}"], results[f"onnx b{size}"]
        same = sum(t[i] == o[i] for i in range(len(feats)))
        cer = {k: jiwer.cer(refs, [run.tokenizer.decode(r[i]) or "-" for i in range(len(feats))])
               for k, r in (("torch", t), ("onnx", o))}
        print(f"  batch {size:<3} equal {same}/{len(feats)} ({same / len(feats):.1%}); CER torch {cer['torch']:.4f}, "
              f"onnx {cer['onnx']:.4f}, difference {abs(cer['torch'] - cer['onnx']):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
