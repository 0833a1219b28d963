"""The packed decoder step (model/packed.py) against the module path it stands in for."""

from __future__ import annotations

import contextlib

import pytest
import torch

from speechforge import precision
from speechforge.decode.beam import beam_search
from speechforge.decode.greedy import greedy_search
from speechforge.model import packed
from speechforge.recipe import validate_component

V = 11


def small_model(seed: int = 0, activation: str = "relu"):
    torch.manual_seed(seed)
    # head size 12: 1 / sqrt(12) is not a power of two, so its rounding is exercised
    layers = {"num_layers": 2, "num_heads": 2, "d_ff": 40, "dropout": 0.1, "activation": activation}
    spec = validate_component("models", {
        "name": "transformer_ctc", "d_model": 24, "dropout": 0.1, "tie_embeddings": True,
        "embedding": {"name": "conv2d", "time_reduction": 4, "channels": 4},
        "encoder": layers, "decoder": layers,
    }, "model")
    return spec.build(vocab_size=V, input_dim=8).eval()


def encoded(model, lens=(40, 27)):
    feats = torch.randn(len(lens), max(lens), 8, generator=torch.Generator().manual_seed(1))
    return model.encode(feats, torch.tensor(lens))


PICKS = [[2, 0, 0], [1, 1, 2], [0, 2, 1], [2, 2, 2], [1, 0, 2]]  # beams kept (of the first 3), with repeats


def stepped(model, enc_out, enc_lens, use_packed: bool, beams: int = 3, steps: int = 6):
    """Logits of ``steps`` steps under whatever autocast is on, the beams reordered as a beam
    search does and the first utterance dropped half way."""
    out = []
    with precision.autocast_weights(model):
        with contextlib.nullcontext() if use_packed else packed.module_path():
            state = model.init_state(enc_out, enc_lens, beams=beams)
        assert (state.packed is not None) == use_packed
        utts = list(range(enc_out.shape[0]))
        tokens = torch.arange(len(utts) * beams) % (V - 5) + 5
        for t in range(steps):
            out.append(model.step(tokens, state).float())
            keep = None
            if t == steps // 2 and len(utts) > 1:
                utts, keep = utts[1:], torch.arange(1, len(utts))
            pick = torch.tensor(PICKS[t % len(PICKS)] + list(range(3, beams)))
            first = 0 if keep is None else beams  # rows of the utterances still searching
            index = torch.cat([first + i * beams + pick for i in range(len(utts))])
            state = state.select(index, keep)
            tokens = (tokens.index_select(0, index) + t) % (V - 5) + 5
    return out


