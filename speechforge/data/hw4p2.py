"""Datasets in the HW4P2 feature layout: <root>/<split>/fbank/<utt>.npy (80, T) and
<root>/<split>/text/<utt>.npy (characters); the built-in synthetic corpus uses it too."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
from pydantic import AfterValidator, Field

from speechforge import registry
from speechforge.data.augment import domain
from speechforge.data.corpus import OnBadFile, PositiveOrNone, Split, TestSplits, Visit, scan_feature_split, split_roles
from speechforge.recipe import RecipeError, Spec, Sub


class FeatureCorpus:
    """Where a corpus lives and how it is batched; splits are scanned on first use.

    ``augment`` keeps the feature-level augmentations (the trainer applies them to
    batches); ``waveform_augment`` the waveform-level ones, which only a source that
    reads audio (``reads_audio``) accepts."""

    reads_audio = False

    def __init__(
        self,
        root: Path,
        splits: dict[str, str | None],
        num_mel_bins: int,
        on_bad_file: OnBadFile,
        max_frames: int | None,
        batch_size: int | None,
        bucketed: bool,
        num_workers: int,
        normalization: Spec,
        augment: list[Spec],
        max_utterances: int | None,
    ):
        self.root = Path(root)
        self.splits = split_roles(splits)
        self.num_mel_bins = num_mel_bins
        self.on_bad_file = on_bad_file
        self.max_frames, self.batch_size, self.bucketed = max_frames, batch_size, bucketed
        self.num_workers = num_workers
        self.normalization = normalization
        self.augment, self.waveform_augment = self._sort_augmentations(augment)
        self.max_utterances = max_utterances
        self._cache: dict[str, Split] = {}

    def _sort_augmentations(self, augment: list[Spec]) -> tuple[list[Spec], list[Spec]]:
        levels = [domain(spec.build()) for spec in augment]
        # both need the recording: they act before or while its filterbank is computed
        waveform = [spec for spec, level in zip(augment, levels) if level in ("waveform", "filterbank")]
        if waveform and not self.reads_audio:
            spec = waveform[0]
            raise RecipeError([(f"{spec.path}.name", f"{spec.name!r} changes the waveform, but this dataset reads stored "
                                f"features; use an audio source (librispeech, kaldi, jsonl with \"audio\") or remove it")])
        return [spec for spec, level in zip(augment, levels) if level == "features"], waveform

    def prepare(self, log: Callable[[str], None] = print) -> None:
        """Make sure the data exists (the synthetic corpus builds itself here)."""

    @property
    def roles(self) -> list[str]:
        """Every split's role: train, dev, and test or each of several test folders."""
        return list(self.splits)

    @property
    def eval_roles(self) -> list[str]:
        """The splits a run decodes and scores at the end: dev and every test split."""
        return [role for role in self.splits if role != "train"]

    def draw_for(self, utterances: list) -> None:
        """Which utterances an epoch draws: all of them, once (a mix of corpora draws by weight)."""
        return None

    def has(self, role: str) -> bool:
        folder = self.splits.get(role)
        return folder is not None and (self.root / folder / "fbank").is_dir()

    def split(self, role: str, visit: Visit | None = None) -> Split:
        if role not in self._cache:
            folder = self.splits.get(role)
            if folder is None:
                raise KeyError(f"data.{role}: no split configured")
            self._cache[role] = scan_feature_split(
                self.root / folder,
                self.num_mel_bins,
                self.on_bad_file,
                require_text=(role == "train"),
                visit=visit,
                limit=self.max_utterances,
                speakers=self.speakers(self.root / folder),
            )
        return self._cache[role]

    def speakers(self, split_dir: Path) -> dict[str, str]:
        """Utterance id -> speaker, where the layout says (the HW4P2 layout does not)."""
        return {}


def _existing_dir(value: str) -> str:
    if not Path(value).is_dir():
        raise ValueError(
            f"no such directory {value!r}: put the HW4P2 data there "
            f"(<root>/train-clean-100/fbank/*.npy, .../text/*.npy) or point elsewhere with --set data.root=PATH"
        )
    return value


@registry.datasets.register("hw4p2")
def hw4p2(
    root: Annotated[str, AfterValidator(_existing_dir)],
    train: str = "train-clean-100",
    dev: str | None = "dev-clean",
    test: TestSplits = "test-clean",
    num_mel_bins: Annotated[int, Field(gt=0)] = 80,
    normalization: Annotated[Spec, Sub("normalizers")] = {"name": "global_mvn"},
    augment: Annotated[list[Spec], Sub("augmentations", many=True)] = [],
    max_frames: PositiveOrNone = 20000,
    batch_size: PositiveOrNone = None,
    bucketed: bool = True,
    num_workers: Annotated[int, Field(ge=0)] = 0,
    on_bad_file: OnBadFile = "stop",
    max_utterances: PositiveOrNone = None,
) -> FeatureCorpus:
    """The HW4P2 layout: <root>/<split>/fbank/*.npy (80, T) and text/*.npy characters."""
    return FeatureCorpus(
        Path(root), {"train": train, "dev": dev, "test": test}, num_mel_bins, on_bad_file,
        max_frames, batch_size, bucketed, num_workers, normalization, augment, max_utterances,
    )


