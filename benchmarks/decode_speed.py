"""Decoding speed on the bpe5k_ctc architecture: greedy (cached, uncached), beam 10,
beam 10 + CTC, beam 10 + CTC + LM, side by side in one run on one CPU.

Random seeded weights: the search does the same work whatever the weights, and every
configuration is forced to the same output length (<eos> masked), so the numbers
compare the algorithms, not what a trained model happens to emit.

    python benchmarks/decode_speed.py            # 4 utterances x 1000 frames, 100 tokens
    python benchmarks/decode_speed.py --quick    # 2 x 400 frames, 20 tokens
    python benchmarks/decode_speed.py --threads 0  # torch's own thread count (default 1)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from speechforge.decode.beam import beam_search
from speechforge.decode.ctc import ctc_greedy_search, ctc_prefix_beam_search
from speechforge.decode.greedy import greedy_search
from speechforge.recipe import validate_component

FRAME_SHIFT_S = 0.01  # fbank frames are 10 ms apart
VOCAB, FEATS = 5000, 80

# recipes/bpe5k_ctc.toml's [model] section
MODEL = {
    "name": "transformer_ctc", "d_model": 256, "dropout": 0.1, "tie_embeddings": True,
    "embedding": {"name": "conv2d", "time_reduction": 4, "channels": 256},
    "encoder": {"name": "prenorm", "num_layers": 12, "num_heads": 4, "d_ff": 1024, "dropout": 0.1},
    "decoder": {"name": "prenorm", "num_layers": 6, "num_heads": 4, "d_ff": 1024, "dropout": 0.1},
}


class IdTokenizer:
    """Token ids written as numbers: enough for the bigram LM to count from."""

    vocab_size = VOCAB

    def encode(self, text: str) -> list[int]:
        return [int(w) for w in text.split()]


def bigram_lm(folder: Path, sentences: int = 2000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lines = [" ".join(map(str, torch.randint(5, VOCAB, (30,), generator=g).tolist())) for _ in range(sentences)]
    path = folder / "lm.txt"
    path.write_text("\n".join(lines) + "\n")
    spec = validate_component("lm_scorers", {"name": "ngram", "text": str(path)}, "decode.lm")
    return spec.build(tokenizer=IdTokenizer())


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 utterances x 400 frames, 20 tokens")
    parser.add_argument("--utterances", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=None, help="best of N runs per configuration")
    # one thread by default: decoder steps are small matrices, and on the shared 2-core dev
    # machine a second intra-op thread made every configuration 3-10x slower (spin-waits)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    args = parser.parse_args(argv)
    utts = args.utterances or (2 if args.quick else 4)
    frames = args.frames or (400 if args.quick else 1000)
    tokens = args.tokens or (20 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = validate_component("models", MODEL, "model").build(vocab_size=VOCAB, input_dim=FEATS).eval()
    feats = torch.randn(utts, frames, FEATS)
    feat_lens = torch.full((utts,), frames)
    audio_s = utts * frames * FRAME_SHIFT_S
    with tempfile.TemporaryDirectory() as tmp:
        lm = bigram_lm(Path(tmp))
    k = args.beam

    with torch.inference_mode():
        enc_s = float("inf")
        for _ in range(repeats):
            seconds, (enc_out, enc_lens) = timed(lambda: model.encode(feats, feat_lens))
            enc_s = min(enc_s, seconds)
        ctc_lp = model.ctc_log_probs(enc_out)
        # (name, run, forced to `tokens` tokens); the CTC-only searches have no <eos> to mask
        configs = [
            ("greedy (cached)", lambda: greedy_search(model, enc_out, enc_lens, force_length=tokens), True),
            ("greedy (uncached)", lambda: greedy_search(
                model, enc_out, enc_lens, use_cache=False, force_length=tokens), True),
            (f"beam {k}", lambda: beam_search(model, enc_out, enc_lens, beam_size=k, force_length=tokens), True),
            (f"beam {k} + ctc 0.3", lambda: beam_search(
                model, enc_out, enc_lens, beam_size=k, ctc_weight=0.3, force_length=tokens), True),
            (f"beam {k} + ctc 0.3 + lm 0.3", lambda: beam_search(
                model, enc_out, enc_lens, beam_size=k, ctc_weight=0.3, lm=lm, lm_weight=0.3,
                force_length=tokens), True),
            ("ctc greedy", lambda: ctc_greedy_search(ctc_lp, enc_lens), False),
            (f"ctc prefix beam {k}", lambda: ctc_prefix_beam_search(ctc_lp, enc_lens, beam_size=k), False),
        ]
        # rounds over all configurations, best of each: a busy spell on a shared machine
        # then slows one round of everything rather than one configuration
        seconds = {name: float("inf") for name, _, _ in configs}
        for _ in range(repeats):
            for name, run, forced in configs:
                took, hyps = timed(run)
                seconds[name] = min(seconds[name], took)
                assert not forced or all(len(h[0].tokens) == tokens for h in hyps), name

    print(f"{utts} utterances x {frames} frames ({audio_s:.0f} s of audio, {int(enc_lens[0])} encoder frames), "
          f"{tokens} tokens forced, vocabulary {VOCAB}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"best of {repeats}")
    print(f"encoder: {enc_s:.3f} s (included in utt/s and RTF below)")
    print(f"{'decoder':<28} {'decode s':>9} {'utt/s':>8} {'RTF':>8}")
    for name, s in seconds.items():
        total = enc_s + s
        print(f"{name:<28} {s:>9.3f} {utts / total:>8.2f} {total / audio_s:>8.4f}")
    print("ratios (decode time only" + ("; the targets are for the full run)" if args.quick else "):"))
    speedup = seconds["greedy (uncached)"] / seconds["greedy (cached)"]
    ctc_cost = seconds[f"beam {k} + ctc 0.3"] / seconds[f"beam {k}"]
    lm_cost = seconds[f"beam {k} + ctc 0.3 + lm 0.3"] / seconds[f"beam {k} + ctc 0.3"]
    print(f"  greedy uncached / cached      {speedup:6.2f}x  (target >= 5x)")
    print(f"  beam+ctc / beam               {ctc_cost:6.2f}x  (target <= 3x)")
    print(f"  beam+ctc+lm / beam+ctc        {lm_cost:6.2f}x")
    print(f"  beam {k} / greedy (cached)      {seconds[f'beam {k}'] / seconds['greedy (cached)']:6.2f}x")


if __name__ == "__main__":
    main()
