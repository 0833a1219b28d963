"""The Conformer encoder: relative positions, padding that never leaks, and the model
it slots into (CTC, cached decoding, bf16, progressive stages)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from speechforge.model.conformer import MaskedBatchNorm, relative_positions, rel_shift
from speechforge.recipe import RecipeError, validate_component


def build(train: bool = False, **encoder):
    section = {
        "name": "transformer_ctc", "d_model": 32, "dropout": 0.0,
        "embedding": {"name": "conv2d", "time_reduction": 4, "channels": 8, "positions": "none"},
        "encoder": {"name": "conformer", "num_layers": 2, "num_heads": 4, "d_ff": 64, "kernel_size": 7,
                    "dropout": 0.0, **encoder},
        "decoder": {"num_layers": 1, "num_heads": 4, "d_ff": 64, "dropout": 0.0},
    }
    torch.manual_seed(0)
    model = validate_component("models", section, "model").build(vocab_size=11, input_dim=20)
    return model.train(train)


def test_rel_shift_puts_each_offset_under_its_key():
    b, h, t = 2, 3, 6
    scores = torch.randn(b, h, t, 2 * t - 1)
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    expected = scores[..., i, t - 1 - i + j]  # column c holds offset T-1-c = i - j
    torch.testing.assert_close(rel_shift(scores), expected)
    with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):  # the export's path
        torch.testing.assert_close(rel_shift(scores), expected)


def test_relative_positions_run_from_t_minus_one_to_minus_t_plus_one():
    pos = relative_positions(4, 8)
    assert pos.shape == (7, 8)
    torch.testing.assert_close(pos[3], torch.tensor([0.0, 1.0] * 4))  # offset 0: sin 0, cos 0
    torch.testing.assert_close(pos[0, 0], torch.sin(torch.tensor(3.0)))
    torch.testing.assert_close(pos[6, 0], torch.sin(torch.tensor(-3.0)))


def test_the_stack_cuts_positions_from_its_table_and_grows_it():
    stack = build().encoder
    for length in (5, 1024, 3000):
        torch.testing.assert_close(stack.positions(length), relative_positions(length, 32))


@pytest.mark.parametrize("conv_norm", ["batch", "layer"])
@pytest.mark.parametrize("train", [False, True])
def test_noise_in_the_padding_does_not_reach_real_frames(conv_norm, train):
    """Padding filled with noise, in training mode too (batch statistics from real frames
    only) and in evaluation: the real frames' encoder outputs do not move."""
    torch.manual_seed(1)
    feats = torch.randn(2, 120, 20)
    lens = torch.tensor([120, 70])
    quiet, noisy = feats.clone(), feats.clone()
    quiet[1, 70:] = 0.0
    noisy[1, 70:] = 50.0 * torch.randn(50, 20)
    outs = []
    for x in (quiet, noisy):
        model = build(train, conv_norm=conv_norm)  # fresh running statistics for each
        enc, enc_lens = model.encode(x, lens)
        outs.append((enc, enc_lens))
    (a, lens_a), (b, _) = outs
    n = int(lens_a[1])
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a[1, :n], b[1, :n], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a[1, n:], b[1, n:])  # the padding itself did change


@pytest.mark.parametrize("conv_norm", ["batch", "layer"])
def test_more_padding_in_training_leaves_real_frames_alone(conv_norm):
    """The same batch padded to 120 and to 160 frames, in training mode: how much padding
    there is must not change the batch-norm statistics, hence not the real frames."""
    torch.manual_seed(3)
    feats, lens = torch.randn(2, 120, 20), torch.tensor([120, 70])
    feats[1, 70:] = 0.0
    longer = torch.cat([feats, torch.zeros(2, 40, 20)], 1)
    a, enc_lens = build(True, conv_norm=conv_norm).encode(feats, lens)
    b, _ = build(True, conv_norm=conv_norm).encode(longer, lens)
    for i, n in enumerate(enc_lens.tolist()):
        torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-5, rtol=1e-4)


def test_an_utterance_encodes_alike_alone_and_padded_in_a_batch():
    model = build()
    torch.manual_seed(2)
    short = torch.randn(1, 45, 20)
    alone, lens = model.encode(short, torch.tensor([45]))
    batch = torch.cat([torch.cat([short, torch.randn(1, 55, 20)], 1), torch.randn(1, 100, 20)])
    padded, _ = model.encode(batch, torch.tensor([45, 100]))
    n = int(lens[0])
    torch.testing.assert_close(padded[0, :n], alone[0, :n], atol=1e-5, rtol=1e-4)


def test_masked_batch_norm_statistics_come_from_real_frames():
    norm = MaskedBatchNorm(3, momentum=1.0)
    x = torch.randn(2, 5, 3)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    norm.train()(x, valid)
    real = x[valid]  # (7, 3)
    torch.testing.assert_close(norm.running_mean, real.mean(0))
    torch.testing.assert_close(norm.running_var, real.var(0))  # unbiased, as BatchNorm keeps it


def test_even_kernel_is_refused_with_its_key():
    with pytest.raises(RecipeError, match="model.encoder.kernel_size"):
        build(kernel_size=8)


def test_cached_decoding_matches_the_uncached_prefix():
    model = build()
    feats, lens = torch.randn(2, 80, 20), torch.tensor([80, 61])
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        state = model.init_state(enc, enc_lens)
        prefix = torch.tensor([[1, 5, 7, 3], [1, 4, 4, 9]])
        for t in range(prefix.shape[1]):
            cached = model.step(prefix[:, t], state)
        torch.testing.assert_close(cached, model.step_uncached(prefix, enc, enc_lens), atol=1e-5, rtol=1e-4)


def test_trains_under_bf16_autocast_with_finite_gradients():
    model = build(train=True)
    feats, lens = torch.randn(2, 80, 20), torch.tensor([80, 61])
    tokens = torch.randint(4, 11, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(feats, lens, tokens)
    loss = out["logits"].float().logsumexp(-1).mean() + out["ctc_log_probs"].mean()
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.layers[0].conv.norm.running_mean.dtype == torch.float32


def test_a_conformer_run_grows_in_stages_in_bf16_and_decodes_with_ctc(tiny_recipe, tmp_path, capsys):
    """The whole path with the Conformer: a recipe line picks it, progressive stages grow
    it, it trains under bf16 autocast, and beam search with CTC scoring decodes it."""
    import json

    from speechforge.cli import main

    recipe = tmp_path / "conformer.toml"
    recipe.write_text(tiny_recipe.read_text() + """
[[stages]]
name = "shallow"
steps = 2
encoder_layers = 1

[[stages]]
name = "all"
epochs = 1
""")
    run_dir = tmp_path / "run"
    code = main(["--quiet", "run", str(recipe), "--run-dir", str(run_dir),
                 "--set", "model.encoder.name=conformer", "--set", "model.encoder.kernel_size=5",
                 "--set", "model.embedding.positions=none", "--set", "trainer.mixed_precision=bf16",
                 "--set", "decode.name=beam", "--set", "decode.beam_size=3", "--set", "decode.ctc_weight=0.3"])
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "bf16"
    starts = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if "stage_start" in l]
    assert [s["encoder_layers"] for s in starts] == [1, 2]
    (folder,) = (run_dir / "decode").iterdir()
    assert folder.name.startswith("beam-beam_size3-ctc_weight0.3")
    assert len((folder / "dev.hyps.jsonl").read_text().splitlines()) == 2