@pytest.mark.parametrize("activation", ["relu", "gelu", "swish"])
def test_fp32_packed_step_equals_the_module_step(activation):
    model = small_model(activation=activation)
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)  # utterance 2 padded: the memory mask is used
    with torch.inference_mode():
        for got, want in zip(stepped(model, enc_out, enc_lens, True), stepped(model, enc_out, enc_lens, False), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_packed_cache_grows_past_its_first_capacity_as_the_module_caches_do():
    model = small_model()
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
        # 40 steps: the buffer is made for 16 positions and doubles twice
        for got, want in zip(stepped(model, enc_out, enc_lens, True, steps=40),
                             stepped(model, enc_out, enc_lens, False, steps=40), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_finished_search_frees_its_cache_without_the_garbage_collector():
    import gc
    import weakref

    model = small_model()
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
        state = model.init_state(enc_out, enc_lens, beams=2)
        model.step(torch.tensor([5, 6, 7, 8]), state)
        state = state.select(torch.tensor([1, 1, 2, 3]))
        model.step(torch.tensor([5, 6, 7, 8]), state)
        buffer = weakref.ref(state.caches.store["buffer"])
    gc.disable()
    try:
        del state
        assert buffer() is None  # freed by reference counting, as the module path's caches are
    finally:
        gc.enable()


def test_a_decoder_state_replaced_by_select_cannot_step():
    # the buffer is shared and reordered in place: the older state would read moved rows
    model = small_model()
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
        state = model.init_state(enc_out, enc_lens, beams=2)
        tokens = torch.tensor([5, 6, 7, 8])
        model.step(tokens, state)
        newer = state.select(torch.tensor([1, 1, 2, 3]))
        model.step(tokens, newer)
        with pytest.raises(RuntimeError, match="replaced by the one select"):
            model.step(tokens, state)


@pytest.mark.parametrize("beams", [3, 9])  # 6 rows attend in fp32, 18 in bf16
def test_bf16_packed_step_is_as_close_to_fp32_as_the_module_step(beams):
    model = small_model()
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
        fp32 = stepped(model, enc_out, enc_lens, False, beams)
        with torch.autocast("cpu", dtype=torch.bfloat16), packed.products(torch.bfloat16):
            modules = stepped(model, enc_out, enc_lens, False, beams)
            fast = stepped(model, enc_out, enc_lens, True, beams)
            attention = model.init_state(enc_out, enc_lens, beams).packed.attention_dtype
    assert attention == (torch.float32 if 2 * beams <= packed.FP32_ATTENTION_ROWS else torch.bfloat16)
    err_modules = max(float((m - f).abs().max()) for m, f in zip(modules, fp32))
    err_fast = max(float((p - f).abs().max()) for p, f in zip(fast, fp32))
    assert 0 < err_fast <= 1.25 * err_modules


def test_a_bf16_search_on_fp32_products_is_closer_to_fp32_than_on_bf16_products():
    # the weights are the bf16-rounded ones either way (precision.autocast_weights); only
    # the products' and activations' dtype differs
    model = small_model()
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
        fp32 = stepped(model, enc_out, enc_lens, True)
        asked = {}
        for dtype in (torch.float32, torch.bfloat16):
            with torch.autocast("cpu", dtype=torch.bfloat16), packed.products(dtype):
                assert model.init_state(enc_out, enc_lens, beams=3).packed.dtype == dtype
                asked[dtype] = stepped(model, enc_out, enc_lens, True)
    err = {dtype: max(float((a - f).abs().max()) for a, f in zip(out, fp32, strict=True)) for dtype, out in asked.items()}
    assert 0 < err[torch.float32] < err[torch.bfloat16]


@pytest.mark.parametrize("bf16_s, fp32_s, want", [
    (1.5, 1.0, torch.float32),   # fp32 steps a third faster: taken
    (1.1, 1.0, torch.bfloat16),  # within the margin: the asked-for bf16 stays
    (0.6, 1.0, torch.bfloat16),
])
def test_a_bf16_search_takes_fp32_products_only_where_they_measure_clearly_faster(monkeypatch, bf16_s, fp32_s, want):
    model = small_model()
    calls = []

    def timed(step, rows, steps=6, frames=64):
        calls.append((step.dtype, rows))
        return bf16_s if step.dtype == torch.bfloat16 else fp32_s

    monkeypatch.setattr(packed, "_step_seconds", timed)
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.init_state(enc_out, enc_lens, beams=3).packed.dtype == want
        measured = len(calls)
        assert {rows for _, rows in calls} == {6}  # 2 utterances x 3 beams
        # measured once per bucket of row counts (5-8 here): the same search again, or one
        # of 8 rows, reads the choice
        assert model.init_state(enc_out, enc_lens, beams=3).packed.dtype == want
        assert model.init_state(enc_out, enc_lens, beams=4).packed.dtype == want
        assert len(calls) == measured
        model.init_state(enc_out, enc_lens, beams=2)
        assert {rows for _, rows in calls[measured:]} == {4}
    assert packed.product_choices(model.decoder) == {8: (want, bf16_s / fp32_s), 4: (want, bf16_s / fp32_s)}


def test_fp32_searches_find_what_the_module_path_finds():
    model = small_model()
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
        options = dict(beam_size=4, nbest=3, ctc_weight=0.3, length_bonus=0.5)
        for search, kwargs in ((beam_search, options), (greedy_search, {})):
            fast = search(model, enc_out, enc_lens, **kwargs)
            with packed.module_path():
                modules = search(model, enc_out, enc_lens, **kwargs)
            assert [[h.tokens for h in hyps] for hyps in fast] == [[h.tokens for h in hyps] for hyps in modules]
            for a, b in zip(fast, modules):
                assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_a_prefix_fed_at_once_equals_the_module_path():
    model = small_model()
    prefix = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 5]])
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
        fast = model.init_state(enc_out, enc_lens)
        with packed.module_path():
            modules = model.init_state(enc_out, enc_lens)
        torch.testing.assert_close(model.step(prefix, fast), model.step(prefix, modules), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.step(prefix[:, 0], fast), model.step(prefix[:, 0], modules), rtol=1e-5, atol=1e-5)


