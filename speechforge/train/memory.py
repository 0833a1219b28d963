"""How much memory one training step needs, before any training: ``speechforge check``'s estimate.

A step holds the model's parameters (and buffers), a gradient for each trainable parameter,
the optimizer's state, and the activations: the tensors the forward pass saves for backward.
The first three are counted exactly (the optimizer's state by stepping it once on zero
gradients, so any optimizer is counted, not only the ones we know). The activations are
counted, not modelled: one forward and loss of the real model, at the run's precision (bf16
autocast saves bf16 copies), on a synthetic batch shaped like the split's heaviest batch, with
``saved_tensors_hooks`` summing the unique storages autograd keeps. Saved tensors grow linearly
with the batch (each utterance saves its own; weight copies are saved once), so two small
forwards, of one and of two utterances, give the whole batch's count: cheaper in time and
memory than the batch itself.

The sum is what a step holds when backward starts, plus every gradient. It leaves out backward's
temporaries (a convolution's backward copies its incoming gradient, say) and counts whole the
activations and gradients that are partly freed or not yet made at the real peak; the two pull
opposite ways. ``benchmarks/memory_estimate.py`` compares it with the peak the real trainer
reaches: 0.82-1.04x for char_tiny and the quickstart, fp32 and bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechforge import precision
from speechforge.data.batching import make_batches, pad_steps, padded_length
from speechforge.data.corpus import Utterance
from speechforge.data.tokenizers import EOS, SOS, SPECIALS, Tokenizer

# the first id a tokenizer gives to text, after <pad> <unk> <sos> <eos> <blank>: CTC must not see blank
_FIRST_TEXT_ID = len(SPECIALS)


@dataclass
class MemoryEstimate:
    utterances: int
    frames: int  # the longest utterance's frames: the batch pads to it
    tokens: int  # the longest transcript's tokens, without <sos>/<eos>
    precision: str  # Accelerate's name: "no", "bf16", "fp16"
    parameters: int  # bytes, here and below
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def line(self, max_frames: int | None, optimizer_name: str) -> str:
        padded = self.utterances * self.frames
        limit = f" (data.max_frames = {max_frames})" if max_frames else ""
        return (f"memory estimate for one batch of {self.utterances} x {self.frames} = {padded:,} frames{limit}, "
                f"{precision.name(self.precision)}: {_size(self.total)} = parameters and buffers {_size(self.parameters)} + "
                f"gradients {_size(self.gradients)} + {optimizer_name} state {_size(self.optimizer)} + activations "
                f"{_size(self.activations)} (the tensors one forward and loss save for backward, counted)")


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def heaviest_batch(lengths: list[int], max_frames: int | None, batch_size: int | None, step: int = 1) -> list[int]:
    """The indices of the batch with the most padded frames (longest, rounded up to ``step``
    as batches are padded, x count) among the bucketed batches of a split; of those, the one
    with the longest utterance."""
    batches = make_batches(lengths, max_frames, batch_size, bucketed=True, rng=None, step=step)
    longest = lambda b: max(lengths[i] for i in b)  # noqa: E731
    return max(batches, key=lambda b: (len(b) * padded_length(longest(b), step), longest(b)))


def _storage_bytes(tensors, exclude: set[int]) -> int:
    """Bytes of the distinct storages behind ``tensors``, leaving out those in ``exclude``."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def model_bytes(model: nn.Module) -> int:
    """The model's parameters and buffers (positional tables, say)."""
    return _storage_bytes([*model.parameters(), *model.buffers()], set())


def saved_activation_bytes(model: nn.Module, loss_fn, utterances: int, frames: int, tokens: int, input_dim: int,
                           vocab_size: int, mixed_precision: str) -> int:
    """Bytes autograd keeps for backward after the forward and loss of ``utterances`` synthetic
    utterances of ``frames`` frames and ``tokens`` tokens each, and the outputs the step holds
    until backward; the model's own parameters and buffers are left out (counted apart)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(utterances, frames, input_dim, generator=g)  # (B, T, F)
    text = torch.randint(_FIRST_TEXT_ID, max(vocab_size, _FIRST_TEXT_ID + 1), (utterances, tokens), generator=g)
    tokens_in = torch.cat([torch.full((utterances, 1), SOS), text], dim=1)  # (B, U + 1)
    tokens_out = torch.cat([text, torch.full((utterances, 1), EOS)], dim=1)
    token_lens = torch.full((utterances,), tokens)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    was_training = model.training
    model.train()  # dropout saves its masks in training only
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                precision.autocast(mixed_precision, "cpu"):
            out = model(feats, torch.full((utterances,), frames), tokens_in)
            parts = loss_fn(out, tokens_out, token_lens)
    finally:
        model.train(was_training)
    held = [t for t in out.values() if isinstance(t, torch.Tensor)] + list(parts.values())
    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    return _storage_bytes(saved + held, exclude)


def optimizer_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """The state ``optimizer`` keeps for ``model``, counted after one step on zero gradients
    (Adam and AdamW: two fp32 tensors a parameter; SGD with momentum: one). The step moves
    the parameters at most by weight decay; the model is check's own, thrown away after."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p in params:
        p.grad = None
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return _storage_bytes(state, set())


def estimate(model: nn.Module, loss_fn, optimizer: torch.optim.Optimizer, utterances: list[Utterance],
             tokenizer: Tokenizer, max_frames: int | None, batch_size: int | None, input_dim: int,
             mixed_precision: str) -> MemoryEstimate:
    """The estimate for the heaviest batch of a training split; ``mixed_precision`` as resolved
    for the run's device ("no", "bf16", "fp16")."""
    frame_step, token_step = pad_steps(mixed_precision)
    batch = [utterances[i] for i in heaviest_batch([u.num_frames for u in utterances], max_frames, batch_size,
                                                   frame_step)]
    # the shapes collate pads the batch to
    frames = padded_length(max(u.num_frames for u in batch), frame_step)
    tokens = padded_length(max(len(tokenizer.encode(u.text or "")) for u in batch) + 1, token_step) - 1
    shape = (frames, tokens, input_dim, tokenizer.vocab_size, mixed_precision)
    one, two = (saved_activation_bytes(model, loss_fn, n, *shape) for n in (1, 2))
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    return MemoryEstimate(
        utterances=len(batch), frames=frames, tokens=tokens, precision=mixed_precision,
        parameters=model_bytes(model), gradients=sum(p.numel() * p.element_size() for p in trainable),
        optimizer=optimizer_state_bytes(model, optimizer), activations=one + (len(batch) - 1) * (two - one),
    )


def for_experiment(exp, loss_fn, optimizer: torch.optim.Optimizer, trainer_cfg: dict) -> MemoryEstimate:
    """The estimate for an experiment's training split, at the precision its trainer would
    pick on this machine (the GPU when there is one and trainer.cpu is off)."""
    mixed_precision = precision.planned(trainer_cfg["mixed_precision"], trainer_cfg["cpu"])
    corpus = exp.corpus
    return estimate(exp.model, loss_fn, optimizer, corpus.split("train").utterances, exp.tokenizer,
                    corpus.max_frames, corpus.batch_size, corpus.num_mel_bins, mixed_precision)
