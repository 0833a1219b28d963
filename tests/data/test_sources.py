"""Audio sources: LibriSpeech, Kaldi and JSON-lines layouts of the real FSDD recordings,
their feature cache, and each kind of bad entry reported by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_layouts import build, recordings, split_path, write_layout

from speechforge.cli import main
from speechforge.data.corpus import scan_feature_split
from speechforge.data.errors import DataError
from speechforge.data.features import fbank, read_audio

KINDS = ("librispeech", "kaldi", "jsonl")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def train_dev():
    return recordings("george") + recordings("jackson", range(5)), recordings("theo", range(4))


@pytest.mark.parametrize("kind", KINDS)
def test_each_source_reads_the_real_recordings(tmp_path, kind, train_dev):
    train, dev = train_dev
    corpus = build(kind, write_layout(kind, tmp_path / kind, train, dev))
    corpus.prepare(log=lambda msg: None)
    split = corpus.split("train")
    assert [u.id for u in split.utterances] == sorted(u for u, _, _ in train)
    by_id = {u: (wav, text) for u, wav, text in train}
    for utt in split.utterances:
        wav, text = by_id[utt.id]
        assert utt.text == text
        # 8 kHz -> 16 kHz doubles the samples; Kaldi's snip_edges framing: 400-sample window, 160 shift
        assert utt.num_frames == 1 + (2 * sf.info(wav).frames - 400) // 160
    assert len(corpus.split("dev").utterances) == 4 and corpus.split("dev").has_text


def test_the_three_layouts_give_the_features_of_the_recording(tmp_path, train_dev):
    """FLAC copies, wav.scp and manifest entries of one recording: the same numbers, which are
    the filterbank of the original WAV read at 16 kHz."""
    train = train_dev[0][:3]
    feats = {}
    for kind in KINDS:
        corpus = build(kind, write_layout(kind, tmp_path / kind, train), dev=None)
        feats[kind] = [np.load(u.feats) for u in corpus.split("train").utterances]
    for i, (_, wav, _) in enumerate(train):
        expected = fbank(read_audio(wav, 16000))
        for kind in KINDS:
            np.testing.assert_array_equal(feats[kind][i], expected)


def test_the_cache_is_the_hw4p2_layout(tmp_path, train_dev):
    root = write_layout("librispeech", tmp_path / "ls", *train_dev)
    corpus = build("librispeech", root)
    corpus.prepare(log=lambda msg: None)
    assert json.loads((root / "features" / "features.json").read_text())["sample_rate"] == 16000
    cached = scan_feature_split(root / "features" / "train-clean-100", 80, "stop", require_text=True)
    assert {(u.id, u.text, u.num_frames) for u in cached.utterances} == {
        (u.id, u.text, u.num_frames) for u in corpus.split("train").utterances}


def test_prepare_computes_only_what_the_cache_lacks(tmp_path, train_dev):
    root = write_layout("kaldi", tmp_path / "kaldi", *train_dev)
    cache = tmp_path / "cache"
    logs: list[str] = []
    build("kaldi", root, cache_dir=str(cache)).prepare(logs.append)
    assert any("15 of 15 recordings" in line for line in logs) and any("4 of 4" in line for line in logs)
    logs.clear()
    build("kaldi", root, cache_dir=str(cache)).prepare(logs.append)
    assert logs == []
    # a recording newer than its features is computed again, alone
    wav = train_dev[0][0][1]
    target = cache / "train" / "fbank" / f"{train_dev[0][0][0]}.npy"
    os.utime(target, (wav.stat().st_mtime - 10, wav.stat().st_mtime - 10))
    build("kaldi", root, cache_dir=str(cache)).prepare(logs.append)
    assert len(logs) == 1 and "1 of 15 recordings" in logs[0]


def test_a_cache_made_with_other_settings_is_refused(tmp_path, train_dev):
    root = write_layout("jsonl", tmp_path / "m", train_dev[0][:2])
    build("jsonl", root, dev=None).prepare(lambda msg: None)
    with pytest.raises(DataError) as e:
        build("jsonl", root, dev=None, num_mel_bins=40).prepare(lambda msg: None)
    assert str(root / "features") in str(e.value) and "num_mel_bins 80 there, 40 now" in str(e.value)


def test_max_utterances_limits_what_is_computed(tmp_path, train_dev):
    root = write_layout("librispeech", tmp_path / "ls", *train_dev)
    corpus = build("librispeech", root, max_utterances=3)
    assert len(corpus.split("train").utterances) == 3
    assert len(list((root / "features" / "train-clean-100" / "fbank").glob("*.npy"))) == 3


def test_manifest_lines_may_give_stored_features(tmp_path):
    feats = np.random.default_rng(0).standard_normal((80, 37)).astype(np.float32)
    np.save(tmp_path / "a.npy", feats)
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "a", "features": "a.npy", "text": "HI"}) + "\n")
    split = build("jsonl", tmp_path, dev=None).split("train")
    (utt,) = split.utterances
    assert (utt.id, utt.text, utt.num_frames, utt.audio) == ("a", "HI", 37, None)


def test_a_split_without_transcripts_is_decodable_but_not_trainable(tmp_path, train_dev):
    root = write_layout("kaldi", tmp_path / "k", *train_dev)
    (root / "dev" / "text").unlink()
    corpus = build("kaldi", root)
    assert not corpus.split("dev").has_text and len(corpus.split("dev").utterances) == 4
    (root / "train" / "text").unlink()
    with pytest.raises(DataError, match="no transcripts"):
        build("kaldi", root).split("train")


def test_data_prepare_command_prints_statistics(tmp_path, train_dev, capsys):
    root = write_layout("librispeech", tmp_path / "ls", *train_dev)
    recipe = (REPO / "recipes" / "char_tiny.toml").read_text().replace(
        'name = "hw4p2"\nroot = "../shared/data/hw4_data_subset/hw4p2_data"', f'name = "librispeech"\nroot = "{root}"')
    (tmp_path / "r.toml").write_text(recipe)
    assert main(["--quiet", "data", "prepare", str(tmp_path / "r.toml"), "--set", "data.test=null"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["utterances"] == 15 and stats["dev"]["utterances"] == 4
    assert stats["train"]["characters"] == sum(len(t) for _, _, t in train_dev[0])
    assert 0 <= stats["train"]["padding_fraction"] < 1 and stats["train"]["batches"] >= 1


# --- bad entries, each by name --------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not audio at all " * 50)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    sf.write(path, samples, 8000, subtype="FLOAT" if samples.dtype == np.float32 else "PCM_16")


def _retarget(kind: str, root: Path, utt: str, new: Path) -> Path:
    """Point utterance ``utt`` at a file of our making (a copy of its recording to damage)."""
    listing = split_path(kind, root, "train")
    if kind == "librispeech":
        return next(listing.glob(f"*/*/{utt}.flac"))
    new.write_bytes(Path(_original(kind, root, utt)).read_bytes())
    target = listing / "wav.scp" if kind == "kaldi" else listing
    target.write_text(target.read_text().replace(str(_original(kind, root, utt)), str(new)))
    return new


def _original(kind: str, root: Path, utt: str) -> str:
    if kind == "kaldi":
        line = next(x for x in (split_path(kind, root, "train") / "wav.scp").read_text().splitlines() if x.startswith(utt))
        return line.split()[1]
    line = next(x for x in split_path(kind, root, "train").read_text().splitlines() if f'"{utt}"' in x)
    return json.loads(line)["audio"]


def _transcripts(kind: str, root: Path) -> Path:
    listing = split_path(kind, root, "train")
    return {"librispeech": lambda: next(listing.glob("*/*/*.trans.txt")), "kaldi": lambda: listing / "text",
            "jsonl": lambda: listing}[kind]()


def _edit_line(path: Path, utt: str, edit) -> None:
    """Rewrite the line of ``utt`` in a Kaldi-style list or a manifest."""
    def is_utt(line: str) -> bool:
        return json.loads(line)["id"] == utt if line.startswith("{") else line.split()[0] == utt

    path.write_text("\n".join(edit(x) if is_utt(x) else x for x in path.read_text().splitlines()) + "\n")


# (kind, damage(root) -> the file the message must name, reason, utterances left when skipped)
U1 = "11-0-0001"


def _empty_transcript(kind, root):
    path = _transcripts(kind, root)
    if kind == "jsonl":
        _edit_line(path, U1, lambda x: x.replace('"text": "ONE"', '"text": "  "'))
        return f"{path}:2"
    _edit_line(path, U1, lambda x: f"{U1} ")
    return f"{path}:2"


def _transcript_without_audio(kind, root):
    path = _transcripts(kind, root)
    with open(path, "a") as f:
        f.write(f"{U1[:-1]}9 NINE\n")
    return f"{path}:4"


def _audio_without_transcript(kind, root):
    path = _transcripts(kind, root)
    _edit_line(path, U1, lambda x: "")
    if kind == "librispeech":
        return str(next(split_path(kind, root, "train").glob(f"*/*/{U1}.flac")))
    return f"{split_path(kind, root, 'train') / 'wav.scp'}:2"


def _missing_file(kind, root):
    listing = split_path(kind, root, "train")
    target = listing / "wav.scp" if kind == "kaldi" else listing
    target.write_text(target.read_text().replace(str(_original(kind, root, U1)), str(root / "gone.wav")))
    return f"{target}:2"


def _truncated(kind, root):
    path = _retarget(kind, root, U1, root / "cut.wav")
    _truncate(path)
    return str(path)


def _unreadable(kind, root):
    path = _retarget(kind, root, U1, root / "noise.wav")
    _garbage(path)
    return str(path)


def _too_short(kind, root):
    path = _retarget(kind, root, U1, root / "short.wav")
    if kind == "librispeech":
        sf.write(path, np.zeros(150, np.int16), 8000)
    else:
        _write_wav(path, np.zeros(150, np.int16))
    if kind == "jsonl":  # a manifest that states the length, so that only the length is wrong
        _edit_line(split_path(kind, root, "train"), U1, lambda x: json.dumps({**json.loads(x), "duration": 150 / 8000}))
    return str(path)


def _nan_samples(kind, root):
    path = _retarget(kind, root, U1, root / "nan.wav")
    _write_wav(path, np.full(4000, np.nan, np.float32))
    return str(path)


def _not_json(kind, root):
    path = split_path(kind, root, "train")
    _edit_line(path, U1, lambda x: x[:-1])
    return f"{path}:2"


def _wrong_duration(kind, root):
    path = split_path(kind, root, "train")
    _edit_line(path, U1, lambda x: json.dumps({**json.loads(x), "duration": 9.5}))
    return _original(kind, root, U1)


def _duplicate(kind, root):
    path = split_path(kind, root, "train") / "wav.scp"
    with open(path, "a") as f:
        f.write(path.read_text().splitlines()[1] + "\n")
    return f"{path}:4"


def _pipe(kind, root):
    path = split_path(kind, root, "train") / "wav.scp"
    _edit_line(path, U1, lambda x: f"{U1} sox in.wav -t wav - |")
    return f"{path}:2"


def _transposed_features(kind, root):
    np.save(root / "t.npy", np.zeros((50, 80), np.float32))
    _edit_line(split_path(kind, root, "train"), U1, lambda x: json.dumps({"id": U1, "features": "t.npy", "text": "ONE"}))
    return str(root / "t.npy")


def _nan_features(kind, root):
    np.save(root / "n.npy", np.full((80, 20), np.inf, np.float32))
    _edit_line(split_path(kind, root, "train"), U1, lambda x: json.dumps({"id": U1, "features": "n.npy", "text": "ONE"}))
    return str(root / "n.npy")


def _no_audio_key(kind, root):
    path = split_path(kind, root, "train")
    _edit_line(path, U1, lambda x: json.dumps({"id": U1, "text": "ONE"}))
    return f"{path}:2"


BAD = {
    "empty transcript": (KINDS, _empty_transcript, "transcript is empty", 2),
    "transcript without audio": (("librispeech", "kaldi"), _transcript_without_audio, "transcript without audio", 3),
    "audio without transcript": (("librispeech", "kaldi"), _audio_without_transcript, "audio without a transcript", 2),
    "missing audio file": (("kaldi", "jsonl"), _missing_file, "gone.wav does not exist", 2),
    # libsndfile refuses a cut FLAC file; a cut WAV file it would read in part, so read_audio checks its header
    "truncated flac": (("librispeech",), _truncated, "cannot read audio", 2),
    "truncated wav": (("kaldi", "jsonl"), _truncated, "truncated WAV file", 2),
    "unreadable audio": (KINDS, _unreadable, "cannot read audio", 2),
    "too short": (KINDS, _too_short, "too short for one 25 ms frame", 2),
    "nan samples": (("kaldi", "jsonl"), _nan_samples, "NaN or infinite samples", 2),
    "not json": (("jsonl",), _not_json, "not JSON", 2),
    "wrong duration": (("jsonl",), _wrong_duration, "says 9.500 s", 2),
    "no audio or features": (("jsonl",), _no_audio_key, "needs exactly one of \"audio\"", 2),
    "transposed features": (("jsonl",), _transposed_features, "looks transposed", 2),
    "infinite features": (("jsonl",), _nan_features, "NaN or infinite values", 2),
    "listed twice": (("kaldi",), _duplicate, "listed twice (first at", 3),
    "pipe command": (("kaldi",), _pipe, "commands ('... |') are not supported", 2),
}
CASES = [(kind, name) for name, (kinds, *_) in BAD.items() for kind in kinds]


@pytest.mark.parametrize("kind,bad", CASES, ids=[f"{k}-{b.replace(' ', '_')}" for k, b in CASES])
def test_bad_entry_is_reported_by_name(tmp_path, kind, bad):
    _, damage, reason, left = BAD[bad]
    root = write_layout(kind, tmp_path / kind, recordings("george", range(3)))
    where = damage(kind, root)
    with pytest.raises(DataError) as e:
        build(kind, root, dev=None).split("train")
    message = str(e.value)
    assert message.startswith(where) and reason in message, message
    assert "data.on_bad_file" in message
    split = build(kind, root, dev=None, on_bad_file="skip").split("train")
    assert len(split.utterances) == left and len(split.skipped) == 1
    assert split.skipped[0].startswith(where) and reason in split.skipped[0]


def test_segments_files_are_refused_by_name(tmp_path):
    root = write_layout("kaldi", tmp_path / "k", recordings("george", range(2)))
    (root / "train" / "segments").write_text("a-0 a 0.0 1.0\n")
    with pytest.raises(DataError, match=f"{root / 'train' / 'segments'}: segments files are not supported"):
        build("kaldi", root, dev=None, on_bad_file="skip").split("train")


def test_a_character_the_tokenizer_cannot_encode_names_the_utterance(tmp_path):
    from speechforge import experiment, recipe as recipe_mod

    root = write_layout("jsonl", tmp_path / "m", recordings("george", range(3)))
    raw = recipe_mod.read_toml(REPO / "recipes" / "char_tiny.toml")
    raw["data"] = {"name": "jsonl", "root": str(root), "dev": None, "test": None}
    raw["tokenizer"] = {"name": "char", "alphabet": "ZERONW"}  # no T: TWO cannot be encoded
    with pytest.raises(DataError) as e:
        experiment.build(recipe_mod.validate(raw), tmp_path / "run", log=lambda m: None)
    assert str(e.value).startswith("11-0-0002: characters outside the tokenizer's alphabet: 'T'")



def test_every_skipped_file_is_listed_with_counts_per_reason(tmp_path):
    from speechforge.data.corpus import skip_reason

    root = write_layout("jsonl", tmp_path / "j", recordings("george", range(6)))
    wheres = [_unreadable("jsonl", root)]
    path = _retarget("jsonl", root, "11-0-0002", root / "cut.wav")
    _truncate(path)
    wheres.append(str(path))
    manifest = split_path("jsonl", root, "train")
    manifest.write_text(manifest.read_text() + "{not json\n")
    split = build("jsonl", root, dev=None, on_bad_file="skip").split("train")
    assert len(split.skipped) == 3, split.skipped
    listed = [skip_reason(entry)[0] for entry in split.skipped]
    assert all(any(w == where for where in listed) for w in wheres), listed
    assert any(where.startswith(f"{manifest}:") for where in listed)
    assert sum(split.skipped_by_reason().values()) == 3


@pytest.mark.parametrize("on_bad_file, says", [
    ("stop", "audio file {missing} does not exist (and 2 more)"),
    ("skip", "no usable utterances: all 3 listed are bad, e.g. {where}: audio file {missing} does not exist"),
])
def test_a_manifest_whose_recordings_are_all_gone_names_the_first_missing_file(tmp_path, on_bad_file, says):
    # as after moving the recordings a manifest lists: not "no transcripts"
    root = tmp_path / "m"
    root.mkdir()
    lines = [{"id": f"u{i}", "audio": f"gone/{i}.wav", "text": "ONE"} for i in range(3)]
    (root / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataError) as err:
        build("jsonl", root, dev=None, on_bad_file=on_bad_file).split("train")
    missing = root / "gone" / "0.wav"
    assert says.format(missing=missing, where=f"{root / 'train.jsonl'}:1") in str(err.value)
