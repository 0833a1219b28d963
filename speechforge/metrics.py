"""Error rates. jiwer does the alignment: it is well tested, fast (rapidfuzz underneath)
and gives the substitution/deletion/insertion counts we would otherwise hand-roll."""

from __future__ import annotations

import jiwer


def _nonempty(refs: list[str], hyps: list[str]) -> tuple[list[str], list[str]]:
    # jiwer refuses empty references; an empty reference cannot be scored anyway
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    return [r for r, _ in pairs], [h for _, h in pairs]


def wer(refs: list[str], hyps: list[str]) -> float:
    refs, hyps = _nonempty(refs, hyps)
    return float(jiwer.wer(refs, hyps)) if refs else 0.0


def cer(refs: list[str], hyps: list[str]) -> float:
    refs, hyps = _nonempty(refs, hyps)
    return float(jiwer.cer(refs, hyps)) if refs else 0.0


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    return {"cer": round(cer(refs, hyps), 6), "wer": round(wer(refs, hyps), 6)}
