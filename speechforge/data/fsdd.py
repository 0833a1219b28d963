"""The Free Spoken Digit Dataset as JSON-lines manifests, split by speaker.

FSDD's recordings are ``{digit}_{speaker}_{take}.wav`` in one folder, the transcript being the
digit's word. ``write_manifests`` turns them into ``train.jsonl``, ``dev.jsonl`` and
``test.jsonl`` for the ``jsonl`` source, pointing at the recordings where they are (nothing is
copied). Takes are split by their number, so every digit and speaker has the same share in
each split:

- ``test_speakers`` given (leave-one-speaker-out): test holds every take of those speakers;
  train and dev the other speakers' takes, dev those numbered 0, 10, 20, ...
- none given: every speaker in every split; dev takes 0, 10, 20, ..., test takes 1, 11, 21, ...,
  train the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from speechforge.data.errors import DataError

WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class Recording:
    digit: int
    speaker: str
    take: int
    path: Path

    @property
    def id(self) -> str:
        return f"{self.speaker}-{self.digit}-{self.take:02d}"


def recordings(folder: Path) -> list[Recording]:
    """Every ``{digit}_{speaker}_{take}.wav`` in ``folder``, sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("no such folder: expected FSDD's {digit}_{speaker}_{take}.wav inside", folder)
    found = [Recording(int(m[1]), m[2], int(m[3]), p.resolve())
             for p in folder.iterdir() if (m := _NAME.match(p.name))]
    if not found:
        raise DataError("holds no {digit}_{speaker}_{take}.wav recordings", folder)
    return sorted(found, key=lambda r: r.id)


def speakers(folder: Path) -> list[str]:
    return sorted({r.speaker for r in recordings(folder)})


def split_of(rec: Recording, test_speakers: set[str]) -> str:
    if test_speakers:
        return "test" if rec.speaker in test_speakers else "dev" if rec.take % 10 == 0 else "train"
    return {0: "dev", 1: "test"}.get(rec.take % 10, "train")


def write_manifests(folder: Path, out: Path, test_speakers: list[str] | tuple[str, ...] = ()) -> dict[str, int]:
    """Write out/{train,dev,test}.jsonl; return the number of utterances in each."""
    recs = recordings(folder)
    unknown = set(test_speakers) - {r.speaker for r in recs}
    if unknown:
        raise DataError(f"no recordings of {', '.join(sorted(unknown))}; speakers there: "
                        f"{', '.join(sorted({r.speaker for r in recs}))}", folder)
    lines: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for rec in recs:
        item = {"id": rec.id, "audio": str(rec.path), "text": WORDS[rec.digit], "speaker": rec.speaker}
        lines[split_of(rec, set(test_speakers))].append(json.dumps(item))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (out / f"{split}.jsonl").write_text("".join(row + "\n" for row in rows))
    return {split: len(rows) for split, rows in lines.items()}
