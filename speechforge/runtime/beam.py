"""Attention beam search with joint CTC prefix scoring, in numpy: the runtime's version of
``speechforge.decode.beam.beam_search`` and ``speechforge.decode.ctc.CTCPrefixScorer``,
the same rules step for step (batched over utterances x beams, ESPnet's pre-beam,
finished hypotheses refilled from live ones, an utterance stopping once no live
hypothesis can overtake its n-best) without the options a deployment rarely needs
(temperature, repeat penalty, LM fusion)."""

from __future__ import annotations

import math

import numpy as np

from speechforge.data.tokenizers import BLANK, EOS, SOS
from speechforge.runtime.search import Hypothesis, max_lengths

NEG_INF = -math.inf
LOG_FLOOR = -1.0e4  # as speechforge.decode.ctc: keeps the cumulative sums finite
PRE_BEAM_RATIO = 1.5
MAX_ELEMENTS = 1 << 22  # bounds (rows x candidates x frames) per chunk of CTC scoring


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)


class CTCPrefixScorer:
    """Prefix probabilities of N rows (hypotheses), row n reading utterance utt[n]'s frames;
    the recursion solved in closed form over time (see speechforge.decode.ctc)."""

    def __init__(self, ctc_log_probs: np.ndarray, enc_lens: np.ndarray):
        b, t, v = ctc_log_probs.shape
        x = np.maximum(ctc_log_probs.astype(np.float64), LOG_FLOOR)
        self.lens = np.clip(enc_lens, 1, t)
        self.valid = np.arange(t)[None, :] < self.lens[:, None]  # (B, T)
        x = np.where(self.valid[:, :, None], x, 0.0)  # frames past the end: log 1, masked later
        self.rows = np.ascontiguousarray(x.transpose(0, 2, 1))  # (B, V, T): a candidate's frames in a row
        self.blank_cum = x[:, :, BLANK].cumsum(1)  # (B, T)
        self.vocab_size = v

    def init_state(self, utt: np.ndarray) -> dict[str, np.ndarray]:
        blank_only = self.blank_cum[utt]
        return {"r": np.stack([np.full_like(blank_only, NEG_INF), blank_only], axis=1),  # (N, 2, T)
                "score": np.zeros(len(utt)), "last": np.full(len(utt), -1), "utt": utt}

    def score(self, state: dict[str, np.ndarray], cand: np.ndarray) -> np.ndarray:
        """Absolute prefix scores (N, C) of candidates (N, C)."""
        n, t = state["r"].shape[0], state["r"].shape[2]
        chunk = max(1, MAX_ELEMENTS // max(1, t * n))
        return np.concatenate([self._extend(state, cand[:, i : i + chunk])[0]
                               for i in range(0, cand.shape[1], chunk)], axis=1)

    def extend(self, state: dict[str, np.ndarray], index: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Row index[m] followed by tokens[m]."""
        picked = {k: v[index] for k, v in state.items()}
        psi, r = self._extend(picked, tokens[:, None], need_r=True)
        return {"r": r[:, 0], "score": psi[:, 0], "last": tokens, "utt": picked["utt"]}

    def _extend(self, state, cand: np.ndarray, need_r: bool = False):
        utt, last, r = state["utt"], state["last"], state["r"]
        n, c = cand.shape
        with np.errstate(invalid="ignore", divide="ignore"):  # -inf - -inf where a path is impossible
            x_c = self.rows[utt[:, None], cand]  # (N, C, T)
            r_n, r_b = r[:, 0], r[:, 1]
            r_sum = np.logaddexp(r_n, r_b)
            # a repeated token is a new label only after a blank: phi keeps blank-ending paths
            phi = np.where(cand[:, :, None] == last[:, None, None], r_b[:, None, :], r_sum[:, None, :])
            start = np.broadcast_to(np.where(last < 0, 0.0, NEG_INF)[:, None, None], (n, c, 1))
            phi_prev = np.concatenate([start, phi[:, :, :-1]], axis=2)
            psi = logsumexp(np.where(self.valid[utt][:, None, :], phi_prev + x_c, NEG_INF), axis=2)  # (N, C)
            full = r_sum[np.arange(n), self.lens[utt] - 1][:, None]  # log P(labelling == prefix)
            psi = np.where(cand == EOS, full, psi)
            psi = np.where(cand == BLANK, NEG_INF, psi)
            if not need_r:
                return psi, None
            x_cum = x_c.cumsum(2)
            x_prev = np.concatenate([np.zeros_like(x_cum[:, :, :1]), x_cum[:, :, :-1]], axis=2)
            new_n = x_cum + np.logaddexp.accumulate(phi_prev - x_prev, axis=2)
            b_cum = self.blank_cum[utt][:, None, :]
            b_prev = np.concatenate([np.zeros_like(b_cum[:, :, :1]), b_cum[:, :, :-1]], axis=2)
            n_prev = np.concatenate([np.full_like(new_n[:, :, :1], NEG_INF), new_n[:, :, :-1]], axis=2)
            new_b = b_cum + np.logaddexp.accumulate(n_prev - b_prev, axis=2)
        return psi, np.stack([new_n, new_b], axis=2)  # (N, C, 2, T)


def length_norm(scores: np.ndarray, lengths, alpha: float) -> np.ndarray:
    return scores if alpha == 0 else scores / ((5.0 + np.asarray(lengths, dtype=np.float64)) / 6.0) ** alpha


def best_reachable(live: np.ndarray, length: int, caps: np.ndarray, length_bonus: float,
                   length_penalty: float) -> np.ndarray:
    bound = live + max(length_bonus, 0.0) * np.maximum(caps - length, 0)
    if length_penalty == 0:
        return bound
    with np.errstate(invalid="ignore"):
        return np.where(bound > 0, length_norm(bound, length, length_penalty), length_norm(bound, caps, length_penalty))


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of each row, largest first."""
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def beam(model, enc, beam_size: int = 10, nbest: int = 1, length_penalty: float = 0.0, length_bonus: float = 0.0,
         min_len_ratio: float = 0.0, max_len_ratio: float = 1.0, max_len: int | None = None,
         ctc_weight: float = 0.0, ctc_window: int | None = None) -> list[list[Hypothesis]]:
    """n-best hypotheses per utterance, best first, scored
    (1 - ctc_weight) log P_att + ctc_weight log P_ctc + length_bonus |y|, ranked after GNMT
    length normalisation (``speechforge.decode.beam`` explains each argument)."""
    b, k, v = enc.enc_lens.shape[0], beam_size, model.vocab_size
    caps = max_lengths(enc.enc_lens, max_len_ratio, max_len)
    mins = np.minimum(np.floor(enc.enc_lens.astype(np.float32) * np.float32(min_len_ratio)).astype(np.int64), caps)
    l_max = int(caps.max())
    use_att = ctc_weight < 1.0
    state = model.init_state(enc, beams=k) if use_att else None
    ctc = ctc_state = None
    if ctc_weight > 0:
        if enc.ctc_log_probs is None:
            raise ValueError("ctc_weight > 0, but this export has no CTC head (model.ctc = false)")
        ctc = CTCPrefixScorer(enc.ctc_log_probs, enc.enc_lens)
        ctc_state = ctc.init_state(np.repeat(np.arange(b), k))
        window = math.ceil(PRE_BEAM_RATIO * k) if ctc_window is None else ctc_window
        pre_beam = use_att and 0 < window < v

    score = np.full((b, k), NEG_INF)
    score[:, 0] = 0.0
    history = np.full((b * k, max(l_max, 1)), EOS, dtype=np.int64)
    last = np.full(b * k, SOS, dtype=np.int64)
    fin_score = np.full((b, nbest), NEG_INF)
    fin_tokens = np.full((b, nbest, history.shape[1]), EOS, dtype=np.int64)
    fin_len = np.zeros((b, nbest), dtype=np.int64)
    active = np.arange(b)

    for t in range(l_max):
        a = active.size
        n = a * k
        step = np.zeros((n, v))
        if use_att:
            log_probs = model.step(last, state).astype(np.float64)
            step += (1.0 - ctc_weight) * (log_probs - logsumexp(log_probs, axis=1)[:, None])
        if length_bonus:
            step += length_bonus
            step[:, EOS] -= length_bonus
        step[:, EOS] = np.where(np.repeat(t < mins[active], k), NEG_INF, step[:, EOS])
        cand = None
        if ctc is not None:
            cand = top_k(step, window) if pre_beam else np.broadcast_to(np.arange(v), (n, v))
            prefix = ctc.score(ctc_state, cand)
            with np.errstate(invalid="ignore"):
                step = np.take_along_axis(step, cand, 1) + ctc_weight * (prefix - ctc_state["score"][:, None])
        with np.errstate(invalid="ignore"):
            total = score.reshape(n, 1) + step
        total = np.where(np.isnan(total), NEG_INF, total)
        c = total.shape[1]
        flat = total.reshape(a, k * c)
        pick = top_k(flat, k)  # (A, K)
        top = np.take_along_axis(flat, pick, 1)
        src = (np.arange(a)[:, None] * k + pick // c).reshape(-1)
        token = (pick % c).reshape(-1)
        if cand is not None:
            token = cand[src, token]
        token = token.reshape(a, k)

        found = top > NEG_INF
        ended = found & (token == EOS)
        at_cap = found & ~ended & (t + 1 >= caps[active][:, None])
        grown = history[src].reshape(a, k, -1)
        grown[:, :, t] = token
        finishing = ended | at_cap
        lengths = np.where(ended, t, t + 1)
        new_fin = np.where(finishing, length_norm(top, lengths, length_penalty), NEG_INF)
        merged = np.concatenate([fin_score[active], new_fin], axis=1)
        order = top_k(merged, nbest)
        fin_score[active] = np.take_along_axis(merged, order, 1)
        fin_tokens[active] = np.take_along_axis(np.concatenate([fin_tokens[active], grown], axis=1), order[:, :, None], 1)
        fin_len[active] = np.take_along_axis(np.concatenate([fin_len[active], lengths], axis=1), order, 1)

        score = np.where(found & ~finishing, top, NEG_INF)
        live = score.max(axis=1)
        bound = best_reachable(live, t + 1, caps[active], length_bonus, length_penalty)
        done = (live == NEG_INF) | (fin_score[active, -1] >= bound)
        if done.all():
            break
        keep = ~done
        index = src.reshape(a, k)[keep].reshape(-1)
        last = token[keep].reshape(-1)
        active, score = active[keep], score[keep]
        history = grown[keep].reshape(-1, grown.shape[2])
        if use_att:
            state = state.select(index, np.flatnonzero(keep) if done.any() else None)
        if ctc is not None:
            ctc_state = ctc.extend(ctc_state, index, last)

    out = []
    for i in range(b):
        hyps = [Hypothesis(fin_tokens[i, j, : fin_len[i, j]].tolist(), float(fin_score[i, j]))
                for j in range(nbest) if fin_score[i, j] > NEG_INF]
        out.append(hyps or [Hypothesis([], NEG_INF)])
    return out
