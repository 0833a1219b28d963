"""Audio sources' feature cache: recordings in, the HW4P2 feature layout out.

A source (``speechforge.data.sources``) lists its utterances (id, recording,
transcript); ``AudioCorpus`` computes their Kaldi log-mel filterbanks once into

    <cache_dir>/features.json            the front-end settings the cache was made with
    <cache_dir>/<split>/fbank/<utt>.npy  float32 (num_mel_bins, T)
    <cache_dir>/<split>/text/<utt>.npy   the transcript as characters

and from then on reads the cache as any feature corpus does. An utterance already in
the cache (and newer than its recording) is not computed again, so ``speechforge data
prepare`` can be stopped and rerun.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from speechforge.data.augment import OnTheFlyFeatures, one_thread
from speechforge.data.corpus import Entry, Split, Visit, read_split, stop_if_bad
from speechforge.data.errors import DataError
from speechforge.data.hw4p2 import FeatureCorpus
from speechforge.recipe import RecipeError

Log = Callable[[str], None]
# Seconds a manifest's "duration" may differ from the audio before the file counts as bad.
DURATION_TOLERANCE_S = 0.05


@dataclass
class Listing:
    """What a source's list of one split holds: its entries, and what was wrong with the rest."""

    entries: list[Entry]
    problems: list[str] = field(default_factory=list)  # "file[:line]: reason"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """A reader (or a rerun) never sees half a file: write beside it, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


@dataclass
class _Job:
    entry: Entry
    feats: Path
    text: Path
    sample_rate: int
    num_mel_bins: int


def _compute(job: _Job) -> str | None:
    """Compute and store one recording's features; the problem, if any, by file name."""
    from speechforge.data.features import fbank, read_audio

    entry, sr = job.entry, job.sample_rate
    try:
        with one_thread():
            wav = read_audio(entry.audio, sr)
    except DataError as err:
        return str(err)
    if not np.isfinite(wav).all():
        return f"{entry.audio}: holds NaN or infinite samples"
    seconds = len(wav) / sr
    if entry.duration is not None and abs(seconds - entry.duration) > DURATION_TOLERANCE_S:
        return f"{entry.audio}: lasts {seconds:.3f} s, but {entry.origin} says {entry.duration:.3f} s (truncated or the wrong file?)"
    feats = fbank(wav, sr, job.num_mel_bins)  # (F, T)
    if feats.shape[1] == 0:
        return f"{entry.audio}: too short for one 25 ms frame ({seconds:.3f} s)"
    _save_atomic(job.feats, feats)
    if entry.text is not None:
        _save_atomic(job.text, np.array(list(entry.text)))
    return None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # the workers share the cores; resampling uses torch


