"""Running a decoder over a split, and what it writes: hypotheses, metrics, submission."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from speechforge.data.batching import Batch
from speechforge.data.tokenizers import Tokenizer
from speechforge.metrics import error_rates


@torch.no_grad()
def decode_batches(
    model, batches: Iterable[Batch], decoder: Callable, tokenizer: Tokenizer, device: torch.device,
    precision: str = "no",
) -> list[dict[str, Any]]:
    """One record per utterance: id, reference (or None), best hypothesis, n-best with scores,
    and ``at_cap`` where the decoder has a length cap (``length_caps``) and the best hypothesis
    stopped there without <eos>. ``precision`` (resolved, as speechforge.precision gives it) is
    the forward passes'; the decoders keep their scores in fp32 or fp64 whatever it is."""
    from speechforge.precision import autocast

    records = []
    model.eval()
    if sys.stderr.isatty() and hasattr(batches, "__len__"):
        from tqdm import tqdm

        batches = tqdm(batches, desc="decoding", leave=False, unit="batch")
    for batch in batches:
        batch = batch.to(device)
        with autocast(precision, device):
            enc_out, enc_lens = model.encode(batch.feats, batch.feat_lens)
            hyps = decoder(model, enc_out, enc_lens)
        caps = decoder.length_caps(enc_lens).tolist() if hasattr(decoder, "length_caps") else [None] * len(hyps)
        for utt, ref, nbest, cap in zip(batch.ids, batch.texts, hyps, caps):
            texts = [tokenizer.decode(h.tokens) for h in nbest]
            record = {
                "id": utt, "ref": ref, "hyp": texts[0],
                "nbest": [{"text": t, "score": round(h.score, 4)} for t, h in zip(texts, nbest)],
            }
            if cap is not None:
                record["at_cap"] = len(nbest[0].tokens) >= cap
            records.append(record)
    return sorted(records, key=lambda r: r["id"])


def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's records, on every process, once each, in utterance order."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return records
    from accelerate.utils import gather_object

    merged = {r["id"]: r for r in gather_object(records)}
    return [merged[k] for k in sorted(merged)]


def score(records: list[dict[str, Any]]) -> dict[str, float] | None:
    scored = [r for r in records if r["ref"] is not None]
    if not scored:
        return None
    return error_rates([r["ref"] for r in scored], [r["hyp"] for r in scored])


def write_outputs(records: list[dict[str, Any]], folder: Path, split: str) -> dict[str, Any]:
    """hyps.jsonl (n-best), metrics.json (when references exist), and for the test
    split submission.csv with ids in sorted utterance order."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.hyps.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    result: dict[str, Any] = {"split": split, "utterances": len(records)}
    rates = score(records)
    if rates is not None:
        result.update(rates)
    if split == "test":
        with open(folder / "submission.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "transcription"])
            for r in records:
                writer.writerow([r["id"], r["hyp"]])
    return result


def decode_tag(name: str, args: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """A folder name per decoding configuration, so configurations sit side by side: the
    decoder's name and the arguments that differ from its ``defaults`` (``beam-beam_size4-
    ctc_weight0.4``); a name that would pass 80 characters keeps its start and a digest of
    all the arguments, so two configurations never share a folder. metrics.json beside the
    outputs holds every argument."""
    defaults = defaults or {}
    parts = [name]
    for key in sorted(args):
        value = args[key]
        plain = value.to_dict() if hasattr(value, "to_dict") else value
        if key in defaults and plain == defaults[key]:
            continue
        if isinstance(plain, (int, float, str, bool)):
            parts.append(f"{key}{plain}")
        elif plain is not None:
            # a nested component (an LM scorer, say): its name and a digest of its arguments
            digest = hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:8]
            parts.append(f"{key}{plain.get('name', '') if isinstance(plain, dict) else ''}{digest}")
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in "-".join(parts))
    if len(tag) > 80:
        everything = json.dumps({k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in args.items()},
                                sort_keys=True, default=str)
        tag = f"{tag[:71]}-{hashlib.sha1(everything.encode()).hexdigest()[:8]}"
    return tag


def decoder_defaults(name: str) -> dict[str, Any]:
    """The registered decoder's own defaults, from its factory's signature."""
    import inspect

    from speechforge import registry

    params = inspect.signature(registry.resolve("decoders", name)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
