"""Searches over an exported model, in numpy: the runtime's versions of
``speechforge.decode.greedy`` and ``speechforge.decode.ctc`` (same rules, same results up
to float rounding; tests/export checks them against the PyTorch decoders).

Each takes the model (``speechforge.runtime.model.OnnxModel``) and a batch's encoder
output and returns, per utterance, its hypotheses best first; ``DECODERS`` (in
``speechforge.runtime.decoders``) names them, beam search (``beam.py``) included."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from speechforge.data.tokenizers import BLANK, EOS, SOS


class Hypothesis(NamedTuple):
    tokens: list[int]  # without <sos>/<eos>
    score: float  # log-probability as the search scores it


def max_lengths(enc_lens: np.ndarray, max_len_ratio: float, max_len: int | None) -> np.ndarray:
    """Per-utterance output cap: a ratio of the encoder length (in float32, as
    ``speechforge.decode.search.max_lengths`` computes it), optionally bounded."""
    caps = np.maximum(np.ceil(enc_lens.astype(np.float32) * np.float32(max_len_ratio)), 1).astype(np.int64)
    return caps if max_len is None else np.minimum(caps, max_len)


def greedy(model, enc, max_len_ratio: float = 1.0, max_len: int | None = None) -> list[list[Hypothesis]]:
    """The most likely token at each step, through the decoder's cache, until every
    utterance has ended or reached its cap."""
    b = enc.enc_lens.shape[0]
    caps = max_lengths(enc.enc_lens, max_len_ratio, max_len)
    state = model.init_state(enc)
    tokens = np.full(b, SOS, dtype=np.int64)
    picked = np.full((b, int(caps.max())), EOS, dtype=np.int64)
    scores = np.zeros(b, dtype=np.float64)
    done = np.zeros(b, dtype=bool)
    for t in range(int(caps.max())):
        log_probs = model.step(tokens, state)
        tokens = np.where(done, EOS, log_probs.argmax(-1))
        scores += np.where(done, 0.0, log_probs[np.arange(b), tokens])
        done |= (tokens == EOS) | (t + 1 >= caps)
        picked[:, t] = tokens
        if done.all():
            break
    out = []
    for i in range(b):
        seq = picked[i, : int(caps[i])].tolist()
        out.append([Hypothesis(seq[: seq.index(EOS)] if EOS in seq else seq, float(scores[i]))])
    return out


def ctc_greedy(model, enc) -> list[list[Hypothesis]]:
    """CTC best path: the most likely token per frame, repeats collapsed, blanks dropped."""
    if enc.ctc_log_probs is None:
        raise ValueError("this export has no CTC head (the model was trained with model.ctc = false)")
    lp = enc.ctc_log_probs
    path = lp.argmax(-1)  # (B, S)
    best = np.take_along_axis(lp, path[..., None], -1)[..., 0]
    valid = np.arange(path.shape[1])[None, :] < enc.enc_lens[:, None]
    previous = np.concatenate([np.full_like(path[:, :1], -1), path[:, :-1]], axis=1)
    keep = valid & (path != BLANK) & (path != previous)
    scores = np.where(valid, best, 0.0).sum(1)
    return [[Hypothesis(path[i][keep[i]].tolist(), float(scores[i]))] for i in range(path.shape[0])]

