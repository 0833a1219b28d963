"""Audio layouts built in a test's tmp_path from the real FSDD recordings (8 kHz WAV).

The LibriSpeech tree holds FLAC copies; the Kaldi folder and the manifests point at the
shared recordings themselves. Each split is a list of (utterance id, recording, transcript).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from speechforge.recipe import validate_component

# shared/data sits beside the project checkout (see shared/data/README.md).
FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"
WORDS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()

Utt = tuple[str, Path, str]


def fsdd() -> Path:
    if not FSDD.is_dir():
        pytest.skip(f"real recordings not found at {FSDD} (shared/data/fsdd)")
    return FSDD


def recordings(speaker: str, digits: range = range(10), take: int = 0) -> list[Utt]:
    """One take of each digit by one speaker, with LibriSpeech-style ids <speaker>-<chapter>-<n>."""
    number = {"george": 11, "jackson": 12, "nicolas": 13, "theo": 14, "yweweler": 15}[speaker]
    return [(f"{number}-{take}-{d:04d}", fsdd() / f"{d}_{speaker}_{take}.wav", WORDS[d]) for d in digits]


def write_librispeech(split_dir: Path, utts: list[Utt]) -> Path:
    """<split>/<speaker>/<chapter>/<id>.flac (lossless copies) and <speaker>-<chapter>.trans.txt."""
    lines: dict[Path, list[str]] = {}
    for utt, wav, text in utts:
        speaker, chapter, _ = utt.split("-")
        folder = split_dir / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        samples, rate = sf.read(wav, dtype="int16")
        sf.write(folder / f"{utt}.flac", samples, rate)
        lines.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(f"{utt} {text}")
    for path, rows in lines.items():
        path.write_text("\n".join(rows) + "\n")
    return split_dir


def write_kaldi(data_dir: Path, utts: list[Utt]) -> Path:
    """wav.scp with absolute paths to the shared recordings, text, utt2spk."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "wav.scp").write_text("".join(f"{u} {wav}\n" for u, wav, _ in utts))
    (data_dir / "text").write_text("".join(f"{u} {text}\n" for u, _, text in utts))
    (data_dir / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u, _, _ in utts))
    return data_dir


def write_manifest(path: Path, utts: list[Utt]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for utt, wav, text in utts:
            f.write(json.dumps({"id": utt, "audio": str(wav), "text": text, "duration": sf.info(wav).duration}) + "\n")
    return path


# the split folders (or manifest names) each layout's recipe defaults to
SPLITS = {"librispeech": ("train-clean-100", "dev-clean"), "kaldi": ("train", "dev"), "jsonl": ("train", "dev")}


def split_path(kind: str, root: Path, role: str) -> Path:
    name = SPLITS[kind][("train", "dev").index(role)]
    return root / (f"{name}.jsonl" if kind == "jsonl" else name)


def write_layout(kind: str, root: Path, train: list[Utt], dev: list[Utt] = ()) -> Path:
    """The same utterances in the layout of source ``kind``; returns the dataset root."""
    writer = {"librispeech": write_librispeech, "kaldi": write_kaldi, "jsonl": write_manifest}[kind]
    for role, utts in (("train", train), ("dev", dev)):
        if utts:
            writer(split_path(kind, root, role), list(utts))
    return root


def build(kind: str, root: Path, **keys):
    """The registered dataset ``kind`` on root, built from a recipe section as a run would."""
    section = {"name": kind, "root": str(root), "test": None, **keys}
    return validate_component("datasets", section, "data").build()
