"""LM -> ASR: decoder initialisation, the shared tokenizer, and shallow fusion."""

from __future__ import annotations

import pytest
import torch

from speechforge import recipe as recipe_mod
from speechforge.data.tokenizers import SOS, CharTokenizer, load_tokenizer
from speechforge.lm.scorer import transformer_lm as lm_scorer
from speechforge.lm.transfer import TransferError, load_lm, lm_run as lm_run_tokenizer, transfer_decoder
from speechforge.recipe import RecipeError


def asr_model(vocab_size: int, d_model: int = 32, num_layers: int = 2, d_ff: int = 64):
    spec = recipe_mod.validate_component("models", {
        "name": "transformer_ctc", "d_model": d_model, "dropout": 0.0,
        "embedding": {"name": "conv2d", "time_reduction": 4, "channels": 4},
        "encoder": {"num_layers": 1, "num_heads": 2, "d_ff": 32},
        "decoder": {"num_layers": num_layers, "num_heads": 2, "d_ff": d_ff},
    }, "model")
    return spec.build(vocab_size=vocab_size, input_dim=20)


def test_transfer_copies_matching_tensors_exactly_and_leaves_cross_attention_fresh(lm_run):
    lm, tokenizer = load_lm(lm_run[0])
    asr = asr_model(tokenizer.vocab_size)
    encoder_before = {k: v.clone() for k, v in asr.state_dict().items() if not k.startswith("decoder.")}
    report = transfer_decoder(asr, lm_run[0], tokenizer)
    lm_state, asr_state = lm.state_dict(), asr.state_dict()
    assert set(report.transferred) == set(lm_state) and not report.unused
    for name in report.transferred:
        assert torch.equal(asr_state[name], lm_state[name]), name
    assert report.fresh and all(".cross_attn." in n or ".norm2." in n for n in report.fresh)
    assert {"decoder.stack.layers.0.cross_attn.q_proj.weight", "decoder.stack.layers.1.norm2.bias"} <= set(report.fresh)
    assert all(torch.equal(v, asr_state[k]) for k, v in encoder_before.items())
    assert "left fresh" in str(report)


def test_a_shallower_asr_decoder_takes_the_first_layers(lm_run):
    _, tokenizer = load_lm(lm_run[0])
    report = transfer_decoder(asr_model(tokenizer.vocab_size, num_layers=1), lm_run[0])
    assert report.unused and all(n.startswith("decoder.stack.layers.1.") for n in report.unused)


def test_a_vocabulary_size_mismatch_names_the_tensor_and_copies_nothing(lm_run):
    _, tokenizer = load_lm(lm_run[0])
    asr = asr_model(tokenizer.vocab_size + 3)
    before = {k: v.clone() for k, v in asr.state_dict().items()}
    with pytest.raises(TransferError, match=r"decoder\.embed\.weight: the LM has shape \(\d+, 32\), "
                                            r"the ASR model \(\d+, 32\): the vocabularies differ"):
        transfer_decoder(asr, lm_run[0])
    assert all(torch.equal(v, asr.state_dict()[k]) for k, v in before.items())


def test_a_feed_forward_width_mismatch_names_the_tensor(lm_run):
    _, tokenizer = load_lm(lm_run[0])
    with pytest.raises(TransferError, match=r"decoder\.stack\.layers\.0\.ffn\.0\.weight: the LM has shape \(64, 32\), "
                                            r"the ASR model \(48, 32\): the decoders differ in size"):
        transfer_decoder(asr_model(tokenizer.vocab_size, d_ff=48), lm_run[0])


def test_a_same_size_but_different_vocabulary_is_refused(lm_run):
    _, tokenizer = load_lm(lm_run[0])
    other = CharTokenizer("".join(chr(ord("a") + i) for i in range(len(tokenizer.chars))))
    with pytest.raises(TransferError, match="id 5 is"):
        transfer_decoder(asr_model(tokenizer.vocab_size), lm_run[0], other)


def test_the_lm_run_tokenizer_keeps_the_lms_ids_whatever_it_is_fitted_on(lm_run, tmp_path):
    tok = lm_run_tokenizer(str(lm_run[0]))
    original = load_tokenizer(lm_run[0] / "tokenizer")
    tok.fit(["ZZZ QQQ"])
    assert tok.vocab_size == original.vocab_size and tok.encode("THE CAT") == original.encode("THE CAT")
    tok.save(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").chars == original.chars


def test_fusion_scorer_matches_the_full_forward_after_reordering(lm_run):
    lm, tokenizer = load_lm(lm_run[0])
    scorer = lm_scorer(tokenizer=tokenizer, run_dir=str(lm_run[0]))
    seqs = torch.tensor([[SOS] + tokenizer.encode(t) for t in ("THE CAT", "A DOG S", "HE SAID")])
    state = scorer.init_state(3)
    for t in range(seqs.shape[1] - 1):
        _, state = scorer.score(seqs[:, t], state)
    index = torch.tensor([1, 1, 2, 0])
    state = scorer.select(state, index)
    log_probs, _ = scorer.score(seqs[index, -1], state)
    expected = lm(seqs[index]).log_softmax(-1)[:, -1]
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)


def test_fusion_with_another_tokenizer_is_refused_with_the_key(lm_run):
    with pytest.raises(RecipeError, match="decode.lm.run_dir: .* another tokenizer"):
        lm_scorer(tokenizer=CharTokenizer("xyz"), run_dir=str(lm_run[0]))


def test_beam_search_fuses_the_lm_named_in_a_recipe(lm_run):
    _, tokenizer = load_lm(lm_run[0])
    spec = recipe_mod.validate_component("decoders", {
        "name": "beam", "beam_size": 3, "max_len": 5, "lm_weight": 0.5,
        "lm": {"name": "transformer_lm", "run_dir": str(lm_run[0])}}, "decode")
    decoder = spec.build().bind(tokenizer)
    asr = asr_model(tokenizer.vocab_size).eval()
    torch.manual_seed(0)
    enc_out, enc_lens = asr.encode(torch.randn(2, 40, 20), torch.tensor([40, 32]))
    hyps = decoder(asr, enc_out, enc_lens)
    assert len(hyps) == 2 and all(len(h[0].tokens) <= 5 for h in hyps)

