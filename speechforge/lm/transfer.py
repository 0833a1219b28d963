"""From a trained LM to an ASR model: reopen the LM run, share its tokenizer, and copy
its weights into the ASR decoder.

The LM is the ASR decoder without cross-attention, with the same parameter names
(``speechforge.lm.model``), so initialising a decoder is copying every tensor whose
name and shape match. What the LM does not have (cross-attention and its norm) stays
freshly initialised. Token ids only mean the same thing under the same vocabulary:
an ASR recipe that wants LM weights takes the LM's tokenizer (``tokenizer.name =
"lm_run"``), and ``transfer_decoder`` checks it when given the ASR tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechforge import recipe as recipe_mod, registry
from speechforge.data.errors import DataError
from speechforge.data.tokenizers import SPECIALS, BPETokenizer, CharTokenizer, FrozenTokenizer, Tokenizer, load_tokenizer
from speechforge.lm.model import TransformerLM


class TransferError(ValueError):
    """LM weights or vocabulary that do not fit the ASR model."""


def load_lm(run_dir: str | Path, weights: str = "best") -> tuple[TransformerLM, Tokenizer]:
    """The trained LM (in eval mode) and its tokenizer, from the run directory alone."""
    from speechforge.experiment import load_weights

    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.toml"
    if not recipe_path.exists():
        raise DataError("not a run directory (no recipe.toml)", run_dir)
    raw = recipe_mod.read_toml(recipe_path)
    if raw.get("task", "asr") != "lm":
        raise DataError(f"holds a {raw.get('task', 'asr')} run, not a language model (task = \"lm\")", run_dir)
    # only the model section matters here: the training text may be long gone
    spec = recipe_mod.validate_component("models", raw.get("model"), "model")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    model = spec.build(vocab_size=tokenizer.vocab_size)
    model.load_state_dict(load_weights(run_dir, weights))
    model.eval()
    return model, tokenizer


def vocabulary(tokenizer: Tokenizer) -> list[str]:
    """The token of every id, in id order."""
    if isinstance(tokenizer, FrozenTokenizer):
        tokenizer = tokenizer.inner
    if isinstance(tokenizer, CharTokenizer):
        return [*SPECIALS, *tokenizer.chars]
    if isinstance(tokenizer, BPETokenizer):
        return [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]


def vocabulary_mismatch(lm: Tokenizer, other: Tokenizer) -> str | None:
    """Why two tokenizers do not give ids the same meaning, or None when they do."""
    a, b = vocabulary(lm), vocabulary(other)
    if a == b:
        return None
    if len(a) != len(b):
        return f"the LM has {len(a)} tokens ({lm.kind}), the ASR model {len(b)} ({other.kind})"
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"both have {len(a)} tokens, but id {i} is {a[i]!r} in the LM and {b[i]!r} in the ASR model"


@dataclass
class TransferReport:
    transferred: list[str] = field(default_factory=list)  # ASR decoder tensors now holding LM weights
    fresh: list[str] = field(default_factory=list)  # ASR decoder tensors the LM has no counterpart for
    unused: list[str] = field(default_factory=list)  # LM tensors the ASR decoder has no place for
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"transferred": self.transferred, "fresh": self.fresh, "unused": self.unused, "notes": self.notes}

    def __str__(self) -> str:
        lines = [f"LM -> ASR decoder: {len(self.transferred)} tensors copied, {len(self.fresh)} left fresh, "
                 f"{len(self.unused)} LM tensors unused"]
        if self.fresh:
            lines.append("  fresh: " + ", ".join(self.fresh))
        if self.unused:
            lines.append("  unused: " + ", ".join(self.unused))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def copy_decoder_weights(asr_model: nn.Module, lm_state: dict[str, torch.Tensor]) -> TransferReport:
    """Copy every ``decoder.*`` tensor of ``lm_state`` whose name and shape match into
    ``asr_model``. Shapes are all checked before anything is copied, so a mismatch
    leaves the ASR model as it was."""
    target = {k: v for k, v in asr_model.state_dict().items() if k.startswith("decoder.")}
    source = {k: v for k, v in lm_state.items() if k.startswith("decoder.")}
    report = TransferReport()
    for name, tensor in source.items():
        if name not in target:
            report.unused.append(name)
        elif target[name].shape != tensor.shape:
            raise TransferError(_shape_message(name, tensor.shape, target[name].shape))
    written: dict[int, str] = {}  # storage -> the name copied into it (tied embeddings share one)
    with torch.no_grad():
        for name, dest in target.items():
            if name not in source:
                report.fresh.append(name)
                continue
            ptr = dest.data_ptr()
            if ptr in written and not torch.equal(dest, source[name].to(dest)):
                report.unused.append(name)
                report.notes.append(f"the ASR model ties {name} to {written[ptr]} but the LM does not: "
                                    f"kept the LM's {written[ptr]}")
                continue
            dest.copy_(source[name])
            written[ptr] = name
            report.transferred.append(name)
    return report


def _shape_message(name: str, lm_shape: torch.Size, asr_shape: torch.Size) -> str:
    if name in ("decoder.embed.weight", "decoder.out.weight", "decoder.out.bias") and lm_shape[0] != asr_shape[0]:
        why = (f"the vocabularies differ ({lm_shape[0]} tokens in the LM, {asr_shape[0]} in the ASR model); "
               f"train the ASR model with the LM's tokenizer ([tokenizer] name = \"lm_run\", run_dir = the LM run)")
    else:
        why = "the decoders differ in size; give both recipes the same model.d_model and model.decoder.d_ff"
    return f"{name}: the LM has shape {tuple(lm_shape)}, the ASR model {tuple(asr_shape)}: {why}"


def transfer_decoder(asr_model: nn.Module, lm_run_dir: str | Path, tokenizer: Tokenizer | None = None,
                     weights: str = "best") -> TransferReport:
    """Initialise ``asr_model.decoder`` from the LM trained in ``lm_run_dir``.

    Pass the ASR model's ``tokenizer`` to have the vocabularies compared id by id: a
    matching shape alone does not make two character sets the same."""
    lm, lm_tokenizer = load_lm(lm_run_dir, weights)
    if tokenizer is not None:
        reason = vocabulary_mismatch(lm_tokenizer, tokenizer)
        if reason:
            raise TransferError(f"{lm_run_dir}: the LM's tokenizer is not the ASR model's ({reason}); "
                                "train the ASR model with tokenizer.name = \"lm_run\"")
    return copy_decoder_weights(asr_model, lm.state_dict())


@registry.tokenizers.register("lm_run")
def lm_run(run_dir: str) -> FrozenTokenizer:
    """The tokenizer of a trained LM run, as it is (for LM weight transfer and fusion)."""
    path = Path(run_dir) / "tokenizer"
    return FrozenTokenizer(load_tokenizer(path))
