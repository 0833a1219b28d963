"""A speech corpus made on the spot, in the HW4P2 feature layout.

    out/train-clean-100/fbank/<utt>.npy   float32 (80, T) Kaldi log-mel, 100 frames/s
    out/train-clean-100/text/<utt>.npy    1-D array of single characters
    out/dev-clean/{fbank,text}/           same
    out/test-clean/{fbank,text}/          text too (the real test-clean has none),
                                          so that test CER can be measured
    out/<split>/wav/<utt>.wav             with save_wav: 16 kHz 16-bit PCM
    out/<split>/utterances.jsonl          every utterance's text, speaker, settings
    out/corpus.json                       statistics per split, seed, generator version,
                                          the text it says and how it was recorded

Speakers do not cross splits: a speaker is an espeak voice (accent) plus a
variant (timbre), and dev and test get variants that train never hears, so
their speakers are new voices, not only new combinations. No sentence appears
in two splits.

Everything an utterance becomes is decided by a plan made up front from the
seed (text, speaker, rate, pitch, noise, gain), and each utterance is made
from its own plan entry alone, so the corpus is the same whatever the number
of workers or the order they finish in.

The text is the built-in grammar's sentences, or a user's (``TargetText``: a sentence file
or a word list), so that a corpus can cover the words a user needs with hundreds of voices.
``recording_rate`` makes the recordings at another rate (8000: telephone band, as the
FSDD digits); features are computed at 16 kHz either way, as for any recording.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechforge.data.errors import DataError
from speechforge.data.features import fbank
from speechforge.data.features import resample
from speechforge.data.synth.speech import SAMPLE_RATE, Channel, Voice, apply_channel, synthesize
from speechforge.data.synth.targeted import TargetText
from speechforge.data.synth.text import SentenceGenerator

GENERATOR_VERSION = "speechforge.synth.v1"
SPLITS = ("train-clean-100", "dev-clean", "test-clean")
FRAME_SHIFT_S = 0.010

# espeak's English voices: accents and pronunciation rules.
LANGUAGES = ("en", "en-us", "en-us-nyc", "en-gb-scotland", "en-gb-x-rp",
             "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
# Variants that sound like a person talking. Left out: the robots, echoes of
# a second or more, whispers, the child's pitch, the test voices.
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Alex", "Andy", "Denis",
                 "Gene", "Mike", "adam", "antonio", "benjamin", "david", "edward", "iven",
                 "klatt", "klatt2", "klatt3", "klatt4", "max", "michel", "paul", "quincy",
                 "robert", "travis", "victor", "croak", "grandpa")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika",
                   "belinda", "linda", "steph", "grandma")
# Share of each gender's variants held out for dev and for test.
HELD_OUT_SHARE = 0.12
# Every utterance lasts this long: long enough to be a sentence, short enough
# that a batch of them pads little.
MIN_SECONDS, MAX_SECONDS = 1.5, 5.0
MAX_RATE = 260  # words a minute; faster than this espeak slurs


@dataclass(frozen=True)
class Recording:
    """How every utterance of a corpus is recorded: the rate, and the shortest it may be
    (shorter speech gets more silence, i.e. noise, around it)."""

    rate: int = SAMPLE_RATE
    min_seconds: float = MIN_SECONDS


@dataclass(frozen=True)
class Utterance:
    """One plan entry: everything needed to make one utterance."""

    split: str
    utt_id: str
    text: str
    voice: Voice
    channel: Channel
    noise_seed: int


# ---------------------------------------------------------------- planning


def split_variants(seed: int) -> dict[str, list[str]]:
    """Variants per split, disjoint, each split with both genders."""
    rng = random.Random(f"{GENERATOR_VERSION}/variants/{seed}")
    by_split: dict[str, list[str]] = {split: [] for split in SPLITS}
    for group in (MALE_VARIANTS, FEMALE_VARIANTS):
        shuffled = list(group)
        rng.shuffle(shuffled)
        k = max(1, round(HELD_OUT_SHARE * len(shuffled)))
        by_split["test-clean"] += shuffled[:k]
        by_split["dev-clean"] += shuffled[k : 2 * k]
        by_split["train-clean-100"] += shuffled[2 * k :]
    return by_split


def speakers_for(split: str, seed: int) -> list[tuple[str, str]]:
    """(language, variant) pairs of a split, in a seeded order."""
    speakers = [(lang, var) for var in split_variants(seed)[split] for lang in LANGUAGES]
    random.Random(f"{GENERATOR_VERSION}/speakers/{seed}/{split}").shuffle(speakers)
    return speakers


def draw_texts(counts: dict[str, int], seed: int, target: TargetText | None = None) -> dict[str, list[str]]:
    """Sentences per split; no sentence of the grammar in two splits.

    A user's text (``target``) is dealt to each split from its own seeded deck: ten digit
    words cannot be kept apart, and the splits' voices already are.

    Held-out splits draw first, so they get the pick of the sentence space.
    Within one split a repeat is allowed only once new sentences run out
    (200 draws in a row already seen), which a corpus of tens of thousands of
    utterances can reach.
    """
    if target is not None:
        return {split: [deck.sentence() for _ in range(n)]
                for split, n in counts.items() for deck in [target.deck(f"{GENERATOR_VERSION}/text/{seed}/{split}")]}
    gen = SentenceGenerator(seed)
    owner: dict[str, str] = {}
    texts: dict[str, list[str]] = {}
    for split in ("test-clean", "dev-clean", "train-clean-100"):
        chosen: list[str] = []
        misses = 0
        while len(chosen) < counts[split]:
            text = gen.sentence()
            seen_in = owner.get(text)
            if seen_in is None or (seen_in == split and misses >= 200):
                chosen.append(text)
                owner[text] = split
                misses = 0
            else:
                misses += 1
                if misses > 100_000:
                    raise DataError(f"sentence generator ran out of new sentences for {split}")
        texts[split] = chosen
    return texts


def _voice_and_channel(rng: random.Random, language: str, variant: str) -> tuple[Voice, Channel]:
    voice = Voice(
        language=language,
        variant=variant,
        rate=rng.randint(135, 205),  # espeak's default is 175 words a minute
        pitch=rng.randint(25, 75),
        pitch_range=rng.randint(30, 90),
        word_gap=rng.choices([0, 1, 2], weights=[6, 3, 1])[0],
    )
    channel = Channel(
        snr_db=round(rng.uniform(5.0, 30.0), 2),
        noise=rng.choice(["white", "pink"]),
        peak_dbfs=round(rng.uniform(-20.0, -1.0), 2),
        lead_s=round(rng.uniform(0.05, 0.4), 3),
        trail_s=round(rng.uniform(0.05, 0.4), 3),
    )
    return voice, channel


def plan_corpus(n_train: int, n_dev: int, n_test: int, seed: int = 0,
                target: TargetText | None = None) -> list[Utterance]:
    """Every utterance of the corpus, decided from the seed (and the user's text) alone."""
    counts = dict(zip(SPLITS, (n_train, n_dev, n_test)))
    texts = draw_texts(counts, seed, target)
    plan = []
    for split in SPLITS:
        speakers = speakers_for(split, seed)
        for index, text in enumerate(texts[split]):
            key = f"{GENERATOR_VERSION}/{seed}/{split}/{index}"
            rng = random.Random(key)
            language, variant = speakers[index % len(speakers)]  # round robin: balanced speakers
            voice, channel = _voice_and_channel(rng, language, variant)
            noise_seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
            utt_id = f"synth-{language}-{variant.lower()}-{index:06d}"
            plan.append(Utterance(split, utt_id, text, voice, channel, noise_seed))
    return plan


# ---------------------------------------------------------------- making


def fit_duration(utt: Utterance, recording: Recording = Recording()) -> tuple[np.ndarray, Voice, Channel]:
    """Clean speech at the recording's rate, and the settings that bring it to
    recording.min_seconds..MAX_SECONDS.

    Too long: say it faster (espeak's duration is close to inversely
    proportional to its rate), then trim the padding. Too short: pad with
    more silence. Both depend only on the plan entry, so stay deterministic.
    """
    voice, channel = utt.voice, utt.channel
    sample_rate, min_seconds = recording.rate, recording.min_seconds
    speech = synthesize(utt.text, voice, sample_rate)
    seconds = len(speech) / sample_rate
    pads = channel.lead_s + channel.trail_s
    if seconds + pads > MAX_SECONDS:
        rate = min(MAX_RATE, math.ceil(1.05 * voice.rate * seconds / (MAX_SECONDS - pads)))
        voice = replace(voice, rate=rate, word_gap=0)
        speech = synthesize(utt.text, voice, sample_rate)
        seconds = len(speech) / sample_rate
        if seconds + pads > MAX_SECONDS:
            pad = max(0.02, (MAX_SECONDS - seconds) / 2)
            channel = replace(channel, lead_s=round(min(pad, channel.lead_s), 3),
                              trail_s=round(min(pad, channel.trail_s), 3))
    elif seconds + pads < min_seconds:
        extra = (min_seconds - seconds - pads) / 2 + 0.001  # + 1 ms: samples are whole
        channel = replace(channel, lead_s=round(channel.lead_s + extra, 4),
                          trail_s=round(channel.trail_s + extra, 4))
    return speech, voice, channel


def make_utterance(utt: Utterance, out: Path, save_wav: bool, recording: Recording = Recording()) -> dict:
    """Synthesize, add the channel, write features and transcript; return its record."""
    speech, voice, channel = fit_duration(utt, recording)
    wav = apply_channel(speech, channel, np.random.default_rng(utt.noise_seed), recording.rate)
    feats = fbank(resample(wav, recording.rate, SAMPLE_RATE), SAMPLE_RATE)  # (80, T)
    split_dir = out / utt.split
    np.save(split_dir / "fbank" / f"{utt.utt_id}.npy", feats)
    np.save(split_dir / "text" / f"{utt.utt_id}.npy", np.array(list(utt.text)))
    if save_wav:
        sf.write(split_dir / "wav" / f"{utt.utt_id}.wav", wav, recording.rate, subtype="PCM_16")
    return {
        "id": utt.utt_id,
        "split": utt.split,
        "text": utt.text,
        "speaker": voice.speaker,
        "seconds": round(len(wav) / recording.rate, 3),
        "frames": int(feats.shape[1]),
        "voice": asdict(voice),  # as spoken, after fit_duration
        "channel": asdict(channel),
    }


def _make_in_worker(args: tuple[Utterance, Path, bool, Recording]) -> dict:
    return make_utterance(*args)


def _init_worker() -> None:
    # One process per core already; torch threads on top would fight over it.
    import torch

    torch.set_num_threads(1)


def build_corpus(
    out: Path,
    n_train: int = 1500,
    n_dev: int = 100,
    n_test: int = 100,
    seed: int = 0,
    save_wav: bool = False,
    workers: int | None = None,
    progress: bool = True,
    text: TargetText | None = None,
    recording: Recording = Recording(),
) -> dict:
    """Generate the corpus into ``out`` and return (and write) its statistics.

    ``workers``: processes to use; None means one per CPU core, or 1 for a
    corpus too small to repay starting them (under 64 utterances). Each
    worker loads espeak-ng itself. ``out`` must not hold a corpus already.

    Cost: about 20 ms of one core per utterance (espeak ~6, resampling ~4,
    fbank ~4, noise and writing the rest). The default 1500/100/100 corpus
    (1.19 hours of audio, 142 MB of features) took 34-37 s with 2 workers on
    the 2-core development machine while it was shared (load ~4), i.e. about
    45-50 utterances a second, 115-125 times faster than real time.
    """
    out = Path(out)
    for split in SPLITS:
        if (out / split).is_dir() and any((out / split).iterdir()):
            raise DataError(
                f"already holds {split}/; choose an empty directory so that two corpora do not mix", out
            )
    plan = plan_corpus(n_train, n_dev, n_test, seed, text)
    for split in SPLITS:
        for sub in ("fbank", "text") + (("wav",) if save_wav else ()):
            (out / split / sub).mkdir(parents=True, exist_ok=True)

    if workers is None:
        workers = (os.cpu_count() or 1) if len(plan) >= 64 else 1
    started = time.perf_counter()
    jobs = [(utt, out, save_wav, recording) for utt in plan]
    bar = tqdm(total=len(plan), desc="synth corpus", unit="utt", disable=not progress)
    records = []
    if workers <= 1:
        import torch

        # Same reason as in the workers; on a busy machine a second thread
        # makes each small resampling convolution tens of times slower.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for job in jobs:
                records.append(_make_in_worker(job))
                bar.update()
        finally:
            torch.set_num_threads(threads)
    else:
        # spawn, not fork: a forked child would inherit torch's thread pool.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for record in pool.imap_unordered(_make_in_worker, jobs, chunksize=8):
                records.append(record)
                bar.update()
    bar.close()
    elapsed = time.perf_counter() - started

    stats = _statistics(records, seed, elapsed, workers)
    stats.update(describe_text_and_recording(text, recording))
    for split in SPLITS:
        lines = [json.dumps(r) for r in sorted(records, key=lambda r: r["id"]) if r["split"] == split]
        (out / split / "utterances.jsonl").write_text("".join(line + "\n" for line in lines))
    (out / "corpus.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def describe_text_and_recording(text: TargetText | None, recording: Recording) -> dict:
    """The corpus.json keys that tell corpora of other text or other recordings apart."""
    return {"text": text.describe() if text else {"kind": "grammar"}, "recording": asdict(recording)}


def _statistics(records: list[dict], seed: int, elapsed: float, workers: int) -> dict:
    splits = {}
    for split in SPLITS:
        rs = [r for r in records if r["split"] == split]
        seconds = [r["seconds"] for r in rs]
        splits[split] = {
            "utterances": len(rs),
            "hours": round(sum(seconds) / 3600, 4),
            "seconds_min": min(seconds, default=0.0),
            "seconds_mean": round(float(np.mean(seconds)), 3) if seconds else 0.0,
            "seconds_max": max(seconds, default=0.0),
            "frames": sum(r["frames"] for r in rs),
            "voices": sorted({r["speaker"] for r in rs}),
            "variants": sorted({r["voice"]["variant"] for r in rs}),
        }
    audio_s = sum(r["seconds"] for r in records)
    return {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "sample_rate": SAMPLE_RATE,
        "features": {"kind": "kaldi-fbank", "num_mel_bins": 80, "frame_shift_ms": 10, "frame_length_ms": 25},
        "splits": splits,
        "generation": {
            "workers": workers,
            "seconds": round(elapsed, 2),
            "utterances_per_second": round(len(records) / elapsed, 2) if elapsed > 0 else None,
            # seconds of work per second of audio: below 1 is faster than real time
            "real_time_factor": round(elapsed / audio_s, 5) if audio_s > 0 else None,
        },
    }
