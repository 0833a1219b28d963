"""Errors raised while reading or preparing data."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A data file could not be read or does not hold what it should.

    The message starts with the file, so a user with thousands of utterances
    knows which one to look at: ``path/to/utt.wav: cannot read audio (...)``.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
