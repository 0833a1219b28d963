"""Text for the language model: where sentences come from, and how they are batched.

Two sources, one sentence per item:

* ``hw4p1_text``: the HW4P1 layout, ``<root>/{train,val,test}/<id>.npy``, each file a
  0-d unicode array holding one transcript;
* ``text_lines``: plain UTF-8 files, one sentence a line.

A sentence becomes ``<sos> w1 .. wn`` in and ``w1 .. wn <eos>`` out, as the ASR decoder
sees transcripts, so a trained LM scores exactly what the decoder produces.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import AfterValidator, Field
from torch.utils.data import DataLoader

from speechforge import registry
from speechforge.data.batching import BucketBatchSampler, token_tensors
from speechforge.data.corpus import OnBadFile, PositiveOrNone, stop_if_bad
from speechforge.data.errors import DataError
from speechforge.data.tokenizers import Tokenizer

ROLES = ("train", "val", "test")
Case = Literal["keep", "upper", "lower"]


@dataclass
class Sentence:
    id: str
    text: str


@dataclass
class TextSplit:
    sentences: list[Sentence]
    skipped: list[str] = field(default_factory=list)  # "path: reason" per file left out

    def stats(self) -> dict[str, int]:
        return {"sentences": len(self.sentences), "characters": sum(len(s.text) for s in self.sentences),
                "skipped": len(self.skipped)}


@dataclass
class LMBatch:
    tokens_in: torch.Tensor  # (B, U) <sos> + tokens, PAD after
    tokens_out: torch.Tensor  # (B, U) tokens + <eos>, PAD after
    token_lens: torch.Tensor  # (B,) predicted tokens, <eos> included
    char_lens: torch.Tensor  # (B,) characters, spaces and one for <eos> included

    def to(self, device: torch.device, non_blocking: bool = False) -> "LMBatch":
        tensors = (self.tokens_in, self.tokens_out, self.token_lens, self.char_lens)
        return LMBatch(*(t.to(device, non_blocking=non_blocking) for t in tensors))


def collate(items: list[tuple[list[int], int]], step: int = 1) -> LMBatch:
    """(token ids, characters) pairs -> one right-padded batch, its length rounded up to ``step``."""
    tokens_in, tokens_out = token_tensors([ids for ids, _ in items], step)
    token_lens = torch.tensor([len(ids) + 1 for ids, _ in items])
    char_lens = torch.tensor([chars + 1 for _, chars in items])
    return LMBatch(tokens_in, tokens_out, token_lens, char_lens)


class TextCorpus:
    """Splits of sentences, read on first use, normalised, and batched by length.

    ``batch_size`` bounds sentences per batch, ``max_tokens`` the padded size
    (longest x count); either may be None."""

    def __init__(self, on_bad_file: OnBadFile, case: Case, max_sentences: int | None,
                 batch_size: int | None, max_tokens: int | None):
        self.on_bad_file, self.case, self.max_sentences = on_bad_file, case, max_sentences
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self._cache: dict[str, TextSplit] = {}

    def has(self, role: str) -> bool:
        raise NotImplementedError

    def _read(self, role: str) -> TextSplit:
        raise NotImplementedError

    def normalize(self, text: str) -> str:
        # runs of whitespace (a trailing newline, a double space) carry no meaning here
        text = " ".join(text.split())
        return text.upper() if self.case == "upper" else text.lower() if self.case == "lower" else text

    def split(self, role: str) -> TextSplit:
        if role not in self._cache:
            if not self.has(role):
                raise DataError(f"data.{role}: no such split")
            split = self._read(role)
            stop_if_bad(split.skipped, self.on_bad_file)
            split.sentences = [Sentence(s.id, self.normalize(s.text)) for s in split.sentences[: self.max_sentences]]
            self._cache[role] = split
        return self._cache[role]

    def texts(self, role: str) -> list[str]:
        return [s.text for s in self.split(role).sentences]

    def loader(self, role: str, tokenizer: Tokenizer, train: bool = False, seed: int = 0,
               step: int = 1) -> tuple[DataLoader, BucketBatchSampler]:
        """Batches of one split, padded to lengths in ``step`` tokens (the token step of
        batching.pad_steps for the run's precision)."""
        items = [(tokenizer.encode(s.text), len(s.text)) for s in self.split(role).sentences]
        sampler = BucketBatchSampler([len(ids) + 1 for ids, _ in items], self.max_tokens, self.batch_size,
                                     bucketed=True, shuffle=train, seed=seed, step=step)
        return DataLoader(items, batch_sampler=sampler, collate_fn=functools.partial(collate, step=step)), sampler


def read_npy_text(path: Path) -> str:
    """The transcript an HW4P1 .npy holds: a 0-d unicode string (a 1-d array of
    characters, the HW4P2 text layout, is accepted too)."""
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read as .npy ({err})", path) from None
    if value.dtype.kind != "U" or value.ndim > 1:
        raise DataError(f"expected a unicode string, got an array of {value.dtype} with shape {value.shape}", path)
    text = str(value[()]) if value.ndim == 0 else "".join(value.tolist())
    if not text.strip():
        raise DataError("empty transcript", path)
    return text


class HW4P1Text(TextCorpus):
    def __init__(self, root: Path, folders: dict[str, str | None], **kwargs):
        super().__init__(**kwargs)
        self.root, self.folders = root, folders

    def has(self, role: str) -> bool:
        folder = self.folders.get(role)
        return folder is not None and (self.root / folder).is_dir()

    def _read(self, role: str) -> TextSplit:
        where = self.root / self.folders[role]
        files = sorted(where.glob("*.npy"))
        if not files:
            raise DataError("no .npy transcripts here", where)
        split = TextSplit([])
        for path in files:
            try:
                split.sentences.append(Sentence(path.stem, read_npy_text(path)))
            except DataError as err:
                split.skipped.append(str(err))
        return split


class TextLines(TextCorpus):
    def __init__(self, files: dict[str, str | None], **kwargs):
        super().__init__(**kwargs)
        self.files = files

    def has(self, role: str) -> bool:
        return self.files.get(role) is not None

    def _read(self, role: str) -> TextSplit:
        path = Path(self.files[role])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"not UTF-8 text (byte {err.start})", path) from None
        except OSError as err:
            raise DataError(f"cannot read ({err.strerror or err})", path) from None
        sentences = [Sentence(f"{path.name}:{n}", line) for n, line in enumerate(lines, 1) if line.strip()]
        if not sentences:
            raise DataError("holds no sentences", path)
        return TextSplit(sentences)