def test_packed_weights_are_kept_until_a_weight_changes():
    model = small_model()
    with torch.inference_mode():
        enc_out, enc_lens = encoded(model)
        first = model.init_state(enc_out, enc_lens).packed
        assert model.init_state(enc_out, enc_lens).packed.layers is first.layers
        before = model.step(torch.tensor([5, 6]), model.init_state(enc_out, enc_lens))
    with torch.no_grad():
        model.decoder.stack.layers[0].ffn[0].weight.mul_(1.5)  # in place, as an optimizer step
    with torch.inference_mode():
        state = model.init_state(enc_out, enc_lens)
        assert state.packed.layers is not first.layers
        after = model.step(torch.tensor([5, 6]), state)
        with packed.module_path():
            want = model.step(torch.tensor([5, 6]), model.init_state(enc_out, enc_lens))
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)


def test_the_module_path_is_kept_where_packing_does_not_apply():
    model = small_model()
    with torch.no_grad():
        enc_out, enc_lens = encoded(model)
        assert model.init_state(enc_out, enc_lens).packed is not None
    # under autograd, in training mode, or for a float64 model: the modules step
    assert model.init_state(enc_out, enc_lens).packed is None
    with torch.no_grad():
        assert model.train().init_state(enc_out, enc_lens).packed is None
        model.eval().double()
        assert model.init_state(enc_out.double(), enc_lens).packed is None


def test_a_language_model_steps_through_packed_weights_as_through_its_modules():
    torch.manual_seed(0)
    lm = validate_component("models", {"name": "transformer_lm", "d_model": 24, "decoder": {
        "num_layers": 2, "num_heads": 2, "d_ff": 40}}, "model").build(vocab_size=V).eval()
    prefix = torch.tensor([[1, 5, 6], [1, 7, 7]])
    with torch.inference_mode():
        fast = lm.init_state(2)
        with packed.module_path():
            modules = lm.init_state(2)
        assert fast.packed is not None and modules.packed is None
        for tokens in (prefix, torch.tensor([8, 9]), torch.tensor([5, 5])):
            torch.testing.assert_close(lm.step(tokens, fast), lm.step(tokens, modules), rtol=1e-5, atol=1e-5)
            fast, modules = fast.select(torch.tensor([1, 1])), modules.select(torch.tensor([1, 1]))


def test_a_decoder_with_a_swapped_norm_keeps_the_module_path():
    model = small_model()
    model.decoder.stack.layers[1].norm3 = torch.nn.RMSNorm(24)  # as a plugin might
    with torch.no_grad():
        enc_out, enc_lens = encoded(model)
        assert model.init_state(enc_out, enc_lens).packed is None


def test_a_model_built_under_inference_mode_decodes_on_either_path():
    # inference tensors keep no version counter: nothing derived from them is held
    with torch.inference_mode():
        model = small_model()
        enc_out, enc_lens = encoded(model)
        for bf16 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                fast = beam_search(model, enc_out, enc_lens, beam_size=3, ctc_weight=0.3)
                with packed.module_path():
                    modules = beam_search(model, enc_out, enc_lens, beam_size=3, ctc_weight=0.3)
            assert all(h and h[0].tokens is not None for h in fast + modules)
            if not bf16:
                assert [h[0].tokens for h in fast] == [h[0].tokens for h in modules]
