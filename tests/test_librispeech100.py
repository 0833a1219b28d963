"""recipes/librispeech100: ESPnet's LibriSpeech-100 models, counted against ESPnet's own
modules, and each recipe trained for a few steps on the shared LibriSpeech sample with its
settings scaled down on the command line only."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from speechforge import cli, pipeline, recipe as recipe_mod, report

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "librispeech100"
sys.path.insert(0, str(REPO / "benchmarks"))

D, HEADS, VOCAB, MEL = 256, 4, 5000, 80


def linear(i: int, o: int) -> int:
    return i * o + o


def espnet_parameters(encoder: str) -> int:
    """ESPnet's model for the recipe, counted from its modules' definitions (espnet2/asr/encoder/
    {transformer,conformer,e_branchformer}_encoder.py, espnet/nets/pytorch_backend/transformer/
    {subsampling,attention,positionwise_feed_forward,decoder_layer}.py, espnet2/asr/decoder/
    transformer_decoder.py, espnet2/asr/ctc.py): d 256, 4 heads, 12 + 6 blocks, vocabulary 5000."""
    norm = 2 * D
    mha = 4 * linear(D, D)
    rel_mha = mha + D * D + 2 * D  # linear_pos (no bias), pos_bias_u and pos_bias_v
    ffn = lambda units: linear(D, units) + linear(units, D)  # noqa: E731
    freq = ((MEL - 1) // 2 - 1) // 2  # 19 bins after two stride-2 3x3 convolutions
    conv2d = linear(9, D) + (9 * D * D + D) + linear(D * freq, D)
    dw = lambda ch, k: ch * k + ch  # noqa: E731  depthwise Conv1d with bias
    if encoder == "transformer":  # EncoderLayer: self-attention, feed-forward, two norms
        layer = mha + ffn(1024) + 2 * norm
    elif encoder == "conformer":  # macaron feed-forwards, rel. attention, conv module, five norms
        conv_module = linear(D, 2 * D) + dw(D, 31) + 2 * D + linear(D, D)  # pointwise, depthwise, batch norm, pointwise
        layer = 2 * ffn(1024) + rel_mha + conv_module + 5 * norm
    else:  # E-Branchformer: macaron feed-forwards, rel. attention, cgMLP, merge conv and projection
        cgmlp = linear(D, 1024) + 512 * 2 + dw(512, 31) + linear(512, D)
        layer = 2 * ffn(1024) + rel_mha + cgmlp + dw(2 * D, 31) + linear(2 * D, D) + 5 * norm
    encoder_total = conv2d + 12 * layer + norm
    decoder_layer = 2 * mha + ffn(2048) + 3 * norm
    decoder_total = VOCAB * D + 6 * decoder_layer + norm + linear(D, VOCAB)
    return encoder_total + decoder_total + linear(D, VOCAB)  # + the CTC head


def check_output(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(args) == 0
    return out.getvalue()


@pytest.mark.parametrize("name", ["transformer", "conformer", "e_branchformer"])
def test_each_recipe_passes_check_with_espnets_parameter_count(name, tmp_path):
    # an empty root: check builds the model at the recipe's vocabulary without any audio
    text = check_output(["check", str(RECIPES / f"{name}.toml"), "--set", f'data.root="{tmp_path}"'])
    params = int(next(line for line in text.splitlines() if line.startswith("parameters:")).split()[1].replace(",", ""))
    assert params == espnet_parameters(name)
    if name == "e_branchformer":  # the one count ESPnet publishes (egs2/librispeech_100/asr1/README.md)
        assert round(params / 1e6, 2) == 38.47


def test_several_test_folders_are_split_roles_named_by_folder():
    from speechforge.data.corpus import split_roles

    assert split_roles({"train": "a", "dev": "b", "test": ["test-clean", "x/test-other"]}) == {
        "train": "a", "dev": "b", "test-clean": "test-clean", "test-other": "x/test-other"}
    assert split_roles({"train": "a", "dev": "b", "test": ["test-clean"]})["test"] == "test-clean"
    with pytest.raises(recipe_mod.RecipeError, match=r"data\.test: .*distinct names"):
        recipe_mod.validate_component("datasets", {"name": "hw4p2", "root": ".", "test": ["a/t", "b/t"]}, "data")


SCALED_DOWN = [  # the recipes' structure, at a size that trains in seconds on a CPU
    "model.d_model=32", "model.embedding.channels=8", "model.encoder.num_layers=1", "model.encoder.num_heads=2",
    "model.encoder.d_ff=64", "model.decoder.num_layers=1", "model.decoder.num_heads=2", "model.decoder.d_ff=64",
    "tokenizer.vocab_size=60", "data.max_frames=8000", "trainer.epochs=2", "trainer.validate_every_epochs=1",
    "trainer.keep_best=2", 'trainer.mixed_precision="no"', "trainer.trackers=[]", "decode.beam_size=2",
    "decode.max_len=12",
]


@pytest.mark.parametrize("name", ["transformer", "conformer", "e_branchformer"])
def test_each_recipe_trains_on_the_librispeech_sample_and_decodes_every_test_split(name, hw4p2_root, tmp_path):
    # The sample holds stored features (no audio), so the hw4p2 source reads it and speed
    # perturbation (a waveform augmentation) stays out; the batch-level augmentations stay in.
    overrides = [
        'data.name="hw4p2"', f'data.root="{hw4p2_root}"', 'data.test=["test-clean", "dev-clean"]', "data.num_workers=0",
        'data.augment=[{name="time_warp", max_warp=5}, {name="specaugment", freq_masks=2, freq_width=26, '
        'time_masks=5, time_width_ratio=0.05}]', *SCALED_DOWN,
    ]
    if name == "e_branchformer":
        overrides.append("model.encoder.cgmlp_units=64")
    recipe = recipe_mod.load(RECIPES / f"{name}.toml", overrides)
    summary = pipeline.run(recipe, tmp_path / "run", log=lambda msg: None, progress=False)

    assert summary["step"] >= 2 and summary["nonfinite_skips"] == 0
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= e["dev_acc"] <= 1.0 for e in epochs if "dev_cer" in e)
    averaged = torch.load(tmp_path / "run" / "averaged.pt", weights_only=True)["averaged"]
    assert averaged and all(p.startswith("step-") for p in averaged)  # the best validations, as ESPnet averages
    decoded = summary["decode"]
    assert decoded["folder"].endswith("-averaged")
    assert {"dev", "test-clean", "dev-clean"} <= set(decoded)  # each test folder scored on its own
    assert decoded["dev-clean"]["cer"] == decoded["dev"]["cer"]  # the same folder, the same weights
    assert "cer" not in decoded["test-clean"]  # the sample's test-clean has no transcripts
    with pytest.raises(recipe_mod.RecipeError, match=r"--split: no split 'test-other' .* dev, test-clean, dev-clean"):
        pipeline.decode_run(tmp_path / "run", [], log=lambda msg: None, splits=("test-other",))
    page = report.write_report(tmp_path / "run").read_text()
    decodes_table = page[page.index("<h2>Decodes</h2>"):page.index("<h2>Curves</h2>")]
    assert "<th>test-clean CER</th>" in decodes_table and "<th>dev-clean WER</th>" in decodes_table
    assert "<th>test CER</th>" not in decodes_table


def test_recipe_step_benchmark_counts_and_times_one_update(capsys):
    import recipe_step

    assert recipe_step.main(["--cpu-quick", str(RECIPES / "conformer.toml")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["params"] == espnet_parameters("conformer") and row["micro_batch"]["utterances"] == 2
    assert row["flops_per_update"] > 0 and row["step_s"] > 0 and row["hours"] > 0


def test_depthwise_convolution_backward_is_counted_as_twice_its_forward():
    # torch's formula counts a grouped convolution's weight gradient `groups` times over
    from torch.utils.flop_counter import FlopCounterMode

    import recipe_step

    conv = torch.nn.Conv1d(64, 64, 31, padding=15, groups=64)
    x = torch.randn(2, 64, 50, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        y = conv(x)
    fixed = {torch.ops.aten.convolution_backward: recipe_step.grouped_conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=fixed) as backward:
        y.sum().backward()
    assert forward.get_total_flops() == 2 * 2 * 64 * 31 * 50
    assert backward.get_total_flops() == 2 * forward.get_total_flops()
