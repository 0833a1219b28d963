"""Attention beam search, batched over utterances x beams, with optional joint CTC
prefix scoring (Watanabe et al. 2017, ESPnet's formulation) and shallow LM fusion.

Every step is one set of tensor operations over all (utterance x beam) rows: the
decoder step through its key/value cache, then a top-k over (beams x candidates) per
utterance. The score of a hypothesis y is

    (1 - ctc_weight) * log P_att(y) + ctc_weight * log P_ctc(y) + lm_weight * log P_lm(y)
    + length_bonus * |y|

(the CTC term a prefix score while y is unfinished), ranked at the end after GNMT length
normalisation ``score / ((5 + |y|) / 6) ** length_penalty``; |y| counts tokens without
<eos>.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field

from speechforge import precision, registry
from speechforge.data.tokenizers import EOS, SOS
from speechforge.decode.ctc import CTCPrefixScorer
# imported for its registration too: the lm_scorers a beam recipe can name live there
from speechforge.decode.lm_fusion import LMScorer
from speechforge.decode.search import NEG_INF, Hypothesis, max_lengths, min_lengths
from speechforge.recipe import RecipeError, Spec, Sub

PRE_BEAM_RATIO = 1.5  # ESPnet's pre-beam: CTC scores the 1.5 x beam best attention candidates


def length_norm(scores: torch.Tensor, lengths: torch.Tensor | int, alpha: float) -> torch.Tensor:
    """GNMT length normalisation (Wu et al. 2016): divide by ((5 + |y|) / 6) ** alpha."""
    if alpha == 0:
        return scores
    lengths = torch.as_tensor(lengths, device=scores.device, dtype=scores.dtype)
    return scores / ((5.0 + lengths) / 6.0) ** alpha


def repeat_penalised(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019): the logit of a token already in
    the hypothesis is divided by ``penalty`` when positive, multiplied when negative, so
    it always moves down."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def best_reachable(live: torch.Tensor, length: int, caps: torch.Tensor, length_bonus: float,
                   length_penalty: float) -> torch.Tensor:
    """An upper bound on the final (normalised) score of live hypotheses now scoring
    ``live`` with ``length`` tokens. Attention, CTC and LM terms only fall as a
    hypothesis grows; only the length bonus can raise it, by at most one per token left."""
    caps = caps.to(live.dtype)
    bound = live + max(length_bonus, 0.0) * (caps - length).clamp(min=0)
    if length_penalty == 0:
        return bound
    # s / lp(L) is largest at the shortest length when s > 0, at the longest when s <= 0
    return torch.where(bound > 0, length_norm(bound, length, length_penalty), length_norm(bound, caps, length_penalty))


def parents_in_place(parent: torch.Tensor) -> torch.Tensor:
    """An order of an utterance's new hypotheses (A, K), given their parents' beams (A, K),
    that puts each parent's best child in the parent's own beam: the decoder's cache then
    moves only the other children's rows (model/packed.py, ``PackedCache``), about half of
    them in a 10-beam search, where any other order moves nearly all. The other children take
    the beams no best child took, in order of rank. Returns, per beam, which hypothesis goes
    there. In Python: for a few beams a step's dozen tensor calls cost 50 us, lists 10."""
    order = []
    for parents in parent.tolist():
        beam: list[int | None] = [None] * len(parents)
        others = []
        for j, p in enumerate(parents):  # best first
            if beam[p] is None:
                beam[p] = j
            else:
                others.append(j)
        free = (b for b, j in enumerate(beam) if j is None)
        for j in others:
            beam[next(free)] = j
        order.append(beam)
    return torch.tensor(order, dtype=torch.long, device=parent.device).view(parent.shape)


