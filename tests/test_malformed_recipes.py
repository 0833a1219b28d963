"""Every malformed recipe fails before any compute: exit status 2, the key path first,
a one-line reason, no traceback."""

from __future__ import annotations

import pytest

from speechforge.cli import main

# (--set overrides, the key path the error must start with)
CASES = [
    (["data.max_frames=\"lots\""], "data.max_frames"),
    (["data.max_frames=0"], "data.max_frames"),
    (["data.root=/does/not/exist"], "data.root"),
    (["data.shuffle_buffer=3"], "data.shuffle_buffer"),
    (["data.on_bad_file=\"ignore\""], "data.on_bad_file"),
    (["data.normalization.name=\"zscore\""], "data.normalization.name"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["tokenizer.name=\"wordpiece\""], "tokenizer.name"),
    (["tokenizer.alphabet=3"], "tokenizer.alphabet"),
    (["tokenizer.name=\"bpe\"", "tokenizer.vocab_size=\"5k\""], "tokenizer.vocab_size"),
    (["tokenizer.name=\"bpe\"", "tokenizer.vocab_size=4"], "tokenizer.vocab_size"),
    (["model.name=\"conformer\""], "model.name"),
    (["model.d_model=\"wide\""], "model.d_model"),
    (["model.dropout=-0.1"], "model.dropout"),
    (["model.tie_embeddings=\"maybe\""], "model.tie_embeddings"),
    (["model.encoder.num_layers=\"six\""], "model.encoder.num_layers"),
    (["model.encoder.num_layers=0"], "model.encoder.num_layers"),
    (["model.encoder.dropout=1.5"], "model.encoder.dropout"),
    (["model.encoder.layers=3"], "model.encoder.layers"),
    (["model.decoder.num_heads=0"], "model.decoder.num_heads"),
    (["model.decoder.activation=\"tanh\""], "model.decoder.activation"),
    (["model.embedding.time_reduction=3"], "model.embedding.time_reduction"),
    (["model.embedding.name=\"vgg\""], "model.embedding.name"),
    (["loss.ctc_weight=1.5"], "loss.ctc_weight"),
    (["loss.label_smoothing=-0.1"], "loss.label_smoothing"),
    (["loss.name=\"mse\""], "loss.name"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=\"fast\""], "optimizer.lr"),
    (["optimizer.betas=[0.9]"], "optimizer.betas[1]"),
    (["optimizer.name=\"lamb\""], "optimizer.name"),
    (["scheduler.warmup_steps=-1"], "scheduler.warmup_steps"),
    (["scheduler.name=\"cyclic\""], "scheduler.name"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.mixed_precision=\"fp8\""], "trainer.mixed_precision"),
    (["trainer.grad_accum_steps=\"two\""], "trainer.grad_accum_steps"),
    (["trainer.grad_clip=-1.0"], "trainer.grad_clip"),
    (["decode.max_len_ratio=0"], "decode.max_len_ratio"),
    (["decode.name=\"viterbi\""], "decode.name"),
    (["seed=-1"], "seed"),
    (["modle.d_model=3"], "modle.d_model"),
    (["seed.value=3"], "seed.value"),
    (["model"], "--set"),
]


@pytest.mark.parametrize("overrides,path", CASES, ids=[c[1] + ":" + c[0][-1] for c in CASES])
def test_malformed_recipe_names_the_key_and_exits_2(tiny_recipe, overrides, path, capsys):
    args = ["run", str(tiny_recipe), "--run-dir", "/nonexistent/never-created"]
    for item in overrides:
        args += ["--set", item]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {path}:"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_malformed_toml_file(tmp_path, capsys):
    path = tmp_path / "broken.toml"
    path.write_text('[model]\nname = "transformer_ctc"\nd_model = 256\nd_model = 128\n')
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "malformed TOML" in err and str(path) in err


def test_missing_recipe_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.toml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err


def test_missing_section(tiny_recipe, tmp_path, capsys):
    text = tiny_recipe.read_text()
    path = tmp_path / "r.toml"
    path.write_text(text[: text.index("[decode]")])
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: decode: required section is missing")


def test_debug_shows_the_traceback(tiny_recipe):
    with pytest.raises(Exception):
        main(["--debug", "check", str(tiny_recipe), "--set", "loss.ctc_weight=1.5"])
