"""Attention beam search against exhaustive search, greedy search, one-at-a-time decoding
and CTC prefix beam search, on tiny random models."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from speechforge.data.tokenizers import BLANK, EOS, SOS, CharTokenizer
from speechforge.decode.beam import beam_search, best_reachable, parents_in_place
from speechforge.decode.ctc import ctc_prefix_beam_search
from speechforge.decode.greedy import greedy_search
from speechforge.decode.lm_fusion import LMScorer, NGramLM
from speechforge.recipe import RecipeError, validate_component

V = 7  # the five specials, then two letters


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: threads only add hand-off cost, and much more on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0, d_model: int = 16, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = {"num_layers": 2, "num_heads": 2, "d_ff": 32, "dropout": 0.0}
    spec = validate_component("models", {
        "name": "transformer_ctc", "d_model": d_model, "dropout": 0.0, "tie_embeddings": False,
        "embedding": {"name": "conv2d", "time_reduction": 4, "channels": 4},
        "encoder": layers, "decoder": layers,
    }, "model")
    return spec.build(vocab_size=V, input_dim=8).eval().to(dtype)


def random_enc(lens: list[int], d_model: int = 16, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lens), max(lens), d_model, generator=g, dtype=dtype) * 2, torch.tensor(lens)


def ngram(sentences: list[str], k: float = 0.5, order: int = 2) -> NGramLM:
    tok = CharTokenizer("ab")
    return NGramLM.train([tok.encode(s) for s in sentences], tok.vocab_size, k, order)


def exhaustive(model, enc_out, enc_lens, max_len: int, nbest: int, temperature=1.0, repeat_penalty=1.0,
               length_penalty=0.0, length_bonus=0.0, ctc_weight=0.0, lm=None, lm_weight=0.0):
    """Score every token sequence up to max_len (one utterance) from the uncached decoder,
    torch's CTC loss and the n-gram's own sums; return the n-best (score, tokens)."""
    tokens = [t for t in range(V) if t != EOS]
    att_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def att_log_probs(prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix not in att_cache:
            logits = model.step_uncached(torch.tensor([[SOS, *prefix]]), enc_out, enc_lens)[0].detach().double()
            for tok in set(prefix):  # CTRL: shrink the logits of tokens already produced
                logits[tok] = logits[tok] / repeat_penalty if logits[tok] > 0 else logits[tok] * repeat_penalty
            att_cache[prefix] = (logits / temperature).log_softmax(-1)
        return att_cache[prefix]

    ctc_lp = model.ctc_log_probs(enc_out).detach().double()[0, : int(enc_lens[0])]
    scored = []
    for length in range(max_len + 1):
        for y in itertools.product(tokens, repeat=length):
            ended = length < max_len  # at the cap a hypothesis ends without <eos>
            if ctc_weight and length > ctc_lp.shape[0]:
                continue  # more labels than frames: CTC probability 0
            targets = list(y) + ([EOS] if ended else [])
            att = sum(float(att_log_probs(y[:i])[tok]) for i, tok in enumerate(targets))
            total = (1 - ctc_weight) * att + length_bonus * length
            if ctc_weight:
                assert ended, "the oracle scores whole labellings only: keep the cap beyond the frames"
                if BLANK in y:
                    continue
                nll = F.ctc_loss(ctc_lp[:, None], torch.tensor([list(y)], dtype=torch.long),
                                 torch.tensor([ctc_lp.shape[0]]), torch.tensor([length]),
                                 blank=BLANK, reduction="none")
                total += ctc_weight * -float(nll)
            if lm is not None:
                total += lm_weight * lm.sequence_log_prob(targets)
            if math.isfinite(total):
                scored.append((total / ((5 + length) / 6) ** length_penalty, list(y)))
    return sorted(scored, reverse=True)[:nbest]


def assert_same_nbest(hyps, want):
    assert [h.tokens for h in hyps] == [y for _, y in want]
    assert [h.score for h in hyps] == pytest.approx([s for s, _ in want], rel=1e-9, abs=1e-9)


def test_cached_decoder_steps_equal_uncached_over_20_steps():
    model = tiny_model(d_model=32, dtype=torch.float32)
    enc_out, enc_lens = random_enc([9, 5], d_model=32, dtype=torch.float32)
    state = model.init_state(enc_out, enc_lens)
    prefix = torch.full((2, 1), SOS)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        cached = model.step(prefix[:, -1], state)
        torch.testing.assert_close(cached, model.step_uncached(prefix, enc_out, enc_lens), rtol=0, atol=1e-5)
        prefix = torch.cat([prefix, torch.randint(0, V, (2, 1), generator=g)], dim=1)


def test_each_parents_best_child_takes_the_parents_beam():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(1, 12, (1,), generator=g))
        parent = torch.randint(0, k, (3, k), generator=g)  # best child first
        order = parents_in_place(parent)
        assert torch.equal(order.sort(1).values, torch.arange(k).expand(3, k))  # a permutation
        for a in range(3):
            for p in set(parent[a].tolist()):
                best = int((parent[a] == p).nonzero()[0])
                assert int(order[a, p]) == best


def test_beam_of_one_equals_greedy():
    model = tiny_model(dtype=torch.float32)
    enc_out, enc_lens = random_enc([12, 5, 8], dtype=torch.float32)
    greedy = greedy_search(model, enc_out, enc_lens, max_len_ratio=1.0)
    beam = beam_search(model, enc_out, enc_lens, beam_size=1)
    assert [h[0].tokens for h in beam] == [h[0].tokens for h in greedy]
    assert [h[0].score for h in beam] == pytest.approx([h[0].score for h in greedy], abs=1e-5)


@pytest.mark.parametrize("options", [
    {},
    {"temperature": 1.7, "repeat_penalty": 1.5},
    {"length_penalty": 1.0, "length_bonus": 0.5},
    {"lm": ngram(["ab", "abab", "bba"]), "lm_weight": 0.8},
    {"lm": ngram(["ab", "abab", "bba", "aab"], order=3), "lm_weight": 0.8},
], ids=["plain", "temperature-repeat", "length", "lm", "lm-trigram"])
def test_wide_beam_equals_exhaustive_search(options):
    model = tiny_model()
    enc_out, enc_lens = random_enc([6])
    # 343 = 7^3 beams: nothing is ever pruned with 6 tokens and <eos> up to 3 steps
    hyps = beam_search(model, enc_out, enc_lens, beam_size=343, nbest=5, max_len=3, **options)[0]
    assert_same_nbest(hyps, exhaustive(model, enc_out, enc_lens, max_len=3, nbest=5, **options))


@pytest.mark.parametrize("length_bonus", [0.0, 0.7, -0.3])
@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.5])
def test_early_stop_bound_covers_every_continuation(length_bonus, length_penalty):
    # the best a live hypothesis can do: every later token free (log-prob 0), any end length
    live, length, cap = torch.tensor([-5.0, -0.5, 0.3, 2.0], dtype=torch.float64), 2, 6
    bound = best_reachable(live, length, torch.full((4,), cap), length_bonus, length_penalty)
    for s, got in zip(live.tolist(), bound.tolist()):
        best = max((s + length_bonus * (n - length)) / ((5 + n) / 6) ** length_penalty for n in range(length, cap + 1))
        assert got >= best - 1e-12


def test_wide_joint_ctc_beam_equals_exhaustive_search():
    model = tiny_model()
    enc_out, enc_lens = random_enc([3])
    # 3 frames hold at most 3 labels, so the cap of 4 is never reached alive
    hyps = beam_search(model, enc_out, enc_lens, beam_size=343, nbest=5, max_len=4, max_len_ratio=2.0,
                       ctc_weight=0.3, ctc_window=0)[0]
    assert_same_nbest(hyps, exhaustive(model, enc_out, enc_lens, max_len=4, nbest=5, ctc_weight=0.3))


def test_a_ctc_window_without_only_blank_keeps_the_whole_vocabularys_hypotheses():
    # an fp32 decoder; the window leaves out only <blank>, the decoder's worst token here and one
    # CTC never takes, so the search must keep the same hypotheses with the same fp64 sums as a
    # search over every token (sums made in fp32 would move them by ~1e-7)
    model = tiny_model(dtype=torch.float32)
    with torch.no_grad():
        model.decoder.out.bias[BLANK] = -1e4
    enc_out, enc_lens = random_enc([9, 6], dtype=torch.float32)
    options = dict(beam_size=4, nbest=3, ctc_weight=0.3, length_bonus=0.4, min_len_ratio=0.3)
    windowed = beam_search(model, enc_out, enc_lens, ctc_window=V - 1, **options)
    full = beam_search(model, enc_out, enc_lens, ctc_window=0, **options)
    assert [[h.tokens for h in hyps] for hyps in windowed] == [[h.tokens for h in hyps] for hyps in full]
    assert [h.score for hyps in windowed for h in hyps] == pytest.approx(
        [h.score for hyps in full for h in hyps], abs=1e-12)


def test_ctc_weight_one_scores_like_ctc_prefix_beam_search():
    model = tiny_model()
    enc_out, enc_lens = random_enc([3])
    joint = beam_search(model, enc_out, enc_lens, beam_size=200, nbest=5, max_len=4, max_len_ratio=2.0,
                        ctc_weight=1.0)[0]
    ctc_only = ctc_prefix_beam_search(model.ctc_log_probs(enc_out), enc_lens, beam_size=200, nbest=50)[0]
    # the frame-synchronous search also emits <eos> as a label; the joint one cannot
    ctc_only = [h for h in ctc_only if EOS not in h.tokens][: len(joint)]
    assert [h.tokens for h in joint] == [h.tokens for h in ctc_only]
    assert [h.score for h in joint] == pytest.approx([h.score for h in ctc_only], abs=1e-9)


def test_batched_results_equal_one_at_a_time():
    model = tiny_model()
    lens = [11, 4, 7]
    enc_out, enc_lens = random_enc(lens)
    options = dict(beam_size=4, nbest=3, ctc_weight=0.3, lm=ngram(["ab", "ba", "aab"], order=3), lm_weight=0.5,
                   length_bonus=0.2, repeat_penalty=1.2)
    batched = beam_search(model, enc_out, enc_lens, **options)
    for i, n in enumerate(lens):
        alone = beam_search(model, enc_out[i : i + 1, :n], enc_lens[i : i + 1], **options)[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in alone]
        assert [h.score for h in batched[i]] == pytest.approx([h.score for h in alone], abs=1e-9)


def test_bf16_search_under_inference_mode_equals_plain_autocast():
    # the searches pre-cast the decoder's weights (precision.autocast_weights); autocast
    # alone would round the same weights at every step, to the same products
    model = tiny_model(dtype=torch.float32)
    enc_out, enc_lens = random_enc([9, 6], dtype=torch.float32)
    options = dict(beam_size=3, nbest=2, ctc_weight=0.3)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for search, kwargs in ((beam_search, options), (greedy_search, {})):
            got = search(model, enc_out, enc_lens, **kwargs)
            want = search.__wrapped__(model, enc_out, enc_lens, **kwargs)
            assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in want]
            assert [[h.score for h in hyps] for hyps in got] == [[h.score for h in hyps] for hyps in want]


def test_forced_and_minimum_lengths_hold():
    model = tiny_model()
    enc_out, enc_lens = random_enc([10, 6])
    forced = beam_search(model, enc_out, enc_lens, beam_size=3, nbest=3, force_length=5, ctc_weight=0.3)
    assert all(len(h.tokens) == 5 for hyps in forced for h in hyps)
    at_least = beam_search(model, enc_out, enc_lens, beam_size=3, nbest=3, min_len_ratio=0.5)
    assert all(len(h.tokens) >= n // 2 for hyps, n in zip(at_least, [10, 6]) for h in hyps)


def test_lm_fusion_changes_the_ranking(tmp_path):
    model = tiny_model()
    enc_out, enc_lens = random_enc([6])
    plain = beam_search(model, enc_out, enc_lens, beam_size=8, max_len=3)[0][0].tokens
    # an LM that has only ever seen "ab": letters a=5, b=6
    text = tmp_path / "lm.txt"
    text.write_text("ab\n" * 50)
    section = {"name": "beam", "beam_size": 8, "max_len": 3, "lm_weight": 4.0,
               "lm": {"name": "ngram", "text": str(text)}}
    decoder = validate_component("decoders", section, "decode").build()
    with pytest.raises(RuntimeError, match="bind"):
        decoder(model, enc_out, enc_lens)
    decoder.bind(CharTokenizer("ab"))
    assert isinstance(decoder.lm, LMScorer)
    fused = decoder(model, enc_out, enc_lens)[0][0].tokens
    assert plain != [5, 6]
    assert fused == [5, 6]


def test_ngram_counts_with_add_k_and_backs_off_to_the_longest_seen_context():
    a, b = 5, 6  # CharTokenizer("ab")
    lm = ngram(["ab", "ab", "ab", "aab"], k=0.5, order=3)
    state = lm.init_state(2)
    first, state = lm.score(torch.tensor([SOS, SOS]), state)
    log_p, state = lm.score(torch.tensor([a, b]), state)
    # after <sos> a: b three times, a once; add-k over the 7 tokens
    assert math.exp(log_p[0, b]) == pytest.approx((3 + 0.5) / (4 + 0.5 * V))
    # <sos> b never began a sentence: back off to "b", always followed by <eos>
    assert math.exp(log_p[1, EOS]) == pytest.approx((4 + 0.5) / (4 + 0.5 * V))
    assert torch.allclose(log_p.double().exp().sum(1), torch.ones(2, dtype=torch.float64))
    assert math.exp(first[0, a]) == pytest.approx((4 + 0.5) / (4 + 0.5 * V))
    assert lm.sentence_log_prob([a, b]) == pytest.approx(float(first[0, a] + log_p[0, b]) + math.log(
        (4 + 0.5) / (4 + 0.5 * V)), abs=1e-6)  # then <eos> after a b: every one of the 4 times


def test_decoding_marks_hypotheses_that_stopped_at_the_length_cap():
    from speechforge.data.batching import collate
    from speechforge.decode.outputs import decode_batches

    model = tiny_model(dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    batch = collate([{"id": f"u{i}", "feats": torch.randn(n, 8, generator=g), "text": "ab"} for i, n in enumerate([40, 24])])
    tok = CharTokenizer("ab")

    def records(section):
        decoder = validate_component("decoders", section, "decode").build()
        return decode_batches(model, [batch], decoder, tok, torch.device("cpu"))

    assert [r["at_cap"] for r in records({"name": "beam", "beam_size": 2, "force_length": 3})] == [True, True]
    # one token at most: a hypothesis that has it stopped at the cap, an empty one ended with <eos>
    with torch.no_grad():
        hyps = greedy_search(model, *model.encode(batch.feats, batch.feat_lens), max_len=1)
    assert [r["at_cap"] for r in records({"name": "greedy", "max_len": 1})] == [len(h[0].tokens) == 1 for h in hyps]
    assert "at_cap" not in records({"name": "ctc_greedy"})[0]


def test_recipe_rejects_out_of_range_options():
    for bad, key in [({"ctc_weight": 1.5}, "ctc_weight"), ({"beam_size": 0}, "beam_size")]:
        with pytest.raises(RecipeError) as e:
            validate_component("decoders", {"name": "beam", **bad}, "decode")
        assert e.value.problems[0][0] == f"decode.{key}"
    with pytest.raises(RecipeError, match="lm_weight"):
        validate_component("decoders", {"name": "beam", "lm_weight": 0.5}, "decode").build()


def test_decode_folders_name_what_differs_from_the_defaults():
    from speechforge.decode.outputs import decode_tag, decoder_defaults
    from speechforge.recipe import validate_component

    def tag(section):
        spec = validate_component("decoders", section, "decode")
        return decode_tag(spec.name, spec.args, decoder_defaults(spec.name))

    assert tag({"name": "greedy"}) == "greedy"
    assert tag({"name": "beam", "beam_size": 4, "ctc_weight": 0.4}) == "beam-beam_size4-ctc_weight0.4"
    long_a = tag({"name": "beam", "beam_size": 4, "ctc_weight": 0.4, "length_bonus": 0.5, "min_len_ratio": 0.1,
                  "max_len_ratio": 0.9, "repeat_penalty": 1.2, "temperature": 0.8})
    long_b = tag({"name": "beam", "beam_size": 4, "ctc_weight": 0.4, "length_bonus": 0.5, "min_len_ratio": 0.1,
                  "max_len_ratio": 0.9, "repeat_penalty": 1.2, "temperature": 0.9})
    assert len(long_a) <= 80 and len(long_b) <= 80 and long_a != long_b
