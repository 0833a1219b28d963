"""Audio sources: LibriSpeech folders, Kaldi data directories, JSON-lines manifests.

Each source lists its utterances (id, recording, transcript); an ``AudioCorpus``
(``speechforge.data.feature_cache``) computes their features once into a cache in the
HW4P2 layout and reads them from there. A bad entry is reported by file name (a list
or manifest line as ``file:line``) and stops the run, or with ``data.on_bad_file =
"skip"`` is left out and counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator

from pydantic import AfterValidator, Field

from speechforge import registry
from speechforge.data.augment import AUDIO_SUFFIXES
from speechforge.data.corpus import Entry, OnBadFile, PositiveOrNone, TestSplits
from speechforge.data.errors import DataError
from speechforge.data.feature_cache import AudioCorpus, Listing
from speechforge.recipe import Spec, Sub


# --- reading each layout's lists --------------------------------------------------------


def _normalize(text: str) -> str:
    return " ".join(text.split())


def _key_value_lines(path: Path) -> Iterator[tuple[str, str, str]]:
    """("file:line", key, rest of the line) of a Kaldi-style text file, blank lines skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text (byte {err.start})", path) from None
    for n, line in enumerate(lines, 1):
        parts = line.split(maxsplit=1)
        if parts:
            yield f"{path}:{n}", parts[0], parts[1].strip() if len(parts) > 1 else ""


def _bad_id(utt: str) -> str | None:
    # the id names the cache files, so it must be a plain file name
    if "/" in utt or utt.startswith("."):
        return f"utterance id {utt!r} cannot be a file name"
    return None


def _read_transcripts(files: list[Path], problems: list[str]) -> dict[str, tuple[str, str]]:
    """utt -> (transcript, "file:line"); duplicates, bad ids and empty transcripts go to problems."""
    texts: dict[str, tuple[str, str]] = {}
    for path in files:
        for where, utt, text in _key_value_lines(path):
            if utt in texts:
                problems.append(f"{where}: utterance {utt} listed twice (first at {texts[utt][1]})")
                continue
            # An empty transcript stays in the dict (as "") so that its recording is not
            # reported a second time, as audio without a transcript.
            texts[utt] = (_normalize(text), where)
            reason = _bad_id(utt) or ("" if texts[utt][0] else "transcript is empty")
            if reason:
                problems.append(f"{where}: {reason}")
                texts[utt] = ("", where)
    return texts


def _pair(audio: dict[str, tuple[Path, str | None]], texts: dict[str, tuple[str, str]],
          text_home: str, problems: list[str]) -> list[Entry]:
    """Match recordings with transcripts; when a split has transcripts, every recording needs one."""
    entries = []
    for utt in sorted(audio):
        path, where = audio[utt]
        if texts and utt not in texts:
            problems.append(f"{where or path}: audio without a transcript (no line for {utt} in {text_home})")
        elif not texts or texts[utt][0]:
            entries.append(Entry(utt, None, texts[utt][0] if texts else None, audio=path, origin=where))
    for utt in sorted(set(texts) - set(audio)):
        if texts[utt][0]:
            problems.append(f"{texts[utt][1]}: transcript without audio")
    return entries


def list_librispeech(split_dir: Path) -> Listing:
    """<split>/<speaker>/<chapter>/<utt>.flac, transcripts in <speaker>-<chapter>.trans.txt beside them."""
    if not split_dir.is_dir():
        raise DataError("no such folder: expected <speaker>/<chapter>/<utt>.flac inside", split_dir)
    audio = {p.stem: (p, None) for p in sorted(split_dir.glob("*/*/*")) if p.suffix.lower() in AUDIO_SUFFIXES}
    problems: list[str] = []
    texts = _read_transcripts(sorted(split_dir.glob("*/*/*.trans.txt")), problems)
    if not audio and not texts:
        raise DataError("no recordings: expected <speaker>/<chapter>/<utt>.flac with <speaker>-<chapter>.trans.txt",
                        split_dir)
    entries = _pair(audio, texts, "<speaker>-<chapter>.trans.txt", problems)
    for entry in entries:
        entry.speaker = entry.audio.parent.parent.name
    return Listing(entries, problems)


def list_kaldi(data_dir: Path) -> Listing:
    """A Kaldi data directory: wav.scp (<utt> <audio path>) and text (<utt> <transcript>).

    Relative audio paths are taken from the data directory. utt2spk and spk2utt may be
    there; nothing here is per speaker, so they are not read."""
    wav_scp, text_file = data_dir / "wav.scp", data_dir / "text"
    if not wav_scp.is_file():
        raise DataError("no wav.scp: expected lines '<utterance id> <path to audio>'", data_dir)
    if (data_dir / "segments").exists():
        raise DataError("segments files are not supported: each wav.scp entry must be one utterance; "
                        "cut the recordings into utterances first", data_dir / "segments")
    problems: list[str] = []
    texts = _read_transcripts([text_file], problems) if text_file.is_file() else {}
    audio: dict[str, tuple[Path, str | None]] = {}
    for where, utt, value in _key_value_lines(wav_scp):
        path = data_dir / value  # an absolute value stays as it is
        if utt in audio:
            reason = f"utterance {utt} listed twice (first at {audio[utt][1]})"
        elif _bad_id(utt):
            reason = _bad_id(utt)
        elif not value:
            reason = "expected '<utterance id> <path to audio>'"
        elif value.endswith("|"):
            reason = "commands ('... |') are not supported: write the audio to files and list their paths"
        elif not path.is_file():
            reason = f"audio file {path} does not exist"
        else:
            audio[utt] = (path, where)
            continue
        problems.append(f"{where}: {reason}")
        if utt not in audio:  # one problem per utterance, not a second "transcript without audio"
            texts[utt] = ("", where)
    return Listing(_pair(audio, texts, str(text_file), problems), problems)


