"""CTC decoding side by side: best path, the prefix scorer that joint CTC/attention
beam search uses, and CTC-only prefix beam search.

All three read the CTC head's log-probabilities (B, T, V) and the encoder lengths;
frames at or past an utterance's length are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from speechforge import registry
from speechforge.data.tokenizers import BLANK, EOS
from speechforge.decode.search import Hypothesis

NEG_INF = float("-inf")
# Log-probabilities are floored here before the prefix scorer takes cumulative sums:
# -inf would turn X[t] - X[s] into nan, and a floor of -1e4 per frame keeps those sums
# within float64's exact range (|sum| <= 1e4 * T, error ~1e-16 of that).
LOG_FLOOR = -1.0e4


# --- best path ------------------------------------------------------------------


@torch.no_grad()
def ctc_greedy_search(
    ctc_log_probs: torch.Tensor, enc_lens: torch.Tensor, blank: int = BLANK
) -> list[list[Hypothesis]]:
    """Most likely token per frame, repeats collapsed, blanks dropped.

    The score is the log-probability of that single best alignment, not of the label
    sequence (which sums over all its alignments; see ``CTCPrefixScorer``)."""
    b, t, _ = ctc_log_probs.shape
    best, path = ctc_log_probs.max(-1)  # (B, T)
    valid = torch.arange(t, device=path.device)[None, :] < enc_lens[:, None].to(path.device)
    previous = torch.cat([torch.full_like(path[:, :1], -1), path[:, :-1]], dim=1)
    keep = valid & (path != blank) & (path != previous)
    scores = best.masked_fill(~valid, 0.0).sum(1)
    return [[Hypothesis(path[i][keep[i]].tolist(), float(scores[i]))] for i in range(b)]


# --- prefix scoring (joint CTC/attention) ---------------------------------------


@dataclass
class CTCPrefixState:
    """CTC forward variables of N prefixes (rows); row n is a prefix of utterance utt[n]."""

    r: torch.Tensor  # (N, 2, T) log P(frames 0..t emit the prefix, ending in [non-blank, blank])
    score: torch.Tensor  # (N,) log prefix probability of the prefix itself
    last: torch.Tensor  # (N,) last token of the prefix, -1 when empty
    utt: torch.Tensor  # (N,) which utterance's frames the row reads


class CTCPrefixScorer:
    """Prefix probabilities for label-synchronous search (Watanabe et al. 2017; the
    algorithm of ESPnet's CTCPrefixScoreTH, written from the recursion).

    For a prefix g and a candidate c the prefix score is
    psi(g+c) = log sum_t phi(t-1) x_c(t), the probability that the labelling starts
    with g+c, where phi is the forward probability of g (only its blank-ending part
    when c repeats g's last token). For c = <eos> it is the probability that the
    labelling is exactly g; <blank> is never a candidate.

    Rows are (utterance x beam) hypotheses and everything is one tensor expression over
    (rows, candidates, time): the forward recursion r_n(t) = (r_n(t-1) (+) phi(t-1)) x(t)
    is linear in the log semiring, so it is solved with a cumulative sum and a
    ``logcumsumexp`` instead of a loop over frames.
    """

    def __init__(self, ctc_log_probs: torch.Tensor, enc_lens: torch.Tensor, blank: int = BLANK, eos: int = EOS,
                 max_elements: int = 1 << 22):
        b, t, v = ctc_log_probs.shape
        # time last, one row per (utterance, token): a candidate's frames are one contiguous
        # row, so gathering them is an index_select (a strided gather costs 50x more).
        # float64: the closed form subtracts cumulative sums that reach thousands
        x = ctc_log_probs.detach().transpose(1, 2).to(torch.float64, memory_format=torch.contiguous_format, copy=True)
        x = x.clamp_(min=LOG_FLOOR)  # (B, V, T)
        self.lens = enc_lens.to(x.device).clamp(min=1, max=t)
        self.valid = torch.arange(t, device=x.device)[None, :] < self.lens[:, None]  # (B, T)
        padded = not bool(self.valid.all())  # one utterance, or a batch of equal lengths: no masks
        if padded:
            # frames past the end take log 1 so that the sums stay finite; they are masked out
            x = x.masked_fill_(~self.valid[:, None, :], 0.0)
        self.rows = x.view(b * v, t)  # (B * V, T)
        # the same rows as probabilities over each row's largest: a prefix score is then one
        # small product per hypothesis, phi's probabilities by these, instead of a
        # logsumexp over every (candidate, frame) (4x faster on a 10-beam bpe5k_ctc step)
        valid_rows = self.valid[:, None, :].expand(b, v, t).reshape(b * v, t) if padded else None
        self.row_max = (self.rows.masked_fill(~valid_rows, NEG_INF) if padded else self.rows).amax(1)  # (B * V,)
        self.row_probs = (self.rows - self.row_max[:, None]).exp_()
        if padded:
            self.row_probs.masked_fill_(~valid_rows, 0.0)
        self.blank_frames = x[:, blank]  # (B, T)
        self.blank_sums = self.blank_frames.cumsum(1)  # (B, T)
        self.blank, self.eos, self.vocab_size = blank, eos, v
        self.max_elements = max_elements  # bounds (rows x candidates x T) per chunk

    def init_state(self, utt: torch.Tensor) -> CTCPrefixState:
        """The empty prefix for each row; ``utt`` (N,) maps rows to utterances."""
        utt = utt.to(self.rows.device)
        n = utt.shape[0]
        blank_only = self.blank_sums.index_select(0, utt)  # (N, T)
        r = torch.stack([torch.full_like(blank_only, NEG_INF), blank_only], dim=1)
        return CTCPrefixState(r, torch.zeros(n, dtype=r.dtype, device=r.device),
                              torch.full((n,), -1, dtype=torch.long, device=r.device), utt)

    def score(self, state: CTCPrefixState, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Prefix scores log P(g+c...) (N, C) of ``candidates`` (N, C), or (N, V) of
        every token when None. Absolute, not increments: subtract ``state.score``."""
        n, t = state.r.shape[0], state.r.shape[2]
        if candidates is None:
            candidates = torch.arange(self.vocab_size, device=self.rows.device).expand(n, -1)
        candidates = candidates.to(self.rows.device)
        chunk = max(1, self.max_elements // max(1, t * n))
        phi_prev, whole = self._prefix_terms(state)
        parts = [self._psi(state, phi_prev, whole, candidates[:, i : i + chunk])
                 for i in range(0, candidates.shape[1], chunk)]
        return torch.cat(parts, dim=1)

    def select(self, state: CTCPrefixState, index: torch.Tensor) -> CTCPrefixState:
        """Reorder or repeat rows (beams that survive, utterances that remain)."""
        index = index.to(state.r.device)
        return CTCPrefixState(state.r.index_select(0, index), state.score.index_select(0, index),
                              state.last.index_select(0, index), state.utt.index_select(0, index))

    def extend(self, state: CTCPrefixState, index: torch.Tensor, tokens: torch.Tensor,
               scores: torch.Tensor | None = None) -> CTCPrefixState:
        """Row ``index[m]`` followed by ``tokens[m]``, for the hypotheses a search keeps;
        ``scores`` their prefix scores where ``score`` already gave them.

        The forward variables of the chosen extensions are recomputed here rather than
        kept from ``score``: keeping them for every candidate would hold N x V x T floats
        when the whole vocabulary is scored."""
        picked = self.select(state, index)
        tokens = tokens.to(picked.r.device)
        if scores is None:
            scores = self._psi(picked, *self._prefix_terms(picked), tokens[:, None])[:, 0]
        x_c = self.rows.index_select(0, picked.utt * self.vocab_size + tokens)  # (N, T)
        r_n, r_b = picked.r[:, 0], picked.r[:, 1]
        # a repeated token is a new label only after a blank: phi keeps blank-ending paths
        phi = torch.where((tokens == picked.last)[:, None], r_b, torch.logaddexp(r_n, r_b))
        # r_n(t) = X(t) + logcumsumexp_{s<=t}(phi(s-1) - X(s-1)), X the cumulative sum of x_c,
        # phi(-1) the empty prefix's probability before frame 0 (1, else 0) and X(-1) = 0
        x_cum = x_c.cumsum(1)
        start = self._start(picked)[:, None]
        new_n = x_cum + torch.logcumsumexp(torch.cat([start, phi[:, :-1] - x_cum[:, :-1]], dim=1), dim=1)
        # r_b(t) = (r_n(t-1) (+) r_b(t-1)) b(t): the same form with the blank's sums
        b_cum = self.blank_sums.index_select(0, picked.utt)
        never = torch.full_like(start, NEG_INF)
        new_b = b_cum + torch.logcumsumexp(torch.cat([never, new_n[:, :-1] - b_cum[:, :-1]], dim=1), dim=1)
        return CTCPrefixState(torch.stack([new_n, new_b], dim=1), scores.to(picked.score.dtype), tokens, picked.utt)

    @staticmethod
    def _start(state: CTCPrefixState) -> torch.Tensor:
        """log phi(-1): before frame 0 only the empty prefix has probability (1)."""
        return torch.where(state.last < 0, 0.0, NEG_INF).to(state.r.dtype)

    def _prefix_terms(self, state: CTCPrefixState) -> tuple[torch.Tensor, torch.Tensor]:
        """phi one frame back, (N, 2, T): [all paths, blank-ending paths] of each prefix (a
        candidate repeating the prefix's last token continues only the blank-ending ones); and
        log P(labelling == prefix), (N, 1), the score of <eos>."""
        r_n, r_b = state.r[:, 0], state.r[:, 1]
        r_sum = torch.logaddexp(r_n, r_b)
        start = self._start(state)[:, None, None].expand(-1, 2, 1)
        phi_prev = torch.cat([start, torch.stack([r_sum, r_b], dim=1)[:, :, :-1]], dim=2)
        last_frame = (self.lens.index_select(0, state.utt) - 1)[:, None]
        return phi_prev, r_sum.gather(1, last_frame)

    def _psi(self, state: CTCPrefixState, phi_prev: torch.Tensor, whole: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """psi(g+c) = log sum_t phi(t-1) x_c(t), (N, C), as a product of probabilities scaled
        by each row's largest (phi's over frames, x_c's the table's), then logs put back."""
        n, c = cand.shape
        t = state.r.shape[2]
        rows = (state.utt[:, None] * self.vocab_size + cand).reshape(-1)
        x_c = self.row_probs.index_select(0, rows).view(n, c, t)
        valid = self.valid.index_select(0, state.utt)[:, None, :]
        phi_prev = phi_prev.masked_fill(~valid, NEG_INF)  # frames past the end read nothing
        top = phi_prev.amax(2, keepdim=True)  # (N, 2, 1)
        shift = torch.where(top > NEG_INF, top, 0.0)  # a dead prefix stays -inf, not nan
        sums = torch.bmm((phi_prev - shift).exp(), x_c.transpose(1, 2))  # (N, 2, C)
        repeat = (cand == state.last[:, None]).long()[:, None, :]  # which phi each candidate reads
        sums = sums.gather(1, repeat).squeeze(1)
        psi = sums.log() + shift.squeeze(2).gather(1, repeat[:, 0]) + self.row_max.index_select(0, rows).view(n, c)
        # the sum underflowed (every term e^-708 or less of the two largests' product, where
        # float64 loses digits): sum the logs instead
        lost = (sums < torch.finfo(sums.dtype).tiny) & (top.squeeze(2).gather(1, repeat[:, 0]) > NEG_INF)
        if bool(lost.any()):
            logs = torch.where(repeat[:, 0, :, None].bool(), phi_prev[:, 1:2], phi_prev[:, 0:1])  # (N, C, T)
            exact = (logs + self.rows.index_select(0, rows).view(n, c, t)).logsumexp(2)
            psi = torch.where(lost, exact, psi)
        psi = torch.where(cand == self.eos, whole, psi)
        return psi.masked_fill(cand == self.blank, NEG_INF)


# --- CTC-only prefix beam search -----------------------------------------------


@torch.no_grad()
def ctc_prefix_beam_search(
    ctc_log_probs: torch.Tensor, enc_lens: torch.Tensor, beam_size: int = 10, nbest: int = 1,
    prune: int | None = None, blank: int = BLANK,
) -> list[list[Hypothesis]]:
    """Frame-synchronous prefix beam search (Hannun et al. 2014), batched over utterances.

    Each prefix carries log P(ending in blank) and log P(ending in a label); per frame a
    prefix stays (blank, or its last token repeated) or grows by one of the ``prune``
    (default ``beam_size``) most likely tokens of the frame. An extension that equals a
    prefix already in the beam is merged into it, so each labelling is counted once.
    Scores are log P(labelling | x) summed over its alignments."""
    lp = ctc_log_probs.detach().double()
    b, t_max, v = lp.shape
    k = beam_size
    c = min(prune or beam_size, v - 1)
    dev = lp.device
    enc_lens = enc_lens.to(dev)
    dead = -2  # the length of an unused slot: never one more than any real length
    tokens = torch.full((b, k, t_max), -1, dtype=torch.long, device=dev)
    lens = torch.full((b, k), dead, dtype=torch.long, device=dev)
    lens[:, 0] = 0
    last = torch.full((b, k), -1, dtype=torch.long, device=dev)
    p_b = torch.full((b, k), NEG_INF, dtype=lp.dtype, device=dev)
    p_b[:, 0] = 0.0
    p_nb = torch.full_like(p_b, NEG_INF)
    pos = torch.arange(t_max, device=dev)
    for t in range(t_max):
        frame = lp[:, t]  # (B, V)
        total = torch.logaddexp(p_b, p_nb)
        stay_b = total + frame[:, blank, None]
        stay_nb = p_nb + frame.gather(1, last.clamp(min=0))
        top_v, top_i = frame.index_fill(1, torch.tensor([blank], device=dev), NEG_INF).topk(c, dim=1)
        ext = torch.where(top_i[:, None, :] == last[:, :, None], p_b[:, :, None], total[:, :, None])
        ext = ext + top_v[:, None, :]  # (B, K, C): prefix k grown by token top_i[c]
        # prefix k + token == prefix j: j is one longer, agrees on k's tokens, ends in the token
        same = ((tokens[:, :, None, :] == tokens[:, None, :, :]) | (pos >= lens[:, :, None, None])).all(-1)
        same &= lens[:, None, :] == lens[:, :, None] + 1  # (B, K, J)
        match = same[:, :, None, :] & (top_i[:, None, :, None] == last[:, None, None, :])  # (B, K, C, J)
        into = torch.where(match, ext[..., None], NEG_INF).logsumexp(dim=(1, 2))  # (B, J)
        stay_nb = torch.logaddexp(stay_nb, into)
        ext = ext.masked_fill(match.any(-1), NEG_INF)
        cand = torch.cat([torch.logaddexp(stay_b, stay_nb), ext.reshape(b, k * c)], dim=1)
        top, idx = cand.topk(k, dim=1)  # (B, K)
        grown = idx >= k
        parent = torch.where(grown, (idx - k).div(c, rounding_mode="floor"), idx)
        token = top_i.gather(1, ((idx - k) % c).clamp(min=0))
        new_b = torch.where(grown, NEG_INF, stay_b.gather(1, parent))
        new_nb = torch.where(grown, top, stay_nb.gather(1, parent))
        new_tokens = tokens.gather(1, parent[:, :, None].expand(-1, -1, t_max))
        new_lens = lens.gather(1, parent)
        at = new_lens.clamp(min=0)[:, :, None]
        new_tokens.scatter_(2, at, torch.where(grown[:, :, None], token[:, :, None], new_tokens.gather(2, at)))
        new_last = torch.where(grown, token, last.gather(1, parent))
        new_lens = torch.where(grown, new_lens + 1, new_lens).masked_fill(top == NEG_INF, dead)
        # utterances whose frames have ended keep their beams as they are
        live = (t < enc_lens)[:, None]
        p_b, p_nb = torch.where(live, new_b, p_b), torch.where(live, new_nb, p_nb)
        tokens = torch.where(live[:, :, None], new_tokens, tokens)
        lens, last = torch.where(live, new_lens, lens), torch.where(live, new_last, last)
    scores = torch.logaddexp(p_b, p_nb)
    order = scores.argsort(dim=1, descending=True)
    out = []
    for i in range(b):
        hyps = [Hypothesis(tokens[i, j, : lens[i, j]].tolist(), float(scores[i, j]))
                for j in order[i].tolist() if scores[i, j] > NEG_INF]
        out.append(hyps[:nbest])
    return out


# --- registered decoders --------------------------------------------------------


class CTCGreedyDecoder:
    def __call__(self, model, enc_out: torch.Tensor, enc_lens: torch.Tensor) -> list[list[Hypothesis]]:
        return ctc_greedy_search(model.ctc_log_probs(enc_out), enc_lens)


class CTCBeamDecoder:
    def __init__(self, beam_size: int, nbest: int, prune: int | None):
        self.beam_size, self.nbest, self.prune = beam_size, nbest, prune

    def __call__(self, model, enc_out: torch.Tensor, enc_lens: torch.Tensor) -> list[list[Hypothesis]]:
        return ctc_prefix_beam_search(model.ctc_log_probs(enc_out), enc_lens, self.beam_size, self.nbest, self.prune)


@registry.decoders.register("ctc_greedy")
def ctc_greedy() -> CTCGreedyDecoder:
    """CTC best path: the most likely token per frame, repeats collapsed, blanks dropped."""
    return CTCGreedyDecoder()


@registry.decoders.register("ctc_beam")
def ctc_beam(
    beam_size: Annotated[int, Field(ge=1)] = 10,
    nbest: Annotated[int, Field(ge=1)] = 1,
    prune: Annotated[int, Field(ge=1)] | None = None,
) -> CTCBeamDecoder:
    """CTC prefix beam search over the CTC head alone (no decoder); prune = tokens tried per frame."""
    return CTCBeamDecoder(beam_size, nbest, prune)
