"""Text a user chooses for the synthetic voices to say, instead of the built-in grammar.

Either sentences (a file, one a line: each utterance says one) or a word list (each utterance
says ``words_per_utterance`` of them, e.g. one digit, or a string of three). Items are dealt
from a shuffled deck that is refilled only when empty, so a corpus covers every sentence or
word about equally often (ten digits in 1000 utterances: 100 each), in a seeded order.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from speechforge.data.errors import DataError
from speechforge.data.synth.text import ALLOWED


def clean(text: str, where: str) -> str:
    """A transcript as the corpus stores it: upper case, single spaces; anything a tokenizer of
    the built-in corpus would not expect is refused, naming where it came from."""
    text = " ".join(text.upper().split())
    if not ALLOWED.match(text):
        bad = sorted({c for c in text if not (c.isalpha() and c.isascii()) and c not in "' "})
        raise DataError(f"{where}: {text!r} holds {' '.join(repr(c) for c in bad)}; the synthetic corpus speaks "
                        "letters, apostrophes and spaces only (spell numbers out: 7 -> SEVEN)")
    return text


@dataclass(frozen=True)
class TargetText:
    """What a targeted corpus says: ``items`` are sentences or words, ``per_utterance`` how many
    of them one utterance strings together (inclusive range)."""

    items: tuple[str, ...]
    per_utterance: tuple[int, int] = (1, 1)
    source: str = "words"  # "words", or the sentence file's path

    @classmethod
    def from_words(cls, words: list[str], per_utterance: tuple[int, int] = (1, 1)) -> "TargetText":
        if not words:
            raise DataError("the word list is empty")
        lo, hi = per_utterance
        if not 1 <= lo <= hi:
            raise DataError(f"words per utterance: expected 1 <= low <= high, got [{lo}, {hi}]")
        return cls(tuple(clean(w, f"word {i + 1}") for i, w in enumerate(words)), (lo, hi), "words")

    @classmethod
    def from_file(cls, path: str | Path) -> "TargetText":
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError("no such text file: expected one sentence a line", path) from None
        except UnicodeDecodeError as err:
            raise DataError(f"not UTF-8 text (byte {err.start})", path) from None
        sentences = tuple(clean(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip())
        if not sentences:
            raise DataError("holds no sentences: expected one a line", path)
        return cls(sentences, (1, 1), str(path))

    def describe(self) -> dict:
        """What corpus.json records, so a corpus made from other text is told apart."""
        if self.source == "words":
            return {"kind": "words", "words": list(self.items), "words_per_utterance": list(self.per_utterance)}
        digest = hashlib.sha256("\n".join(self.items).encode()).hexdigest()[:16]
        return {"kind": "sentences", "file": self.source, "sentences": len(self.items), "sha256": digest}

    def deck(self, seed: str) -> "Deck":
        return Deck(self.items, self.per_utterance, random.Random(seed))


class Deck:
    """Deals items from a shuffled deck, reshuffled when it runs out; ``sentence()`` as
    ``SentenceGenerator.sentence()`` does, so the corpus draws from either alike."""

    def __init__(self, items: tuple[str, ...], per_utterance: tuple[int, int], rng: random.Random):
        self.items, self.per_utterance, self.rng = items, per_utterance, rng
        self.left: list[str] = []

    def _next(self) -> str:
        if not self.left:
            self.left = list(self.items)
            self.rng.shuffle(self.left)
        return self.left.pop()

    def sentence(self) -> str:
        return " ".join(self._next() for _ in range(self.rng.randint(*self.per_utterance)))
