"""The language model: cached decoding, learning, perplexities, generation, the run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from speechforge import recipe as recipe_mod
from speechforge.data.tokenizers import EOS, PAD, SOS
from speechforge.lm.data import TextLines, collate
from speechforge.lm.generate import generate, token_probs, top_p_mask
from speechforge.lm.metrics import UnigramLM, evaluate, perplexities
from speechforge.lm.model import transformer_lm
from speechforge.lm.train import lm_ce

from lm_fixtures import REPO, tiny_recipe

V = 17


def small_lm(vocab_size: int = V, tie: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    decoder = recipe_mod.validate_component(
        "decoder_layers", {"name": "prenorm", "num_layers": 2, "num_heads": 2, "d_ff": 64, "dropout": 0.0}, "d")
    return transformer_lm(vocab_size=vocab_size, decoder=decoder, d_model=32, dropout=0.0, tie_embeddings=tie).eval()


def uniform_lm(vocab_size: int = V):
    model = small_lm(vocab_size, tie=False)
    with torch.no_grad():
        model.decoder.out.weight.zero_()
        model.decoder.out.bias.zero_()
    return model


# --- the model -------------------------------------------------------------------


def test_cached_step_logits_equal_the_full_forward():
    model = small_lm()
    tokens = torch.cat([torch.full((3, 1), SOS), torch.randint(5, V, (3, 11))], dim=1)
    full = model(tokens)  # (B, U, V)
    state = model.init_state(3)
    first = model.step(tokens[:, :4], state)  # a prefix first, as generation feeds a prompt
    steps = [first] + [model.step(tokens[:, t], state) for t in range(4, tokens.shape[1])]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:], atol=1e-5, rtol=1e-5)


def test_state_select_reorders_the_cache_like_the_batch():
    model = small_lm()
    tokens = torch.randint(5, V, (3, 6))
    state = model.init_state(3)
    model.step(tokens[:, :5], state)
    index = torch.tensor([2, 2, 0])
    picked = state.select(index)
    torch.testing.assert_close(model.step(tokens[index, 5], picked), model(tokens[index])[:, -1], atol=1e-5, rtol=1e-5)


def test_reorders_between_steps_compose():
    # a reorder waits for the next step (one copy of the cache): two in a row must still
    # leave row i with the history of row first[second[i]]
    model = small_lm()
    tokens = torch.randint(5, V, (3, 6))
    first, second = torch.tensor([2, 0, 1]), torch.tensor([1, 1, 2])
    with torch.no_grad():
        state = model.init_state(3)
        model.step(tokens[:, :5], state)
        picked = state.select(first).select(second)
        rows = first[second]
        torch.testing.assert_close(model.step(tokens[rows, 5], picked), model(tokens[rows])[:, -1], atol=1e-5, rtol=1e-5)


def test_parameter_names_are_the_asr_decoders():
    names = set(dict(small_lm().named_parameters()))
    assert {"decoder.embed.weight", "decoder.stack.layers.0.self_attn.q_proj.weight",
            "decoder.stack.layers.1.ffn.0.weight", "decoder.stack.norm.weight", "decoder.out.bias"} <= names
    assert not any("cross_attn" in n for n in names)


def test_the_lm_learns_a_tiny_text():
    model = small_lm().train()
    ids = [[5, 6, 7, 8, 9, 10], [7, 8, 9], [11, 12, 5, 6]]
    batch = collate([(s, len(s)) for s in ids])
    loss_fn = lm_ce(label_smoothing=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = loss_fn(model(batch.tokens_in), batch.tokens_out)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0], losses[::10]


# --- perplexities ----------------------------------------------------------------


class WordTokenizer:
    """One token per word: tokens and characters differ, so the two perplexities do."""

    def __init__(self, words):
        self.index = {w: i + 5 for i, w in enumerate(words)}

    def encode(self, text):
        return [self.index[w] for w in text.split()]


def test_a_uniform_model_has_perplexity_vocab_size(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("AB C\nD\n")
    corpus = TextLines({"train": str(path)}, on_bad_file="stop", case="keep", max_sentences=None,
                       batch_size=1, max_tokens=None)
    result = evaluate(uniform_lm(10), corpus.loader("train", WordTokenizer(["AB", "C", "D"]))[0])
    # "AB C" is 2 words + <eos> over 4 characters + 1; "D" is 1 + <eos> over 1 + 1
    assert (result["tokens"], result["chars"]) == (5, 7)
    assert result["ppl"] == pytest.approx(10.0, rel=1e-5)
    # the same 5 x log 10 nats spread over 7 characters
    assert result["char_ppl"] == pytest.approx(10 ** (5 / 7), rel=1e-5)


def test_perplexities_from_total_nll():
    r = perplexities(total_nll=6.0, tokens=3, chars=12)
    assert r["ppl"] == pytest.approx(math.exp(2.0)) and r["char_ppl"] == pytest.approx(math.exp(0.5))


def test_unigram_baseline_is_add_one_smoothed_with_eos():
    unigram = UnigramLM([[5, 5, 6]], vocab_size=8)
    # counts 5:2, 6:1, <eos>:1; add one to each of the 8 ids: 12 in all
    assert math.exp(unigram.log_probs[5]) == pytest.approx(3 / 12)
    r = unigram.evaluate([[5]], ["A"])
    nll = -(math.log(3 / 12) + math.log(2 / 12))
    assert r["ppl"] == pytest.approx(math.exp(nll / 2)) and r["char_ppl"] == pytest.approx(math.exp(nll / 2))


# --- generation --------------------------------------------------------------------


def prompts(*rows):
    lens = torch.tensor([len(r) for r in rows])
    out = torch.full((len(rows), int(lens.max())), PAD)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out, lens


def test_top_k_of_one_samples_the_greedy_sequence():
    model = small_lm()
    prompt, lens = prompts([SOS, 5, 6], [SOS], [SOS, 9, 9, 9, 7])
    greedy, g_lens = generate(model, prompt, lens, 15, temperature=0.0)
    sampled, s_lens = generate(model, prompt, lens, 15, temperature=1.3, top_k=1,
                               generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy, sampled) and torch.equal(g_lens, s_lens)


def test_batched_prompts_of_different_lengths_generate_as_one_at_a_time():
    model = small_lm()
    rows = [[SOS, 5, 6], [SOS], [SOS, 9, 9, 9, 7]]
    prompt, lens = prompts(*rows)
    together, _ = generate(model, prompt, lens, 12, temperature=0.0)
    for i, row in enumerate(rows):
        alone, _ = generate(model, *prompts(row), 12, temperature=0.0)
        assert torch.equal(alone[0], together[i])


def test_generation_stops_at_eos_and_reports_lengths():
    model = uniform_lm()
    with torch.no_grad():
        model.decoder.out.bias[EOS] = 50.0  # <eos> first, always
    tokens, lens = generate(model, *prompts([SOS, 5]), 10, temperature=0.0)
    assert lens.tolist() == [0] and (tokens == EOS).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert top_p_mask(logits, 0.5).tolist() == [[True, False, False]]
    assert top_p_mask(logits, 0.8 - 1e-6).tolist() == [[True, True, False]]
    assert top_p_mask(logits, 0.81).tolist() == [[True, True, True]]
    # brute force on random distributions: the kept set is the shortest most-likely-first prefix with mass >= p
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(1, 12, generator=gen) * 2
        p = float(torch.rand(1, generator=gen))
        probs = logits.softmax(-1)[0]
        order = probs.argsort(descending=True)
        size = next(k for k in range(1, 13) if probs[order[:k]].sum() >= p)
        expected = torch.zeros(12, dtype=torch.bool)
        expected[order[:size]] = True
        assert torch.equal(top_p_mask(logits, p)[0], expected), p
        kept = token_probs(logits, None, 1.0, top_p=p)[0]
        assert torch.equal(kept > 0, expected)
        assert float(kept.sum()) == pytest.approx(1.0)


def test_repeat_penalty_lowers_the_probability_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    seen = torch.tensor([[True, True, False, False]])
    plain = token_probs(logits, seen, 1.0)
    penalised = token_probs(logits, seen, 1.0, repeat_penalty=1.5)
    # positive logits shrink, negative ones grow more negative: both fall
    assert (penalised[0, :2] < plain[0, :2]).all() and (penalised[0, 2:] > plain[0, 2:]).all()
    torch.testing.assert_close(penalised.log()[0, :2] - penalised.log()[0, 2].item(),
                               torch.tensor([2.0 / 1.5, -1.5]) - 0.5)


def test_greedy_with_a_repeat_penalty_counts_the_prompt_as_seen():
    model = uniform_lm()
    with torch.no_grad():
        model.decoder.out.bias[7] = 2.0  # 7 is the favourite ...
        model.decoder.out.bias[8] = 1.5  # ... 8 the runner-up
    assert generate(model, *prompts([SOS, 5]), 1, temperature=0.0)[0].tolist() == [[7]]
    penalised, _ = generate(model, *prompts([SOS, 7]), 1, temperature=0.0, repeat_penalty=2.0)
    assert penalised.tolist() == [[8]]


# --- the run -------------------------------------------------------------------------


def test_lm_run_writes_the_run_directory_and_beats_nothing_silently(lm_run):
    run_dir, summary = lm_run
    for name in ("recipe.toml", "tokenizer/tokenizer.json", "best.pt", "metrics.jsonl", "summary.json",
                 "generations.txt"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    epochs = [r for r in records if "val_ppl" in r]
    assert len(epochs) == 2 and all(r["val_char_ppl"] > 1 for r in epochs)
    assert set(summary["eval"]) == {"val", "test"} and set(summary["unigram"]) == {"val", "test"}
    assert summary["best_val_ppl"] == pytest.approx(min(r["val_ppl"] for r in epochs), rel=1e-3)
    text = (run_dir / "generations.txt").read_text()
    assert text.count("PROMPT: ") == 2 and "PROMPT: THE \nTHE" in text


def test_a_rerun_resumes_from_the_checkpoint(lm_run, tmp_path, text_files):
    import shutil

    from speechforge.lm.pipeline import run

    run_dir = tmp_path / "run"
    shutil.copytree(lm_run[0], run_dir)
    logs = []
    summary = run(tiny_recipe(text_files, **{"trainer.epochs": "3"}), run_dir, log=logs.append)
    assert any(line.startswith("resumed from") for line in logs)
    assert summary["epochs"] == 3 and summary["step"] == lm_run[1]["step"] * 3 // 2


def test_check_builds_everything_and_reports_an_impossible_vocabulary(text_files):
    from speechforge.lm.pipeline import check

    info = check(tiny_recipe(text_files, tokenizer='name = "bpe"\nvocab_size = 5000'))
    assert info["vocab_size"] == 5000 and "support at most" in info["notes"][0]
    assert info["data"]["train"]["sentences"] == 40


@pytest.mark.parametrize("name", ["lm_char", "lm_bpe1k"])
def test_lm_recipes_validate(name):
    recipe = recipe_mod.load(REPO / "recipes" / f"{name}.toml", ["data.root=."])
    assert recipe.task == "lm" and recipe.model.name == "transformer_lm" and recipe.trainer.name == "lm"
