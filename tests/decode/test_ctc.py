"""CTC decoding against brute force: every alignment of a few frames enumerated."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from speechforge.data.tokenizers import BLANK, EOS
from speechforge.decode.ctc import CTCPrefixScorer, ctc_greedy_search, ctc_prefix_beam_search
from speechforge.recipe import validate_component


def collapse(path, blank=BLANK) -> tuple[int, ...]:
    out, prev = [], None
    for s in path:
        if s != blank and s != prev:
            out.append(s)
        prev = s
    return tuple(out)


def labelling_probs(log_probs: torch.Tensor, length: int) -> dict[tuple[int, ...], float]:
    """P(labelling | x) by summing exp(path score) over all V^T alignments."""
    v = log_probs.shape[-1]
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(v), repeat=length):
        p = math.exp(sum(float(log_probs[t, s]) for t, s in enumerate(path)))
        y = collapse(path)
        probs[y] = probs.get(y, 0.0) + p
    return probs


def brute_prefix_score(probs, prefix: list[int], token: int) -> float:
    if token == BLANK:
        return -math.inf
    if token == EOS:  # the labelling is exactly the prefix
        total = probs.get(tuple(prefix), 0.0)
    else:
        g = tuple(prefix) + (token,)
        total = sum(p for y, p in probs.items() if y[: len(g)] == g)
    return math.log(total) if total > 0 else -math.inf


def assert_scores(got: torch.Tensor, want: list[float]) -> None:
    want_t = torch.tensor(want, dtype=torch.float64)
    assert torch.equal(got.isinf(), want_t.isinf())
    finite = ~want_t.isinf()
    torch.testing.assert_close(got[finite], want_t[finite], rtol=0, atol=1e-9)


@pytest.fixture
def random_ctc():
    """Two utterances of 5 and 3 frames over V=5 (<blank> = 4, <eos> = 3)."""
    g = torch.Generator().manual_seed(0)
    # normalised in float64: the brute force assumes each frame's probabilities sum to 1
    log_probs = torch.randn(2, 5, 5, generator=g, dtype=torch.float64).mul(1.5).log_softmax(-1)
    return log_probs, torch.tensor([5, 3])


def test_prefix_scores_equal_the_sum_over_alignments(random_ctc):
    log_probs, lens = random_ctc
    probs = [labelling_probs(log_probs[i], int(lens[i])) for i in range(2)]
    scorer = CTCPrefixScorer(log_probs, lens)
    state = scorer.init_state(torch.tensor([0, 1, 0]))  # utterance 0 twice, as two beams
    prefixes = [[], [], []]
    # the second step repeats a token, which only blank-ending paths may extend
    for tokens in ([1, 2, 0], [1, 2, 2], [0, 1, 2]):
        got = scorer.score(state)
        for n, utt in enumerate([0, 1, 0]):
            want = [brute_prefix_score(probs[utt], prefixes[n], c) for c in range(5)]
            assert_scores(got[n], want)
        state = scorer.extend(state, torch.arange(3), torch.tensor(tokens))
        for n, tok in enumerate(tokens):
            prefixes[n].append(tok)
    assert_scores(state.score, [brute_prefix_score(probs[u], p[:-1], p[-1]) for u, p in zip([0, 1, 0], prefixes)])


def test_windowed_scores_equal_full_scores_at_the_candidates(random_ctc):
    log_probs, lens = random_ctc
    probs = [labelling_probs(log_probs[i], int(lens[i])) for i in range(2)]
    scorer = CTCPrefixScorer(log_probs, lens)
    state = scorer.extend(scorer.init_state(torch.tensor([0, 1])), torch.tensor([0, 1]), torch.tensor([2, 0]))
    candidates = torch.tensor([[3, 2], [1, 4]])  # <eos>, a repeat; a token, <blank>
    got = scorer.score(state, candidates)
    want = [[brute_prefix_score(probs[0], [2], 3), brute_prefix_score(probs[0], [2], 2)],
            [brute_prefix_score(probs[1], [0], 1), -math.inf]]
    assert_scores(got.flatten(), sum(want, []))
    torch.testing.assert_close(got, scorer.score(state).gather(1, candidates))


def test_scoring_in_chunks_gives_the_same_scores(random_ctc):
    log_probs, lens = random_ctc
    whole = CTCPrefixScorer(log_probs, lens)
    chunked = CTCPrefixScorer(log_probs, lens, max_elements=1)  # one candidate at a time
    state = whole.init_state(torch.tensor([0, 1]))
    torch.testing.assert_close(chunked.score(state), whole.score(state))


def test_the_scorer_leaves_the_callers_log_probabilities_as_they_were(random_ctc):
    log_probs, lens = random_ctc
    log_probs = log_probs.clone()
    log_probs[0, 0, 1] = -math.inf  # floored inside the scorer, never in the caller's tensor
    before = log_probs.clone()
    CTCPrefixScorer(log_probs, lens)
    assert torch.equal(log_probs, before)


def test_select_reorders_and_repeats_rows(random_ctc):
    log_probs, lens = random_ctc
    scorer = CTCPrefixScorer(log_probs, lens)
    state = scorer.extend(scorer.init_state(torch.tensor([0, 1])), torch.tensor([0, 1]), torch.tensor([1, 2]))
    picked = scorer.select(state, torch.tensor([1, 1, 0]))
    torch.testing.assert_close(scorer.score(picked), scorer.score(state)[[1, 1, 0]])


def log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def recursion_prefix_score(log_probs: torch.Tensor, prefix: list[int], token: int) -> float:
    """log psi(prefix + token) by the frame-by-frame forward recursion in log space: exact
    where probabilities are far below what float64 can hold (no exp of a score is taken)."""
    x = log_probs.tolist()
    t_max = len(x)
    r_n, r_b = [-math.inf] * t_max, [sum(x[u][BLANK] for u in range(t + 1)) for t in range(t_max)]
    last = None
    for c in prefix + [token]:
        phi = [r_b[t] if c == last else log_add(r_n[t], r_b[t]) for t in range(t_max)]
        phi_prev = [0.0 if last is None else -math.inf] + phi[:-1]
        psi = -math.inf
        for t in range(t_max):
            psi = log_add(psi, phi_prev[t] + x[t][c])
        n, b = [-math.inf] * t_max, [-math.inf] * t_max
        for t in range(t_max):
            n[t] = log_add(n[t - 1] if t else -math.inf, phi_prev[t]) + x[t][c]
            b[t] = (log_add(n[t - 1], b[t - 1]) + x[t][BLANK]) if t else -math.inf
        r_n, r_b, last = n, b, c
    return psi


def test_prefix_scores_hold_where_every_probability_underflows():
    # the prefix's paths and the candidate's frames are 900 nats apart, each against the
    # other's best frame: the probability-space sum underflows and the log-space one must hold
    log_probs = torch.full((4, 5), -3.0, dtype=torch.float64)
    log_probs[0, 1] = -0.1  # the prefix [1] is emitted at frame 0
    log_probs[1:, 1] = -900.0
    log_probs[:, BLANK] = torch.tensor([-900.0, -0.1, -900.0, -900.0])
    log_probs[:, 2] = torch.tensor([-900.0, -900.0, -900.0, -0.1])  # token 2 only at frame 3
    scorer = CTCPrefixScorer(log_probs[None], torch.tensor([4]))
    state = scorer.extend(scorer.init_state(torch.tensor([0])), torch.tensor([0]), torch.tensor([1]))
    got = scorer.score(state, torch.tensor([[2, 0, 1]]))[0]
    want = [recursion_prefix_score(log_probs, [1], c) for c in (2, 0, 1)]
    assert all(w > -1.0e4 for w in want)  # finite: hypotheses a forced-length search still ranks
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-9)


def test_greedy_collapses_repeats_and_drops_blanks():
    path = torch.tensor([[5, 5, BLANK, 5, 6, 6, BLANK, 7], [6, BLANK, 6, 6, 5, 5, 5, 5]])
    log_probs = torch.nn.functional.one_hot(path, 8).double().mul(5.0).log_softmax(-1)
    hyps = ctc_greedy_search(log_probs, torch.tensor([8, 4]))
    assert [h[0].tokens for h in hyps] == [[5, 5, 6, 7], [6, 6]]
    # the score is the best path's: 8 and 4 frames at the same peak probability
    peak = float(log_probs[0, 0].max())
    assert hyps[0][0].score == pytest.approx(8 * peak)
    assert hyps[1][0].score == pytest.approx(4 * peak)


def test_prefix_beam_search_finds_the_most_probable_labellings(random_ctc):
    log_probs, lens = random_ctc
    hyps = ctc_prefix_beam_search(log_probs, lens, beam_size=200, nbest=4)
    for i in range(2):
        probs = labelling_probs(log_probs[i], int(lens[i]))
        want = sorted(((math.log(p), list(y)) for y, p in probs.items()), reverse=True)[:4]
        assert [h.tokens for h in hyps[i]] == [y for _, y in want]
        assert [h.score for h in hyps[i]] == pytest.approx([s for s, _ in want], abs=1e-9)


def test_prefix_beam_search_batched_equals_one_at_a_time(random_ctc):
    log_probs, lens = random_ctc
    batched = ctc_prefix_beam_search(log_probs, lens, beam_size=3, nbest=3, prune=2)
    for i in range(2):
        alone = ctc_prefix_beam_search(log_probs[i : i + 1, : lens[i]], lens[i : i + 1], beam_size=3, nbest=3, prune=2)
        assert [h.tokens for h in batched[i]] == [h.tokens for h in alone[0]]
        assert [h.score for h in batched[i]] == pytest.approx([h.score for h in alone[0]], abs=1e-12)


def peaky(labels_per_frame: list[int], vocab: int = 9, peak: float = 0.9) -> torch.Tensor:
    """(1, T, V) log-probs that put ``peak`` on one token per frame, the rest spread evenly."""
    probs = torch.full((len(labels_per_frame), vocab), (1 - peak) / (vocab - 1), dtype=torch.float64)
    probs[torch.arange(len(labels_per_frame)), torch.tensor(labels_per_frame)] = peak
    return probs.log()[None]


class CTCOnlyModel:
    """Just a CTC head that returns fixed log-probs: what the CTC decoders read."""

    def __init__(self, log_probs: torch.Tensor):
        self.log_probs, self.vocab_size = log_probs, log_probs.shape[-1]

    def ctc_log_probs(self, enc_out: torch.Tensor) -> torch.Tensor:
        return self.log_probs


def test_ctc_beam_recovers_the_label_of_a_peaky_distribution():
    b = BLANK
    log_probs = peaky([b, 5, 5, b, 5, 6, b, 7, 7, b])  # 5 5 6 7: the repeat needs its blank
    model = CTCOnlyModel(log_probs)
    decoder = validate_component("decoders", {"name": "ctc_beam", "beam_size": 4, "nbest": 2}, "decode").build()
    hyps = decoder(model, torch.zeros(1, 10, 1), torch.tensor([10]))[0]
    assert hyps[0].tokens == [5, 5, 6, 7]
    assert hyps[0].score > hyps[1].score
    greedy = validate_component("decoders", {"name": "ctc_greedy"}, "decode").build()
    assert greedy(model, torch.zeros(1, 10, 1), torch.tensor([10]))[0][0].tokens == [5, 5, 6, 7]
