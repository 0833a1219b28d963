"""The ASR model: shapes, padding invariance, and each speech embedding."""

from __future__ import annotations

import pytest
import torch

from speechforge.model.transformer import count_parameters
from speechforge.recipe import validate_component


def build(embedding: str = "conv2d", **over):
    section = {
        "name": "transformer_ctc", "d_model": 32, "dropout": 0.0,
        "embedding": {"name": embedding, "time_reduction": 4},
        "encoder": {"num_layers": 2, "num_heads": 4, "d_ff": 64, "dropout": 0.0},
        "decoder": {"num_layers": 2, "num_heads": 4, "d_ff": 64, "dropout": 0.0},
        **over,
    }
    if embedding != "lstm":
        section["embedding"]["channels"] = 8
    torch.manual_seed(0)
    return validate_component("models", section, "model").build(vocab_size=11, input_dim=20).eval()


@pytest.mark.parametrize("embedding", ["conv2d", "lstm", "conv2d_lstm"])
def test_time_is_reduced_and_shapes_line_up(embedding):
    model = build(embedding)
    feats, lens = torch.randn(3, 101, 20), torch.tensor([101, 80, 33])
    tokens = torch.randint(5, 11, (3, 7))
    out = model(feats, lens, tokens)
    assert out["logits"].shape == (3, 7, 11)
    assert out["ctc_log_probs"].shape[:2] == out["enc_out"].shape[:2]
    assert out["enc_out"].shape[1] in (24, 25)  # 101 frames / 4
    assert (out["enc_lens"] <= out["enc_out"].shape[1]).all()
    torch.testing.assert_close(out["ctc_log_probs"].exp().sum(-1), torch.ones(out["ctc_log_probs"].shape[:2]))


@pytest.mark.parametrize("embedding", ["conv2d", "lstm", "conv2d_lstm"])
def test_padding_does_not_change_an_utterance(embedding):
    model = build(embedding)
    torch.manual_seed(1)
    short = torch.randn(1, 45, 20)
    tokens = torch.randint(5, 11, (1, 6))
    alone = model(short, torch.tensor([45]), tokens)
    batch = torch.cat([short, torch.zeros(1, 55, 20)], 1)
    padded = model(torch.cat([batch, torch.randn(1, 100, 20)]), torch.tensor([45, 100]), torch.cat([tokens, tokens]))
    n = int(alone["enc_lens"][0])
    torch.testing.assert_close(padded["enc_out"][0, :n], alone["enc_out"][0, :n], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded["logits"][0], alone["logits"][0], atol=1e-5, rtol=1e-4)


def test_decoder_is_causal():
    model = build()
    feats, lens = torch.randn(1, 60, 20), torch.tensor([60])
    a = torch.tensor([[2, 5, 6, 7, 8]])
    b = torch.tensor([[2, 5, 6, 9, 10]])
    la, lb = model(feats, lens, a)["logits"], model(feats, lens, b)["logits"]
    torch.testing.assert_close(la[:, :3], lb[:, :3])
    assert not torch.allclose(la[:, 3:], lb[:, 3:])


def test_tied_embeddings_share_one_matrix():
    tied, untied = build(tie_embeddings=True), build(tie_embeddings=False)
    assert tied.decoder.out.weight is tied.decoder.embed.weight
    assert count_parameters(untied) - count_parameters(tied) == 11 * 32


def test_without_ctc_head_there_are_no_ctc_outputs():
    model = build(ctc=False)
    out = model(torch.randn(1, 40, 20), torch.tensor([40]), torch.tensor([[2, 5]]))
    assert "ctc_log_probs" not in out and model.ctc_head is None


def test_attention_dropout_is_its_own_knob_and_defaults_to_dropout():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 16)

    def two_training_passes(**args):
        stack = validate_component("encoder_layers", {"name": "prenorm", "num_layers": 1, **args}, "enc")
        stack = stack.build(d_model=16).train()
        return stack(x, None), stack(x, None)

    # only attention dropout: training passes differ; without it they are equal
    a, b = two_training_passes(dropout=0.0, attention_dropout=0.5)
    assert not torch.allclose(a, b)
    a, b = two_training_passes(dropout=0.0)
    assert torch.equal(a, b)
    # unset, it follows dropout; set, it overrides dropout in both stacks
    enc = validate_component("encoder_layers", {"name": "prenorm", "dropout": 0.2}, "enc").build(d_model=16)
    dec = validate_component(
        "decoder_layers", {"name": "prenorm", "dropout": 0.2, "attention_dropout": 0.0}, "dec"
    ).build(d_model=16)
    assert {layer.self_attn.dropout for layer in enc.layers} == {0.2}
    assert {m.dropout for layer in dec.layers for m in (layer.self_attn, layer.cross_attn)} == {0.0}


def test_beams_sharing_one_memory_row_match_a_memory_copied_per_beam():
    model = build()
    feats, lens = torch.randn(2, 60, 20), torch.tensor([60, 44])
    with torch.no_grad():
        enc_out, enc_lens = model.encode(feats, lens)
        rows = torch.tensor([0, 0, 0, 1, 1, 1])  # three beams per utterance
        shared = model.init_state(enc_out, enc_lens, beams=3)
        copied = model.init_state(enc_out, enc_lens).select(rows)
        tokens = torch.tensor([2, 5, 6, 2, 7, 8])
        # beams swap parents, then utterance 0 leaves the batch
        moves = [(torch.tensor([1, 0, 0, 5, 3, 4]), None), (torch.tensor([3, 4, 5]), torch.tensor([1])), None]
        for move in moves:
            torch.testing.assert_close(model.step(tokens, shared), model.step(tokens, copied))
            if move is not None:
                index, keep = move
                shared, copied = shared.select(index, keep), copied.select(index)
                tokens = tokens.index_select(0, index) + 1
        layer = model.decoder.stack.layers[0]
        x = torch.randn(6, 2, 32)
        valid = model.init_state(enc_out, enc_lens).memory_valid  # utterance 1 padded
        out_s, w_s = layer.cross_attend(x, model.memory(enc_out)[0], valid, True)
        kv = [t.index_select(0, rows) for t in model.memory(enc_out)[0]]
        out_c, w_c = layer.cross_attend(x, kv, valid.index_select(0, rows), True)
    torch.testing.assert_close(out_s, out_c)
    torch.testing.assert_close(w_s, w_c)
