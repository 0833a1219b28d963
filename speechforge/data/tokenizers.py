"""Tokenizers: characters, and sentencepiece BPE trained on the training transcripts.

Both use the same special ids, so losses and decoders never ask which one they have:
0 <pad>, 1 <unk>, 2 <sos>, 3 <eos>, 4 <blank> (CTC).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from speechforge import registry
from speechforge.data.errors import DataError

SPECIALS = ("<pad>", "<unk>", "<sos>", "<eos>", "<blank>")
PAD, UNK, SOS, EOS, BLANK = range(5)


class TokenizerError(Exception):
    """The tokenizer cannot be trained as the recipe asks."""


class Tokenizer:
    pad_id, unk_id, sos_id, eos_id, blank_id = PAD, UNK, SOS, EOS, BLANK
    kind = "base"

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def trained(self) -> bool:
        raise NotImplementedError

    def fit(self, texts: list[str]) -> None:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def unencodable(self, text: str) -> str | None:
        """Why ``text`` cannot be represented exactly, or None when it can."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError

    def strip(self, ids: list[int]) -> list[int]:
        """Drop specials and cut at the first <eos>."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(i)
        return out


class CharTokenizer(Tokenizer):
    """One token per character; the inventory comes from the recipe or the training text."""

    kind = "char"

    def __init__(self, alphabet: str | None = None):
        self.chars: list[str] = sorted(set(alphabet)) if alphabet else []
        self._index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    @property
    def trained(self) -> bool:
        return bool(self.chars)

    def fit(self, texts: list[str]) -> None:
        if self.chars:
            return
        self.chars = sorted(set("".join(texts)))
        self._index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        return [self._index.get(c, UNK) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - len(SPECIALS)] for i in self.strip(ids))

    def unencodable(self, text: str) -> str | None:
        missing = sorted({c for c in text if c not in self._index})
        return f"characters outside the tokenizer's alphabet: {''.join(missing)!r}" if missing else None

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").write_text(json.dumps({"kind": self.kind, "chars": self.chars}))

    def load(self, directory: Path) -> None:
        data = json.loads((directory / "tokenizer.json").read_text())
        self.chars = data["chars"]
        self._index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}


class BPETokenizer(Tokenizer):
    """sentencepiece subwords; <sos>, <eos> and <blank> never appear inside pieces."""

    kind = "bpe"

    def __init__(self, vocab_size: int, model_type: str = "bpe", character_coverage: float = 1.0):
        self.requested = vocab_size
        self.model_type = model_type
        self.character_coverage = character_coverage
        self.sp = None
        self._model_bytes: bytes | None = None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() if self.sp is not None else self.requested

    @property
    def trained(self) -> bool:
        return self.sp is not None

    def fit(self, texts: list[str]) -> None:
        import sentencepiece as spm

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=model,
                vocab_size=self.requested,
                model_type=self.model_type,
                character_coverage=self.character_coverage,
                pad_id=PAD,
                unk_id=UNK,
                bos_id=SOS,
                eos_id=EOS,
                pad_piece="<pad>",
                unk_piece="<unk>",
                bos_piece="<sos>",
                eos_piece="<eos>",
                user_defined_symbols=["<blank>"],
                minloglevel=2,
                num_threads=2,
            )
        except RuntimeError as err:
            match = re.search(r"value <= (\d+)", str(err))
            most = f" at most {match.group(1)} pieces" if match else " fewer pieces"
            raise TokenizerError(
                f"tokenizer.vocab_size: the training transcripts ({len(texts)} utterances, "
                f"{sum(len(t) for t in texts)} characters) support{most}, not {self.requested}; "
                "lower tokenizer.vocab_size or train on more text"
            ) from None
        self._load_bytes(model.getvalue())

    def _load_bytes(self, data: bytes) -> None:
        import sentencepiece as spm

        self._model_bytes = data
        self.sp = spm.SentencePieceProcessor(model_proto=data)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(self.strip(ids))

    def unencodable(self, text: str) -> str | None:
        if UNK in self.encode(text):
            return "holds characters the BPE model maps to <unk>"
        return None

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.model").write_bytes(self._model_bytes)
        (directory / "tokenizer.json").write_text(json.dumps({"kind": self.kind, "vocab_size": self.vocab_size}))

    def load(self, directory: Path) -> None:
        self._load_bytes((directory / "tokenizer.model").read_bytes())


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer a run directory holds, whatever its kind."""
    path = directory / "tokenizer.json"
    if not path.exists():
        raise DataError("no tokenizer.json: not a trained run directory?", directory)
    kind = json.loads(path.read_text())["kind"]
    tok: Tokenizer = CharTokenizer() if kind == "char" else BPETokenizer(0)
    tok.load(directory)
    return tok


@registry.tokenizers.register("char")
def char(alphabet: str | None = None) -> CharTokenizer:
    """One token per character (alphabet from the recipe, else from the training text)."""
    return CharTokenizer(alphabet)


@registry.tokenizers.register("bpe")
def bpe(
    vocab_size: Annotated[int, Field(ge=8)] = 5000,
    model_type: Literal["bpe", "unigram"] = "bpe",
    character_coverage: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0,
) -> BPETokenizer:
    """sentencepiece BPE (or unigram) trained on the training transcripts."""
    return BPETokenizer(vocab_size, model_type, character_coverage)


class FrozenTokenizer(Tokenizer):
    """A trained tokenizer that ``fit`` leaves as it is, so a run trained on other
    transcripts keeps the ids of the run it came from (an LM, or a pretrained ASR
    model). It saves as the tokenizer it wraps."""

    def __init__(self, inner: Tokenizer):
        self.inner = inner
        self.kind = inner.kind

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def trained(self) -> bool:
        return True

    def fit(self, texts: list[str]) -> None:
        pass

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    def unencodable(self, text: str) -> str | None:
        return self.inner.unencodable(text)

    def save(self, directory: Path) -> None:
        self.inner.save(directory)

    def load(self, directory: Path) -> None:
        self.inner = load_tokenizer(directory)
