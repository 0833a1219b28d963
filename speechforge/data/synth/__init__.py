"""A built-in synthetic speech corpus: our sentence grammar, espeak-ng voices, simulated noise."""

from speechforge.data.synth.corpus import build_corpus

__all__ = ["build_corpus"]
