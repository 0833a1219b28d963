"""speechforge's adapter for the shared peer benchmark (../shared/bench/peers).

Same contract as the harness's other adapters:

    python benchmarks/peer_adapter.py --spec /path/to/peers/spec.json [--precision fp32|bf16] [--quick]

progress on stderr, the last stdout line one JSON object. The model is built through the
registry from recipes/bpe5k_ctc.toml, as `speechforge run` builds it; training is the
harness's fixed batch with Adam and the recipe's ce_ctc loss; decoding uses speechforge's
cached greedy search and, where speechforge.decode.beam exists, its batched beam search.
`--precision bf16` trains and decodes as `trainer.mixed_precision = "bf16"` does: forward
passes under speechforge.precision.autocast (bf16 autocast, fp32 master weights and Adam).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "bpe5k_ctc.toml"


def harness_dir() -> Path:
    """The folder of spec.json, which holds the harness's common.py (stdlib + torch)."""
    if "--spec" in sys.argv[:-1]:
        return Path(sys.argv[sys.argv.index("--spec") + 1]).resolve().parent
    return ROOT.parent / "shared" / "bench" / "peers"


sys.path.insert(1, str(harness_dir()))  # after this script's folder, so nothing here shadows it
import common  # noqa: E402

import speechforge  # noqa: E402
from speechforge import allocator, precision, recipe as recipes  # noqa: E402
from speechforge.data.tokenizers import EOS, PAD, SOS  # noqa: E402
from speechforge.decode.greedy import greedy_search  # noqa: E402
from speechforge.pipeline import products_text, searched_products  # noqa: E402

NUM_SPECIALS = 5  # speechforge ids 0-4 are <pad> <unk> <sos> <eos> <blank>


def build(spec):
    """The recipe's [model] and [loss] sections, validated and built through the registry as
    `speechforge run` does (only those sections: the benchmark never reads the recipe's data)."""
    m = spec["model"]
    raw = recipes.read_toml(RECIPE)
    # the spec drops attention probabilities at its one dropout rate, as every peer does;
    # the recipe turns that off (benchmarks/README.md), which would not be the same workload
    for stack in ("encoder", "decoder"):
        raw["model"][stack]["attention_dropout"] = m["dropout"]
    model = recipes.validate_component("models", raw["model"], "model")
    loss = recipes.validate_component("losses", raw["loss"], "loss")
    return model.build(vocab_size=m["vocab"], input_dim=m["input_dim"]), loss.build()


def speechforge_tokens(ids: torch.Tensor, id_lens: torch.Tensor):
    """The harness's ids (1 .. vocab-2, 0 blank, vocab-1 SOS/EOS) as speechforge's padded
    tokens_in / tokens_out, as `collate` makes them: the same shapes, ids moved past the specials."""
    vocab_tokens = 5000 - NUM_SPECIALS
    ids = NUM_SPECIALS + (ids - 1) % vocab_tokens
    b, width = ids.shape[0], int(id_lens.max()) + 1
    tokens_in = torch.full((b, width), PAD, dtype=torch.long)
    tokens_out = torch.full((b, width), PAD, dtype=torch.long)
    for i, n in enumerate(id_lens.tolist()):
        tokens_in[i, 0] = SOS
        tokens_in[i, 1 : n + 1] = ids[i, :n]
        tokens_out[i, :n] = ids[i, :n]
        tokens_out[i, n] = EOS
    return tokens_in, tokens_out


def beam_decoder():
    """speechforge.decode.beam.beam_search if it exists and takes what the spec needs, else (None, why)."""
    try:
        from speechforge.decode import beam
    except ImportError as err:
        return None, f"speechforge.decode.beam not importable ({err})"
    search = getattr(beam, "beam_search", None)
    if search is None:
        return None, "speechforge.decode.beam has no beam_search"
    missing = {"beam_size", "ctc_weight", "force_length"} - set(inspect.signature(search).parameters)
    if missing:
        return None, f"speechforge.decode.beam.beam_search lacks {', '.join(sorted(missing))}"
    return search, None


def training_step(spec):
    """The model and one training step on the harness's batch (Adam, the recipe's loss, forward
    under the spec's precision), and the batch's real frames."""
    model, loss_fn = build(spec)
    feats, feat_lens, ids, id_lens = common.train_batch(spec)
    tokens_in, tokens_out = speechforge_tokens(ids, id_lens)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mixed = "bf16" if spec["precision"] == "bf16" else "no"

    def step():
        opt.zero_grad(set_to_none=True)
        with precision.autocast(mixed, "cpu"):
            out = model(feats, feat_lens, tokens_in)
            loss = loss_fn(out, tokens_out, id_lens)["loss"]
        loss.backward()
        opt.step()

    model.train()
    return model, step, int(feat_lens.sum())


