"""The data model: utterances with ids, feature files, transcripts and lengths.

Every source (the HW4P2 feature layout, audio layouts, manifests) ends up as a list of
``Utterance`` per split; everything downstream (normalization, batching, decoding)
only sees those. Bad files are found here, once, and reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Iterable, Literal

import numpy as np
from pydantic import AfterValidator, Field

from speechforge.data.errors import DataError

OnBadFile = Literal["stop", "skip"]
PositiveOrNone = Annotated[int, Field(gt=0)] | None  # a recipe limit that may be left off


@dataclass
class Utterance:
    id: str
    feats: Path  # .npy of shape (num_mel_bins, T)
    text: str | None
    num_frames: int  # of the stored features
    audio: Path | None = None  # the recording the features were computed from, if any
    # Set on training utterances whose features are recomputed from ``audio`` at every
    # read, after waveform augmentation (see speechforge.data.augment.OnTheFlyFeatures).
    front_end: Callable[[Path], np.ndarray] | None = None
    corpus: str | None = None  # in a mix of corpora (speechforge.data.mixing), which one it came from
    speaker: str | None = None  # who speaks, where the source says (speaker_mvn normalizes by it)


# Sees each good feature matrix (T, F) as a split is read, with its speaker (None when the
# source does not say): how normalization statistics come without a second pass.
Visit = Callable[[np.ndarray, "str | None"], None]


@dataclass
class Entry:
    """One utterance as a source lists it, before its files are read."""

    id: str
    feats: Path | None  # stored features; None until an audio source has computed them
    text: str | Path | None  # the transcript, or the .npy file holding it
    audio: Path | None = None
    duration: float | None = None  # seconds, as the source states it (checked against the audio)
    origin: str | None = None  # where the source lists it ("wav.scp:12"), for messages
    speaker: str | None = None


@dataclass
class Split:
    name: str
    utterances: list[Utterance]
    skipped: list[str] = field(default_factory=list)  # "path: reason" of every file left out

    def skip_line(self, role: str, listed_in: Path | None = None) -> str | None:
        """The log line about the files left out, or None when there are none."""
        if not self.skipped:
            return None
        where = f"; all of them in {listed_in}" if listed_in is not None else ""
        return f"data.{role}: skipped {len(self.skipped)} bad file(s), e.g. {self.skipped[0]}{where}"

    def skipped_by_reason(self) -> dict[str, int]:
        """How many files were left out for each kind of reason."""
        from collections import Counter

        return dict(Counter(skip_reason(entry)[1] for entry in self.skipped))

    @property
    def has_text(self) -> bool:
        return bool(self.utterances) and all(u.text is not None for u in self.utterances)

    def stats(self, frame_rate: float = 100.0) -> dict[str, float]:
        frames = sum(u.num_frames for u in self.utterances)
        return {
            "utterances": len(self.utterances),
            "hours": round(frames / frame_rate / 3600, 4),
            "frames": frames,
            "characters": sum(len(u.text or "") for u in self.utterances),
            "skipped": len(self.skipped),
        }


def _test_folders(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list):
        names = [Path(folder).name for folder in value]
        if not value or len(set(names)) < len(names) or {"train", "dev"} & set(names):
            raise ValueError(f"expected one or more split folders with distinct names other than train and dev, "
                             f"got {value}")
    return value


# data.test: one split folder, or several (LibriSpeech's test-clean and test-other), each
# decoded and scored on its own in the same run
TestSplits = Annotated[str | list[str] | None, AfterValidator(_test_folders)]


def split_roles(splits: dict[str, str | list[str] | None]) -> dict[str, str | None]:
    """Role -> folder. Several test folders are a role each, named by its folder
    ("test-clean", "test-other"); one keeps the role "test" (and its submission.csv)."""
    tests = splits.get("test")
    if not isinstance(tests, list):
        return dict(splits)
    roles = {role: folder for role, folder in splits.items() if role != "test"}
    if len(tests) == 1:
        return {**roles, "test": tests[0]}
    return {**roles, **{Path(folder).name: folder for folder in tests}}


def skip_reason(entry: str) -> tuple[str, str]:
    """A ``Split.skipped`` entry ("file: reason" or "file:line: reason") as (where, the kind of
    reason: its words before any detail in parentheses or after a colon or semicolon)."""
    where, _, reason = entry.partition(": ")
    return where, reason.split(" (")[0].split(";")[0].split(": ")[0].strip() or reason


def load_features(path: Path, num_mel_bins: int) -> np.ndarray:
    """Read one (num_mel_bins, T) feature file as (T, num_mel_bins) float32, or say why not."""
    try:
        feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read features ({err.__class__.__name__}: {err}); the file may be truncated or not a .npy", path) from None
    if feats.ndim != 2:
        raise DataError(f"expected a 2-D array of shape ({num_mel_bins}, T), got shape {feats.shape}", path)
    if feats.shape[0] != num_mel_bins:
        if feats.shape[1] == num_mel_bins:
            raise DataError(
                f"shape {feats.shape} looks transposed: features are stored as ({num_mel_bins}, T); save feats.T", path
            )
        raise DataError(f"expected {num_mel_bins} mel bins in the first axis, got shape {feats.shape}", path)
    if not np.issubdtype(feats.dtype, np.floating):
        raise DataError(f"expected floating-point features, got dtype {feats.dtype}", path)
    if feats.shape[1] == 0:
        raise DataError("has no frames", path)
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).sum())
        raise DataError(f"holds {bad} NaN or infinite values", path)
    return np.ascontiguousarray(feats.T, dtype=np.float32)


def load_transcript(path: Path) -> str:
    try:
        chars = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read transcript ({err.__class__.__name__}: {err})", path) from None
    text = "".join(chars.reshape(-1).tolist()) if chars.dtype.kind == "U" else None
    if text is None:
        raise DataError(f"expected an array of characters, got dtype {chars.dtype}", path)
    text = " ".join(text.split())
    if not text:
        raise DataError("transcript is empty", path)
    return text


def scan_feature_split(
    split_dir: Path,
    num_mel_bins: int,
    on_bad_file: OnBadFile,
    require_text: bool,
    visit: Visit | None = None,
    limit: int | None = None,
    speakers: dict[str, str] | None = None,
) -> Split:
    """Read the HW4P2 layout of one split: fbank/<utt>.npy (+ text/<utt>.npy).

    Every file is read once here, so a bad one stops the run (or is skipped and
    counted) before training starts rather than hours into it; ``visit`` sees each
    good feature matrix, which is how normalization statistics come for free."""
    fbank_dir, text_dir = split_dir / "fbank", split_dir / "text"
    if not fbank_dir.is_dir():
        raise DataError(f"no fbank/ folder: expected {fbank_dir}/<utt>.npy", split_dir)
    feat_ids = {p.stem: p for p in fbank_dir.glob("*.npy")}
    if not feat_ids:
        raise DataError("fbank/ holds no .npy files", split_dir)
    text_ids = {p.stem: p for p in text_dir.glob("*.npy")} if text_dir.is_dir() else {}
    if require_text and not text_ids:
        raise DataError(f"no transcripts: expected {text_dir}/<utt>.npy", split_dir)

    problems: list[str] = []
    if text_ids:
        problems += [f"{feat_ids[u]}: features without a transcript" for u in sorted(set(feat_ids) - set(text_ids))]
        problems += [f"{text_ids[u]}: transcript without features" for u in sorted(set(text_ids) - set(feat_ids))]
    ids = sorted(set(feat_ids) & set(text_ids)) if text_ids else sorted(feat_ids)
    if limit is not None:
        ids = ids[:limit]
    speakers = speakers or {}
    entries = [Entry(utt, feat_ids[utt], text_ids.get(utt), speaker=speakers.get(utt)) for utt in ids]
    return read_split(split_dir.name, entries, problems, num_mel_bins, on_bad_file, visit, where=split_dir)


def read_split(
    name: str,
    entries: list[Entry],
    problems: list[str],
    num_mel_bins: int,
    on_bad_file: OnBadFile,
    visit: Visit | None = None,
    where: Path | None = None,
) -> Split:
    """Read every listed feature file (and transcript file) once, whatever the source.

    ``problems`` are those the source found while listing (a line that is not JSON, an
    audio file that is missing); they count as bad files like the ones found here."""
    problems = list(problems)
    utterances = []
    for entry in entries:
        if entry.feats is None:
            continue  # an audio source could not compute them; its problem is already listed
        try:
            text = load_transcript(entry.text) if isinstance(entry.text, Path) else entry.text
            feats = load_features(entry.feats, num_mel_bins)
        except DataError as err:
            problems.append(str(err))
            continue
        if visit is not None:
            visit(feats, entry.speaker)
        utterances.append(Utterance(entry.id, entry.feats, text, feats.shape[0], audio=entry.audio, speaker=entry.speaker))
    stop_if_bad(problems, on_bad_file)
    if not utterances:
        raise DataError("no usable utterances", where)
    return Split(name, utterances, problems)


def stop_if_bad(problems: list[str], on_bad_file: OnBadFile) -> None:
    """With data.on_bad_file = "stop", the first problem (and how many more) ends the run."""
    if problems and on_bad_file == "stop":
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}; set data.on_bad_file = \"skip\" to leave bad files out and count them")


def check_encodable(texts: Iterable[tuple[str, str]], can_encode: Callable[[str], str | None]) -> list[str]:
    """Utterances whose transcript the tokenizer cannot represent: 'id: reason'."""
    out = []
    for utt_id, text in texts:
        reason = can_encode(text)
        if reason:
            out.append(f"{utt_id}: {reason}")
    return out