def _existing_dir(value: str) -> str:
    if not Path(value).is_dir():
        raise ValueError(f"no such directory {value!r}: put the HW4P1 text there "
                         f"(<root>/train/*.npy, val/, test/) or point elsewhere with --set data.root=PATH")
    return value


def _existing_file(value: str | None) -> str | None:
    if value is not None and not Path(value).is_file():
        raise ValueError(f"no such file {value!r}")
    return value


@registry.datasets.register("hw4p1_text")
def hw4p1_text(
    root: Annotated[str, AfterValidator(_existing_dir)],
    train: str = "train",
    val: str | None = "val",
    test: str | None = "test",
    case: Case = "keep",
    batch_size: PositiveOrNone = 32,
    max_tokens: PositiveOrNone = None,
    on_bad_file: OnBadFile = "stop",
    max_sentences: PositiveOrNone = None,
) -> HW4P1Text:
    """HW4P1 text: <root>/<split>/<id>.npy, each a 0-d unicode string (one transcript)."""
    return HW4P1Text(Path(root), {"train": train, "val": val, "test": test}, on_bad_file=on_bad_file, case=case,
                     max_sentences=max_sentences, batch_size=batch_size, max_tokens=max_tokens)


@registry.datasets.register("text_lines")
def text_lines(
    train: Annotated[str, AfterValidator(_existing_file)],
    val: Annotated[str | None, AfterValidator(_existing_file)] = None,
    test: Annotated[str | None, AfterValidator(_existing_file)] = None,
    case: Case = "keep",
    batch_size: PositiveOrNone = 32,
    max_tokens: PositiveOrNone = None,
    max_sentences: PositiveOrNone = None,
) -> TextLines:
    """Plain UTF-8 text files, one sentence a line (blank lines ignored)."""
    return TextLines({"train": train, "val": val, "test": test}, on_bad_file="stop", case=case,
                     max_sentences=max_sentences, batch_size=batch_size, max_tokens=max_tokens)