def main():
    spec = common.load_spec()
    m, dspec = spec["model"], spec["decode"]
    kept = allocator.keep_freed_memory()  # as speechforge run's trainer does (trainer.keep_freed_memory = true)
    model, step, _ = training_step(spec)
    common.log("train")
    train = common.time_training(spec, step)
    model.eval()
    steps, beam = dspec["output_tokens"], dspec["beam"]

    def encode(utts):
        feats = torch.stack(utts)  # the spec's utterances share one length: no padding
        return model.encode(feats, torch.full((len(utts),), feats.shape[1]))

    def as_speechforge_decodes(decode_all):
        """Under torch.no_grad, as speechforge's decode_batches runs a decoder: the harness
        times inside torch.inference_mode, where torch's autocast does not cache its bf16
        weight casts and would re-cast every weight at every step (a no-op at fp32)."""
        def run(utts):
            with torch.inference_mode(False), torch.no_grad():
                return decode_all(utts)

        return run

    def one_at_a_time(search):
        def decode_all(utts):
            lengths = []
            for u in utts:
                enc_out, enc_lens = encode([u])
                lengths.append(len(search(enc_out, enc_lens)[0][0].tokens))
            return lengths

        return as_speechforge_decodes(decode_all)

    common.log("decode greedy")
    notes = [
        "model built from recipes/bpe5k_ctc.toml through the registry; tied decoder input/output embeddings "
        "(the recipe's tie_embeddings = true), hence fewer parameters than untied peers",
        "train: ce_ctc loss (CE per target token + CTC per target token, weight 0.3); the harness batch is padded, "
        "so attention runs with key-padding masks; attention probabilities dropped at the spec's rate like the "
        "peers (the recipe's attention_dropout = 0 is overridden)",
        f"precision {spec['precision']}: " + ("forward passes under bf16 autocast (speechforge.precision.autocast, as "
        "trainer.mixed_precision = 'bf16' runs them), fp32 master weights; decoding under the harness's bf16 autocast, "
        "search scores in fp64" if spec["precision"] == "bf16" else "fp32 throughout"),
        "decoding runs under torch.no_grad as speechforge's decode_batches does (the harness's inference_mode "
        "stops autocast from caching its bf16 weight casts)",
        "dropout masks: speechforge.model.dropout (16 random bits an element, four per 64-bit draw)",
        f"host memory: {kept}, as speechforge run's trainer sets it (speechforge.allocator)",
        "front-end conv weights channels-last (as speechforge builds them)",
        "greedy: speechforge.decode.greedy.greedy_search with the decoder key/value cache, force_length",
    ]
    decode = {
        "greedy": common.time_decoding(spec, one_at_a_time(
            lambda e, n: greedy_search(model, e, n, force_length=steps))),
        "beam_attention": None, "beam_ctc": None, "beam_ctc_batch": None,
    }
    beam_search, why = beam_decoder()
    if beam_search is None:
        notes.append(f"beam configurations null: {why}")
    else:
        def beam_of(ctc_weight):
            return lambda e, n: beam_search(model, e, n, beam_size=beam, ctc_weight=ctc_weight, force_length=steps)

        @as_speechforge_decodes
        def batched(utts):
            enc_out, enc_lens = encode(utts)
            return [len(h[0].tokens) for h in beam_of(dspec["ctc_weight"])(enc_out, enc_lens)]

        common.log("decode beam_attention")
        decode["beam_attention"] = common.time_decoding(spec, one_at_a_time(beam_of(0.0)))
        common.log("decode beam_ctc")
        decode["beam_ctc"] = common.time_decoding(spec, one_at_a_time(beam_of(dspec["ctc_weight"])))
        common.log("decode beam_ctc_batch")
        decode["beam_ctc_batch"] = common.time_decoding(spec, batched)
        notes.append("beam: speechforge.decode.beam.beam_search, batched over utterances x beams, decoder cache, "
                     "one copy of each utterance's cross-attention memory shared by its beams, "
                     "CTC prefix scoring on the top 1.5 x beam attention candidates, force_length")
        if spec["precision"] == "bf16":
            notes.append("bf16 searches multiply in fp32 where whole decoder steps measured clearly faster so "
                         f"(speechforge.model.packed): {products_text(searched_products(model)) or 'none measured'}")
    common.emit({
        "toolkit": "speechforge", "version": speechforge.__version__, "torch": torch.__version__,
        "precision": spec["precision"],
        "params": common.count_params(model), "train": train, "decode": decode, "notes": notes,
    })


if __name__ == "__main__":
    main()