class AudioCorpus(FeatureCorpus):
    """Recordings listed by a source layout, their features computed once into a cache."""

    reads_audio = True

    def __init__(self, lister: Callable[[Path], Listing], cache_dir: Path, sample_rate: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.lister, self.cache_dir, self.sample_rate = lister, Path(cache_dir), sample_rate
        self._listings: dict[str, Listing] = {}

    def source(self, role: str) -> Path | None:
        folder = self.splits.get(role)
        return None if folder is None else self.root / folder

    def cache(self, role: str) -> Path:
        name = Path(self.splits[role]).name
        return self.cache_dir / (name[: -len(".jsonl")] if name.endswith(".jsonl") else name)

    def has(self, role: str) -> bool:
        source = self.source(role)
        return source is not None and source.exists()

    def prepare(self, log: Log = print) -> None:
        for role in self.roles:
            if self.has(role):
                self._prepare(role, log)

    def split(self, role: str, visit: Visit | None = None) -> Split:
        if role not in self._cache:
            if self.splits.get(role) is None:
                raise KeyError(f"data.{role}: no split configured")
            listing = self._prepare(role, print)
            split = read_split(self.cache(role).name, listing.entries, listing.problems, self.num_mel_bins,
                               self.on_bad_file, visit, where=self.source(role))
            if role == "train" and self.waveform_augment:
                self._compute_on_the_fly(split)
            self._cache[role] = split
        return self._cache[role]

    def _compute_on_the_fly(self, split: Split) -> None:
        spec = self.waveform_augment[0]
        stored = [u.id for u in split.utterances if u.audio is None]
        if stored:
            raise RecipeError([(f"{spec.path}.name", f"{spec.name!r} changes the waveform, but {len(stored)} training "
                                f"utterance(s) (e.g. {stored[0]}) come as stored features; give their \"audio\" instead")])
        front_end = OnTheFlyFeatures([s.build() for s in self.waveform_augment], self.sample_rate, self.num_mel_bins)
        for utt in split.utterances:
            utt.front_end = front_end

    def _check_settings(self) -> None:
        settings = {"front_end": "kaldi fbank (kaldi-native-fbank)", "sample_rate": self.sample_rate,
                    "num_mel_bins": self.num_mel_bins, "frame_length_ms": 25.0, "frame_shift_ms": 10.0, "dither": 0.0}
        path = self.cache_dir / "features.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != settings:
                diff = ", ".join(f"{k} {saved.get(k)} there, {v} now" for k, v in settings.items() if saved.get(k) != v)
                raise DataError(f"holds features made with other settings ({diff}); "
                                "delete it or set data.cache_dir to another folder", self.cache_dir)
        else:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings, indent=2) + "\n")

    def _prepare(self, role: str, log: Log) -> Listing:
        """List the split, stop early on listing problems, compute what the cache lacks."""
        if role in self._listings:
            return self._listings[role]
        source = self.source(role)
        listing = self.lister(source)
        entries = sorted(listing.entries, key=lambda e: e.id)[: self.max_utterances]
        problems = list(listing.problems)
        stop_if_bad(problems, self.on_bad_file)  # before hours of computing, not after
        if not entries and problems:  # on_bad_file = "skip", and every line was bad
            raise DataError(f"no usable utterances: all {len(problems)} listed are bad, e.g. {problems[0]}", source)
        if role == "train" and not any(e.text is not None for e in entries):
            raise DataError("no transcripts: the training split needs them", source)
        self._check_settings()
        out = self.cache(role)
        (out / "fbank").mkdir(parents=True, exist_ok=True)
        (out / "text").mkdir(parents=True, exist_ok=True)
        jobs = []
        for entry in entries:
            if entry.audio is None:
                continue  # a manifest line with stored features
            job = _Job(entry, out / "fbank" / f"{entry.id}.npy", out / "text" / f"{entry.id}.npy",
                       self.sample_rate, self.num_mel_bins)
            if job.feats.exists() and job.feats.stat().st_mtime >= entry.audio.stat().st_mtime:
                entry.feats = job.feats
                if entry.text is not None and not job.text.exists():
                    _save_atomic(job.text, np.array(list(entry.text)))
            else:
                jobs.append(job)
        if jobs:
            log(f"data.{role}: computing the features of {len(jobs)} of {len(entries)} recordings into {out}")
            for job, problem in zip(jobs, self._run(jobs, role)):
                if problem is None:
                    job.entry.feats = job.feats
                    continue
                stop_if_bad([problem], self.on_bad_file)
                problems.append(problem)
        self._listings[role] = Listing(entries, problems)
        return self._listings[role]

    def _run(self, jobs: list[_Job], role: str) -> Iterator[str | None]:
        from tqdm import tqdm

        with tqdm(total=len(jobs), desc=f"fbank {role}", unit="utt", disable=not sys.stderr.isatty()) as bar:
            if self.num_workers > 1 and len(jobs) > 1:
                # spawn, not fork: a forked child of a process that has run torch's thread pool can hang
                with multiprocessing.get_context("spawn").Pool(self.num_workers, initializer=_init_worker) as pool:
                    for problem in pool.imap(_compute, jobs, chunksize=8):
                        bar.update()
                        yield problem
            else:
                for job in jobs:
                    problem = _compute(job)
                    bar.update()
                    yield problem


def prepare_all(corpus: FeatureCorpus, log: Log = print) -> dict[str, dict[str, float]]:
    """What `speechforge data prepare` does: compute every split's features, then count them."""
    from speechforge.data.batching import BucketBatchSampler, padding_fraction

    corpus.prepare(log)
    stats = {}
    for role in corpus.roles:
        if corpus.has(role):
            split = corpus.split(role)
            stats[role] = split.stats()
            if split.skipped:
                log(split.skip_line(role))
    if "train" in stats:
        lengths = [u.num_frames for u in corpus.split("train").utterances]
        batches = BucketBatchSampler(lengths, corpus.max_frames, corpus.batch_size, corpus.bucketed, shuffle=False).batches()
        stats["train"]["batches"] = len(batches)
        stats["train"]["padding_fraction"] = round(padding_fraction(lengths, batches), 4)
    return stats
