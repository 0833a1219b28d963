"""speechforge check's memory estimate: each term counted against an independent count, and
against the peak a real training step reaches (benchmarks/memory_estimate.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from speechforge import recipe as recipes
from speechforge.cli import main
from speechforge.data.batching import make_batches
from speechforge.model.transformer import count_parameters
from speechforge.train import memory

from tests.conftest import REPO


@pytest.fixture
def tiny(tiny_recipe):
    """The tiny recipe's model, loss and optimizer, built as speechforge check builds them."""
    recipe = recipes.load(tiny_recipe)
    model = recipe.model.build(vocab_size=40, input_dim=80)
    return model, recipe.loss.build(), recipe.optimizer.build(model=model)


class LinearReLU(nn.Module):
    """A model whose saved tensors can be counted by hand: Linear saves its input (and its
    weight, a parameter), ReLU its output."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(80, 16)

    def forward(self, feats, feat_lens, tokens_in):
        return {"hidden": self.linear(feats).relu()}  # (B, T, 16)


def test_activations_count_each_saved_storage_once_and_leave_out_the_parameters():
    loss = lambda out, tokens_out, token_lens: {"loss": out["hidden"].sum()}  # noqa: E731
    counted = memory.saved_activation_bytes(LinearReLU(), loss, 3, 50, 4, 80, 40, "no")
    # the input (3, 50, 80), the ReLU output (3, 50, 16) that is also the output, the scalar loss
    assert counted == 4 * (3 * 50 * 80 + 3 * 50 * 16 + 1)


def test_activations_from_one_and_two_utterances_equal_the_count_of_the_whole_batch(tiny):
    model, loss, _ = tiny
    shape = (300, 20, 80, 40, "no")
    one, two, five = (memory.saved_activation_bytes(model, loss, n, *shape) for n in (1, 2, 5))
    assert five == one + 4 * (two - one)
    # and they grow with the frames: twice the frames, about twice the bytes
    longer = memory.saved_activation_bytes(model, loss, 2, 600, 20, 80, 40, "no")
    assert 1.8 < longer / two < 2.1


def test_bf16_autocast_saves_fewer_bytes_than_fp32(tiny):
    model, loss, _ = tiny
    fp32, bf16 = (memory.saved_activation_bytes(model, loss, 2, 400, 20, 80, 40, p) for p in ("no", "bf16"))
    assert bf16 < 0.9 * fp32


def test_parameters_take_four_bytes_each_and_adamw_two_fp32_tensors_a_parameter(tiny):
    model, _, optimizer = tiny
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert memory.model_bytes(model) == 4 * count_parameters(model) + buffers
    tensors = len({id(p) for p in model.parameters()})
    # exp_avg and exp_avg_sq per parameter, and the fused kernel's step count: one fp32 scalar a tensor
    assert memory.optimizer_state_bytes(model, optimizer) == 2 * 4 * count_parameters(model) + 4 * tensors
    assert all(p.grad is None for p in model.parameters())


def test_sgd_without_momentum_keeps_no_state(tiny):
    model, _, _ = tiny
    sgd = recipes.validate_component("optimizers", {"name": "sgd", "momentum": 0.0}, "optimizer").build(model=model)
    assert memory.optimizer_state_bytes(model, sgd) == 0


def test_the_heaviest_batch_is_the_one_with_the_most_padded_frames():
    lengths = [100, 300, 310, 90, 95, 450]
    # bucketed within 1000 padded frames: [90, 95, 100] pads to 300, [300, 310] to 620, [450] alone
    assert sorted(memory.heaviest_batch(lengths, 1000, None)) == [1, 2]
    assert sorted(memory.heaviest_batch(lengths, 1000, 2)) == [2, 5]  # [90, 95] [100, 300] [310, 450]
    assert memory.heaviest_batch(lengths, 400, None) == [5]



def test_the_heaviest_batch_at_a_padding_step_trains_as_one_batch_at_that_step():
    # benchmarks/memory_estimate.py trains on this batch alone: cut at fp32's (no padding), a bf16
    # run pads the same utterances past max_frames and splits them, and measures a smaller step
    lengths = [375] * 8 + [200] * 4
    unpadded = [lengths[i] for i in memory.heaviest_batch(lengths, 3000, None)]
    assert len(make_batches(unpadded, 3000, None, bucketed=True, rng=None, step=32)) == 2
    padded = [lengths[i] for i in memory.heaviest_batch(lengths, 3000, None, step=32)]
    assert len(padded) == 7 and make_batches(padded, 3000, None, bucketed=True, rng=None, step=32) == [list(range(7))]

def test_check_prints_the_estimate_and_its_terms(tiny_recipe, capsys):
    assert main(["check", str(tiny_recipe), "--set", 'trainer.mixed_precision="no"']) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("memory estimate"))
    m = re.fullmatch(r"memory estimate for one batch of (\d+) x (\d+) = ([\d,]+) frames \(data.max_frames = 12000\), "
                     r"fp32: ([\d.]+) MiB = parameters and buffers ([\d.]+) MiB \+ gradients ([\d.]+) MiB \+ "
                     r"adamw state ([\d.]+) MiB \+ activations ([\d.]+) MiB \(.*counted\)", line)
    assert m, line
    utterances, frames, padded = int(m[1]), int(m[2]), int(m[3].replace(",", ""))
    assert utterances * frames == padded <= 12000
    total, *terms = map(float, m.groups()[3:])
    assert abs(total - sum(terms)) <= 0.15  # each term rounded to 0.1 MiB
    assert float(m[7]) == pytest.approx(2 * float(m[6]), abs=0.1)  # Adam: two tensors a gradient


def test_the_estimate_is_within_30_percent_of_the_peak_a_char_tiny_step_reaches(tmp_path, hw4p2_root):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory_estimate.py"),
                           "--recipes", str(REPO / "recipes" / "char_tiny.toml"), "--precisions", "no,bf16",
                           "--steps", "2", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in json.loads(out.read_text()):
        assert 0.7 <= row["estimate"] / row["measured"] <= 1.3, row