def list_manifest(path: Path) -> Listing:
    """JSON lines: {"id", "audio" or "features", "text", "duration", "speaker"}; paths relative to the manifest."""
    if not path.is_file():
        raise DataError("no such manifest: expected JSON lines {\"id\", \"audio\" or \"features\", \"text\", \"duration\"}",
                        path)
    entries: list[Entry] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text (byte {err.start})", path) from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            where = f"{path}:{n}"
            entry = _manifest_entry(line, where, path.parent, seen)
            if isinstance(entry, str):
                problems.append(f"{where}: {entry}")
            else:
                entries.append(entry)
    if any(e.text is not None for e in entries):
        problems += [f"{e.origin}: {'audio' if e.audio else 'features'} without a transcript (no \"text\")"
                     for e in entries if e.text is None]
        entries = [e for e in entries if e.text is not None]
    return Listing(entries, problems)


def _manifest_entry(line: str, where: str, home: Path, seen: dict[str, str]) -> Entry | str:
    """One manifest line as an Entry, or why it is not one."""
    try:
        item: Any = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not JSON ({err.msg} at column {err.colno})"
    if not isinstance(item, dict):
        return "expected a JSON object {\"id\", \"audio\" or \"features\", \"text\", \"duration\"}"
    utt = item.get("id")
    if not isinstance(utt, str) or not utt:
        return "missing \"id\" (a non-empty string)"
    if _bad_id(utt):
        return _bad_id(utt)
    if utt in seen:
        return f"utterance {utt} listed twice (first at {seen[utt]})"
    seen[utt] = where
    kinds = [k for k in ("audio", "features") if item.get(k) is not None]
    if len(kinds) != 1:
        return "needs exactly one of \"audio\" (a recording) or \"features\" (a .npy of shape (num_mel_bins, T))"
    file = home / str(item[kinds[0]])
    if not file.is_file():
        return f"{kinds[0]} file {file} does not exist"
    text = item.get("text")
    if text is not None and not isinstance(text, str):
        return f"expected \"text\" to be a string, got {json.dumps(text)}"
    if text is not None and not _normalize(text):
        return "transcript is empty"
    duration = item.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration <= 0):
        return f"expected \"duration\" to be a positive number of seconds, got {json.dumps(duration)}"
    speaker = item.get("speaker")
    if speaker is not None and (not isinstance(speaker, str) or not speaker):
        return f"expected \"speaker\" to be a non-empty string, got {json.dumps(speaker)}"
    return Entry(utt, file if kinds[0] == "features" else None, _normalize(text) if text is not None else None,
                 audio=file if kinds[0] == "audio" else None, duration=duration, origin=where, speaker=speaker)


# --- the registered datasets ------------------------------------------------------------------------


def _existing_dir(value: str) -> str:
    if not Path(value).is_dir():
        raise ValueError(f"no such directory {value!r}; point elsewhere with --set data.root=PATH")
    return value


Root = Annotated[str, AfterValidator(_existing_dir)]
Augment = Annotated[list[Spec], Sub("augmentations", many=True)]
Normalization = Annotated[Spec, Sub("normalizers")]
SampleRate = Annotated[int, Field(gt=0)]
MelBins = Annotated[int, Field(gt=0)]
Workers = Annotated[int, Field(ge=0)]


def _register_audio_source(name: str, lister: Callable[[Path], Listing], splits: tuple[str, str, str],
                           doc: str) -> Callable[..., AudioCorpus]:
    """Register one raw-audio layout. Every layout takes the same recipe keys (the factory's
    signature is its schema); only the lister and the default split names differ."""
    train_default, dev_default, test_default = splits

    def factory(
        root: Root,
        train: str = train_default,
        dev: str | None = dev_default,
        test: TestSplits = test_default,
        cache_dir: str | None = None,
        sample_rate: SampleRate = 16000,
        num_mel_bins: MelBins = 80,
        normalization: Normalization = {"name": "global_mvn"},
        augment: Augment = [],
        max_frames: PositiveOrNone = 20000,
        batch_size: PositiveOrNone = None,
        bucketed: bool = True,
        num_workers: Workers = 0,
        on_bad_file: OnBadFile = "stop",
        max_utterances: PositiveOrNone = None,
    ) -> AudioCorpus:
        return AudioCorpus(
            lister, Path(cache_dir) if cache_dir else Path(root) / "features", sample_rate, root=Path(root),
            splits={"train": train, "dev": dev, "test": test}, num_mel_bins=num_mel_bins, on_bad_file=on_bad_file,
            max_frames=max_frames, batch_size=batch_size, bucketed=bucketed, num_workers=num_workers,
            normalization=normalization, augment=augment, max_utterances=max_utterances,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return registry.datasets.register(name)(factory)


librispeech = _register_audio_source(
    "librispeech", list_librispeech, ("train-clean-100", "dev-clean", "test-clean"),
    "Raw audio in the LibriSpeech layout: <root>/<split>/<speaker>/<chapter>/*.flac + *.trans.txt.")
kaldi = _register_audio_source(
    "kaldi", list_kaldi, ("train", "dev", "test"),
    "Kaldi data directories: <root>/<split>/wav.scp and text (utt2spk optional, not needed).")
jsonl = _register_audio_source(
    "jsonl", list_manifest, ("train.jsonl", "dev.jsonl", "test.jsonl"),
    'JSON-lines manifests <root>/<split>.jsonl: {"id", "audio" or "features", "text", "duration", "speaker"}.')