@precision.searches_with_autocast_weights
@torch.no_grad()
def beam_search(
    model,
    enc_out: torch.Tensor,  # (B, T, D)
    enc_lens: torch.Tensor,  # (B,)
    beam_size: int = 10,
    nbest: int = 1,
    temperature: float = 1.0,
    repeat_penalty: float = 1.0,
    length_penalty: float = 0.0,
    length_bonus: float = 0.0,
    min_len_ratio: float = 0.0,
    max_len_ratio: float = 1.0,
    max_len: int | None = None,
    ctc_weight: float = 0.0,
    ctc_window: int | None = None,
    lm: LMScorer | None = None,
    lm_weight: float = 0.0,
    force_length: int | None = None,
) -> list[list[Hypothesis]]:
    """n-best hypotheses per utterance, best first, each with its ranking score (the
    module docstring's, length-normalised when ``length_penalty`` > 0).

    ``temperature`` and ``repeat_penalty`` reshape the attention distribution only.

    A candidate ending in <eos> is stored as finished and its beam slot is refilled from
    the live hypotheses next step (ESPnet's rule). A hypothesis that reaches its length
    cap finishes there, scored without <eos> (as greedy search does). An utterance stops
    once it has ``nbest`` finished hypotheses no live one can overtake (``best_reachable``),
    and leaves the batch. ``ctc_window`` (None: 1.5 x beam, 0: all) is how many of the best
    attention(+LM) candidates CTC scores; with ``ctc_weight = 1`` the decoder is not run and
    CTC scores the whole vocabulary. ``force_length`` masks <eos> so every hypothesis has
    exactly that many tokens (benchmarks use it to make configurations do equal work)."""
    b, dev = enc_out.shape[0], enc_out.device
    k, v = beam_size, model.vocab_size
    if force_length is not None:
        caps = torch.full((b,), force_length, dtype=torch.long, device=dev)
        mins = caps
    else:
        caps = max_lengths(enc_lens, max_len_ratio, max_len).to(dev)
        mins = torch.minimum(min_lengths(enc_lens, min_len_ratio).to(dev), caps)
    l_max = int(caps.max())
    use_att = ctc_weight < 1.0
    use_lm = lm is not None and lm_weight > 0
    rows = torch.arange(b, device=dev).repeat_interleave(k)  # row -> utterance

    # the beams of an utterance share its encoder memory (one copy, not K)
    state = model.init_state(enc_out, enc_lens, beams=k) if use_att else None
    # the packed step's cache moves only rows whose hypothesis changed (model/packed.py)
    in_place = state is not None and state.packed is not None
    ctc = ctc_state = None
    if ctc_weight > 0:
        ctc = CTCPrefixScorer(model.ctc_log_probs(enc_out), enc_lens)
        ctc_state = ctc.init_state(rows)
        window = math.ceil(PRE_BEAM_RATIO * k) if ctc_window is None else ctc_window
        pre_beam = (use_att or use_lm) and 0 < window < v
    lm_state = lm.init_state(b * k) if use_lm else None
    seen = torch.zeros(b * k, v, dtype=torch.bool, device=dev) if repeat_penalty != 1.0 else None

    # live hypotheses: (A, K) scores of the A utterances still searching; only beam 0 at first
    score = torch.full((b, k), NEG_INF, dtype=torch.float64, device=dev)
    score[:, 0] = 0.0
    history = torch.full((b * k, max(l_max, 1)), EOS, dtype=torch.long, device=dev)
    last = torch.full((b * k,), SOS, dtype=torch.long, device=dev)
    # finished hypotheses, best first, per utterance
    fin_score = torch.full((b, nbest), NEG_INF, dtype=torch.float64, device=dev)
    fin_tokens = torch.full((b, nbest, history.shape[1]), EOS, dtype=torch.long, device=dev)
    fin_len = torch.zeros((b, nbest), dtype=torch.long, device=dev)
    active = torch.arange(b, device=dev)
    finished = False  # any hypothesis, of any utterance

    for t in range(l_max):
        a = active.numel()
        n = a * k
        # what every token adds this step, before CTC: (N, V)
        if use_att:
            logits = model.step(last, state)
            # bf16 logits normalised in fp32 (a (N, V) pass in fp64 costs as much as a layer's
            # products); what the hypotheses accumulate is fp64
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            if seen is not None:
                logits = repeat_penalised(logits, seen, repeat_penalty)
            if temperature != 1.0:
                logits = logits / temperature
            step = logits.log_softmax(-1).double()
            if ctc_weight:
                step *= 1.0 - ctc_weight
        else:
            step = torch.zeros(n, v, dtype=torch.float64, device=dev)
        if use_lm:
            lm_log_probs, lm_state = lm.score(last, lm_state)
            step += lm_weight * lm_log_probs.double()
        if length_bonus:
            step += length_bonus
            step[:, EOS] -= length_bonus
        if force_length is None:
            step[:, EOS] = step[:, EOS].masked_fill((t < mins[active]).repeat_interleave(k), NEG_INF)
        else:
            step[:, EOS] = NEG_INF
        cand = None
        if ctc is not None:
            cand = step.topk(window, dim=1).indices if pre_beam else torch.arange(v, device=dev).expand(n, v)
            prefix = ctc.score(ctc_state, cand).to(step.dtype)
            step = step.gather(1, cand) + ctc_weight * (prefix - ctc_state.score[:, None])
        # rows already dead (-inf) would give -inf - -inf = nan through the CTC increment
        total = score.reshape(n, 1) + step
        total = total.masked_fill(total.isnan(), NEG_INF)
        c = total.shape[1]
        top, flat = total.view(a, k * c).topk(k, dim=1)  # (A, K), best first
        if in_place:
            order = parents_in_place(flat.div(c, rounding_mode="floor"))
            top, flat = top.gather(1, order), flat.gather(1, order)
        src = (torch.arange(a, device=dev)[:, None] * k + flat.div(c, rounding_mode="floor")).reshape(-1)
        column = (flat % c).reshape(-1)
        token = column if cand is None else cand[src, column]
        token = token.view(a, k)

        found = top > NEG_INF
        ended = found & (token == EOS)
        at_cap = found & ~ended & (t + 1 >= caps[active][:, None])
        grown = history.index_select(0, src).view(a, k, -1)
        grown[:, :, t] = token
        finishing = ended | at_cap
        if bool(finishing.any()):  # most steps finish nothing: the n-best lists stay as they are
            finished = True
            lengths = torch.where(ended, t, t + 1)
            new_fin = torch.where(finishing, length_norm(top, lengths, length_penalty), NEG_INF)
            merged = torch.cat([fin_score[active], new_fin], dim=1)
            best, pick = merged.topk(nbest, dim=1)
            fin_score[active] = best
            fin_tokens[active] = torch.cat([fin_tokens[active], grown], dim=1).gather(
                1, pick[:, :, None].expand(-1, -1, grown.shape[2]))
            fin_len[active] = torch.cat([fin_len[active], lengths], dim=1).gather(1, pick)

        score = torch.where(found & ~finishing, top, NEG_INF)
        live = score.max(dim=1).values
        done = live == NEG_INF
        if finished:
            done |= fin_score[active, -1] >= best_reachable(live, t + 1, caps[active], length_bonus, length_penalty)
        chosen = prefix[src, column] if ctc is not None else None
        if bool(done.any()):
            if bool(done.all()):
                break
            # the surviving rows, utterances that are done dropped from the batch
            keep = ~done
            src, token, grown = src.view(a, k)[keep].reshape(-1), token[keep], grown[keep]
            active, score = active[keep], score[keep]
            chosen = None if chosen is None else chosen.view(a, k)[keep].reshape(-1)
        index, last = src, token.reshape(-1)
        history = grown.reshape(-1, grown.shape[2])
        if use_att:
            state = state.select(index, (~done).nonzero().squeeze(1) if a != active.numel() else None)
        if ctc is not None:
            ctc_state = ctc.extend(ctc_state, index, last, chosen)
        if use_lm:
            lm_state = lm.select(lm_state, index)
        if seen is not None:
            seen = seen.index_select(0, index).scatter_(1, last[:, None], True)

    out = []
    for i in range(b):
        hyps = [Hypothesis(fin_tokens[i, j, : fin_len[i, j]].tolist(), float(fin_score[i, j]))
                for j in range(nbest) if fin_score[i, j] > NEG_INF]
        # nothing finished: every continuation was impossible (e.g. CTC with too few frames)
        out.append(hyps or [Hypothesis([], NEG_INF)])
    return out


