"""Progressive training and freezing: what a stage changes in a model, as plain functions.

A stage (``[[stages]]`` in the recipe) may set the number of active encoder and
decoder layers, dropout, label smoothing, SpecAugment, the data used, and which
parameters are frozen. Layers are built up front at full depth; a stage activates
more of them, either fresh or as copies of the last active layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from speechforge.model.attention import MultiHeadAttention
from speechforge.recipe import InitSection, StageSection


@dataclass
class StagePlan:
    """The stages of a run, with the init freezing folded in as stage-independent rules."""

    stages: list[StageSection]
    init: InitSection | None = None
    transferred: list[str] = field(default_factory=list)  # parameter names copied from an LM

    @property
    def progressive(self) -> bool:
        return bool(self.stages)


def set_dropout(model: nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif isinstance(module, MultiHeadAttention):
            module.dropout = p


def grow(stack: nn.Module, active: int, copy_last: bool) -> list[int]:
    """Activate the first ``active`` layers of a stack; new ones may copy the last active one."""
    active = min(active, len(stack.layers))
    added = list(range(stack.num_active, active))
    if copy_last and stack.num_active > 0:
        source = stack.layers[stack.num_active - 1].state_dict()
        for i in added:
            stack.layers[i].load_state_dict(source)
    stack.num_active = active
    return added


def freeze(model: nn.Module, patterns: list[str], names: set[str] | None = None) -> int:
    """Unfreeze everything, then freeze parameters whose name matches a pattern or is in
    ``names``; returns how many parameter values are frozen."""
    frozen = 0
    names = names or set()
    for name, param in model.named_parameters():
        stop = name in names or any(re.search(p, name) for p in patterns)
        param.requires_grad_(not stop)
        frozen += param.numel() if stop else 0
    return frozen


def earlier_layers(prefix: str, count: int) -> list[str]:
    return [rf"^{re.escape(prefix)}\.{i}\." for i in range(count)]


def apply_stage(model, stage: StageSection, loss_fn, augment_on: list[bool], frozen_names: set[str]) -> dict:
    """Put the model, loss and augmentation in the state the stage asks for; return a log record."""
    enc, dec = model.encoder, model.decoder.stack
    before = (enc.num_active, dec.num_active)
    added_enc = grow(enc, stage.encoder_layers or len(enc.layers), stage.new_layers == "copy")
    added_dec = grow(dec, stage.decoder_layers or len(dec.layers), stage.new_layers == "copy")
    if stage.dropout is not None:
        set_dropout(model, stage.dropout)
    if stage.label_smoothing is not None and hasattr(loss_fn, "label_smoothing"):
        loss_fn.label_smoothing = stage.label_smoothing
    if stage.specaugment is not None:
        augment_on[0] = stage.specaugment
    patterns = list(stage.freeze)
    if stage.freeze_earlier:
        patterns += earlier_layers("encoder.layers", before[0]) + earlier_layers("decoder.stack.layers", before[1])
    frozen = freeze(model, patterns, frozen_names)
    return {
        "stage": stage.name, "encoder_layers": enc.num_active, "decoder_layers": dec.num_active,
        "new_encoder_layers": added_enc, "new_decoder_layers": added_dec, "frozen_parameters": frozen,
    }


def fallback_stage(epochs: int) -> StageSection:
    """A run without [[stages]] is one stage that trains everything."""
    return StageSection(name="all", epochs=epochs)