class SynthCorpus(FeatureCorpus):
    """The built-in corpus; ``text`` (a TargetText) and ``recording`` (a Recording) when the
    recipe chooses what its voices say and how they are recorded."""

    generates_itself = True  # prepare() makes it when it is missing

    def __init__(self, sizes: dict[str, int], seed: int, text=None, recording=None, **kwargs):
        super().__init__(**kwargs)
        from speechforge.data.synth.corpus import Recording, describe_text_and_recording

        self.sizes, self.seed = sizes, seed
        self.text, self.recording = text, recording or Recording()
        self.made_from = describe_text_and_recording(self.text, self.recording)

    def prepare(self, log: Callable[[str], None] = print) -> None:
        made = self.root / "corpus.json"
        if made.exists():
            self._check_matches(made)
            return
        from speechforge.data.synth import build_corpus

        what = "" if self.text is None else f", saying {self.text.describe()['kind']} of the recipe's"
        log(f"The built-in corpus is missing: generating it in {self.root} "
            f"({self.sizes['train']}/{self.sizes['dev']}/{self.sizes['test']} utterances, seed {self.seed}{what}) ...")
        build_corpus(self.root, n_train=self.sizes["train"], n_dev=self.sizes["dev"], n_test=self.sizes["test"],
                     seed=self.seed, progress=sys.stderr.isatty(), text=self.text, recording=self.recording)

    def speakers(self, split_dir: Path) -> dict[str, str]:
        """Each utterance's voice, from the utterances.jsonl the generator writes beside fbank/."""
        import json

        listing = split_dir / "utterances.jsonl"
        if not listing.is_file():
            return {}
        return {item["id"]: item["speaker"] for item in map(json.loads, listing.read_text().splitlines()) if item.get("speaker")}

    def _check_matches(self, made: Path) -> None:
        """A corpus generated earlier with other sizes or another seed is not this recipe's:
        training on it would quietly use other data."""
        import json

        from speechforge.data.errors import DataError

        stats = json.loads(made.read_text())
        have = {role: stats["splits"].get(folder, {}).get("utterances") for role, folder in self.splits.items()}
        if have != self.sizes or stats.get("seed") != self.seed:
            raise DataError(
                f"holds a corpus of {have['train']}/{have['dev']}/{have['test']} train/dev/test utterances, seed "
                f"{stats.get('seed')}; the recipe asks for {self.sizes['train']}/{self.sizes['dev']}/"
                f"{self.sizes['test']}, seed {self.seed}. Delete {self.root} to generate it anew, or set data.root "
                "to another folder", made)
        from speechforge.data.synth.corpus import Recording, describe_text_and_recording

        defaults = describe_text_and_recording(None, Recording())  # what a corpus.json without the keys was made with
        had = {key: stats.get(key, default) for key, default in defaults.items()}
        if had != self.made_from:
            differ = "; ".join(f"{key} {had[key]} there, {self.made_from[key]} in the recipe"
                               for key in had if had[key] != self.made_from[key])
            raise DataError(f"holds a corpus made from other text or recordings ({differ}). Delete {self.root} "
                            "to generate it anew, or set its root to another folder", made)


def _existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"no such file {value!r}: expected a text file, one sentence a line")
    return value


@registry.datasets.register("synth")
def synth(
    root: str = "data/synth",
    train_utterances: Annotated[int, Field(gt=0)] = 1500,
    dev_utterances: Annotated[int, Field(gt=0)] = 100,
    test_utterances: Annotated[int, Field(gt=0)] = 100,
    corpus_seed: Annotated[int, Field(ge=0)] = 0,
    normalization: Annotated[Spec, Sub("normalizers")] = {"name": "global_mvn"},
    augment: Annotated[list[Spec], Sub("augmentations", many=True)] = [],
    max_frames: PositiveOrNone = 20000,
    batch_size: PositiveOrNone = None,
    bucketed: bool = True,
    num_workers: Annotated[int, Field(ge=0)] = 0,
    on_bad_file: OnBadFile = "stop",
    max_utterances: PositiveOrNone = None,
    words: list[str] | None = None,
    words_per_utterance: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (1, 1),
    text_file: Annotated[str, AfterValidator(_existing_file)] | None = None,
    recording_rate: Annotated[int, Field(ge=4000)] = 16000,
    min_seconds: Annotated[float, Field(ge=0.0, le=4.0)] = 1.5,
) -> SynthCorpus:
    """The built-in synthetic English corpus (espeak-ng voices), generated on first use; saying
    the grammar's sentences, or a word list's words (words_per_utterance of them) or a
    text_file's sentences, recorded at recording_rate."""
    from speechforge.data.errors import DataError
    from speechforge.data.synth.corpus import Recording
    from speechforge.data.synth.targeted import TargetText

    if words is not None and text_file is not None:
        raise DataError("the synth dataset takes words or text_file, not both")
    text = (TargetText.from_words(words, tuple(words_per_utterance)) if words is not None
            else TargetText.from_file(text_file) if text_file is not None else None)
    return SynthCorpus(
        sizes={"train": train_utterances, "dev": dev_utterances, "test": test_utterances},
        seed=corpus_seed, text=text, recording=Recording(recording_rate, min_seconds),
        root=Path(root), splits={"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"},
        num_mel_bins=80, on_bad_file=on_bad_file, max_frames=max_frames, batch_size=batch_size,
        bucketed=bucketed, num_workers=num_workers, normalization=normalization, augment=augment,
        max_utterances=max_utterances,
    )