class BeamDecoder:
    """The registered beam decoder. An LM, when the recipe names one, needs the run's
    tokenizer: call ``bind(tokenizer)`` before decoding."""

    def __init__(self, lm: Spec | None, **options: Any):
        self.options = options
        self.lm_spec = lm
        self.lm: LMScorer | None = None

    def bind(self, tokenizer) -> "BeamDecoder":
        if self.lm_spec is not None:
            self.lm = self.lm_spec.build(tokenizer=tokenizer)
        return self

    def __call__(self, model, enc_out: torch.Tensor, enc_lens: torch.Tensor) -> list[list[Hypothesis]]:
        if self.lm_spec is not None and self.lm is None:
            raise RuntimeError("decode.lm: the LM is built with the run's tokenizer; "
                               "call decoder.bind(tokenizer) first")
        return beam_search(model, enc_out, enc_lens, lm=self.lm, **self.options)

    def length_caps(self, enc_lens: torch.Tensor) -> torch.Tensor:
        """The most tokens each utterance's hypotheses may have (they stop there without <eos>)."""
        if self.options["force_length"] is not None:
            return torch.full_like(enc_lens, self.options["force_length"])
        return max_lengths(enc_lens, self.options["max_len_ratio"], self.options["max_len"])


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


@registry.decoders.register("beam")
def beam(
    beam_size: Annotated[int, Field(ge=1)] = 10,
    nbest: Annotated[int, Field(ge=1)] = 1,
    temperature: Annotated[float, Field(gt=0.0)] = 1.0,
    repeat_penalty: Annotated[float, Field(ge=1.0)] = 1.0,
    length_penalty: Annotated[float, Field(ge=0.0)] = 0.0,
    length_bonus: float = 0.0,
    min_len_ratio: Annotated[float, Field(ge=0.0)] = 0.0,
    max_len_ratio: Annotated[float, Field(gt=0.0)] = 1.0,
    max_len: Annotated[int, Field(gt=0)] | None = None,
    ctc_weight: Probability = 0.0,
    ctc_window: Annotated[int, Field(ge=0)] | None = None,
    lm: Annotated[Spec | None, Sub("lm_scorers")] = None,
    lm_weight: Annotated[float, Field(ge=0.0)] = 0.0,
    force_length: Annotated[int, Field(gt=0)] | None = None,
) -> BeamDecoder:
    """Attention beam search, batched; joint CTC with ctc_weight, shallow LM fusion with lm."""
    if lm is not None and lm_weight == 0:
        raise RecipeError([("decode.lm_weight", "decode.lm is set but lm_weight is 0; "
                                                "set lm_weight > 0 or drop decode.lm")])
    if lm is None and lm_weight > 0:
        raise RecipeError([("decode.lm_weight", "lm_weight > 0 needs an LM: add a [decode.lm] section")])
    return BeamDecoder(
        lm, beam_size=beam_size, nbest=nbest, temperature=temperature, repeat_penalty=repeat_penalty,
        length_penalty=length_penalty, length_bonus=length_bonus, min_len_ratio=min_len_ratio,
        max_len_ratio=max_len_ratio, max_len=max_len, ctc_weight=ctc_weight, ctc_window=ctc_window,
        lm_weight=lm_weight, force_length=force_length,
    )
