"""Training on several corpora at once, each drawn by its weight: ``[data] name = "mix"``.

    [data]
    name = "mix"
    weights = [1.0, 1.0]        # each epoch: half its utterances from each corpus
    max_frames = 3000           # batching and normalisation are the mix's, over all of it

    [[data.corpora]]            # any dataset, with its own source and settings
    name = "jsonl"
    root = "data/fsdd"

    [[data.corpora]]
    name = "synth"
    words = ["ZERO", "ONE", ...]

As lhotse's ``CutSet.mux`` and NeMo's weighted concatenation do, an epoch draws from corpus
``i`` its share ``weight_i / sum(weights)`` of ``epoch_utterances`` (default: all the corpora's
training utterances together): a fresh random subset of a corpus that has more, every
utterance and then a random rest of one that has fewer (it is repeated). Without weights every
utterance comes once, a plain concatenation. The drawn utterances are batched together by
length (``bucketed``), so a batch holds whichever corpora have utterances of its length; with
``bucketed = false`` each batch is a weighted draw. The tokenizer and the normalisation
statistics are fitted over every training utterance of every corpus; dev and test come
from one corpus each (``dev``, ``test``: an index into ``corpora``).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Annotated, Callable

import numpy as np
from pydantic import Field

from speechforge import registry
from speechforge.data.augment import domain
from speechforge.data.corpus import OnBadFile, PositiveOrNone, Split, Utterance, Visit
from speechforge.data.sources import Augment, Normalization, Workers
from speechforge.recipe import RecipeError, Spec, Sub, schema_for, validate_component

# What a mix does for all its corpora at once; a corpus that sets one of these would be ignored.
MIX_LEVEL = ("normalization", "max_frames", "batch_size", "bucketed", "num_workers")
PositiveWeight = Annotated[float, Field(gt=0.0)]
Index = Annotated[int, Field(ge=0)]


def apportion(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, whole numbers summing to ``total`` (largest remainders)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


class WeightedDraw:
    """The utterances one epoch trains on: indices into ``groups`` (each utterance's corpus),
    ``apportion(size, weights)`` of them from each corpus."""

    def __init__(self, groups: list[int], weights: list[float], size: int):
        self.members: dict[int, list[int]] = {}
        for index, group in enumerate(groups):
            self.members.setdefault(group, []).append(index)
        # a corpus left empty (a progressive stage's max_seconds) gives its share to the others
        present = sorted(self.members)
        self.counts = dict(zip(present, apportion(size, [weights[g] for g in present])))

    def __call__(self, rng: random.Random) -> list[int]:
        drawn: list[int] = []
        for group, count in self.counts.items():
            members = self.members[group]
            repeats, rest = divmod(count, len(members))
            drawn += members * repeats + rng.sample(members, rest)
        return drawn


class MixedCorpus:
    """Several corpora behind one corpus's interface: training draws from all, dev and test
    come from one each."""

    reads_audio = False

    def __init__(self, corpora: list, labels: list[str], weights: list[float] | None, epoch_utterances: int | None,
                 eval_from: dict[str, int | None], normalization: Spec, augment: list[Spec], max_frames: int | None,
                 batch_size: int | None, bucketed: bool, num_workers: int, on_bad_file: OnBadFile):
        self.corpora, self.labels, self.weights = corpora, labels, weights
        self.epoch_utterances, self.eval_from = epoch_utterances, eval_from
        self.num_mel_bins = corpora[0].num_mel_bins
        self.normalization, self.augment = normalization, augment
        self.max_frames, self.batch_size, self.bucketed = max_frames, batch_size, bucketed
        self.num_workers, self.on_bad_file = num_workers, on_bad_file
        self._train: Split | None = None

    def prepare(self, log: Callable[[str], None] = print) -> None:
        for corpus in self.corpora:
            corpus.prepare(log)

    def _eval_corpus(self, role: str):
        """The corpus whose split ``role`` is: dev from one, test (or each test folder) from one."""
        index = self.eval_from["dev" if role == "dev" else "test"]
        return None if index is None or role not in self.corpora[index].roles else self.corpora[index]

    @property
    def eval_roles(self) -> list[str]:
        roles = ["dev"] if self._eval_corpus("dev") is not None else []
        index = self.eval_from["test"]
        return roles + ([r for r in self.corpora[index].eval_roles if r != "dev"] if index is not None else [])

    @property
    def roles(self) -> list[str]:
        return ["train"] + self.eval_roles

    @property
    def generates_itself(self) -> bool:
        return all(getattr(corpus, "generates_itself", False) for corpus in self.corpora)

    def has(self, role: str) -> bool:
        if role == "train":
            return all(corpus.has("train") for corpus in self.corpora)
        corpus = self._eval_corpus(role)
        return corpus is not None and corpus.has(role)

    def split(self, role: str, visit: Visit | None = None) -> Split:
        if role != "train":
            corpus = self._eval_corpus(role)
            if corpus is None:
                raise KeyError(f"data.{role}: no split configured")
            return corpus.split(role)
        if self._train is None:
            utterances: list[Utterance] = []
            skipped: list[str] = []
            for label, corpus in zip(self.labels, self.corpora):
                split = corpus.split("train", visit)  # every corpus's frames go into the statistics
                for utt in split.utterances:
                    utt.corpus = label
                utterances += split.utterances
                skipped += split.skipped
            self._train = Split("train", utterances, skipped)
        return self._train

    def _weights(self, utterances: list[Utterance]) -> list[float]:
        if self.weights is not None:
            return self.weights
        sizes = Counter(u.corpus for u in utterances)
        return [float(sizes[label]) for label in self.labels]

    def draw_for(self, utterances: list[Utterance]) -> WeightedDraw:
        """What each training epoch over ``utterances`` (this mix's, perhaps narrowed) draws."""
        groups = [self.labels.index(u.corpus) for u in utterances]
        return WeightedDraw(groups, self._weights(utterances), self.epoch_utterances or len(utterances))

    def shares(self, utterances: list[Utterance]) -> dict[str, dict[str, float]]:
        """Per corpus: its training utterances and hours, its weight, and its share of an
        epoch's utterances and frames as drawn; for dataset_stats.json and the log."""
        draw = self.draw_for(utterances)
        frames = {label: [u.num_frames for u in utterances if u.corpus == label] for label in self.labels}
        drawn = {self.labels[g]: n for g, n in draw.counts.items()}
        drawn_frames = {label: drawn.get(label, 0) * float(np.mean(f)) if f else 0.0 for label, f in frames.items()}
        weights = self._weights(utterances)
        out = {}
        for label, weight in zip(self.labels, weights):
            out[label] = {
                "utterances": len(frames[label]),
                "hours": round(sum(frames[label]) / 100 / 3600, 4),
                "weight": weight,
                "epoch_utterances": drawn.get(label, 0),
                "share": round(drawn.get(label, 0) / max(1, sum(drawn.values())), 4),
                "frame_share": round(drawn_frames[label] / max(1.0, sum(drawn_frames.values())), 4),
            }
        return out


def _labels(specs: list[Spec]) -> list[str]:
    """A corpus is known by its dataset's name; by name#index where two share one."""
    names = [spec.name for spec in specs]
    return [name if names.count(name) == 1 else f"{name}#{i}" for i, name in enumerate(names)]


def _mix_level_problems(spec: Spec) -> list[tuple[str, str]]:
    """A corpus of a mix that sets what the mix decides for all of them is told so, by key."""
    schema = schema_for(registry.resolve(spec.kind, spec.name))
    problems = []
    for key in MIX_LEVEL:
        if key in schema.subs:
            default, value = schema.sub_defaults[key], spec.args.get(key)
            # both as validated, with their components' own defaults filled in
            if isinstance(default, dict):
                default = validate_component(schema.subs[key].kind, default, key).to_dict()
            value = value.to_dict() if isinstance(value, Spec) else value
        elif key in schema.model.model_fields:
            default, value = schema.model.model_fields[key].default, spec.args.get(key)
        else:
            continue
        if value != default:
            problems.append((f"{spec.path}.{key}", f"a mix batches and normalises its corpora as one: set data.{key} instead"))
    return problems


@registry.datasets.register("mix")
def mix(
    corpora: Annotated[list[Spec], Sub("datasets", many=True)],
    weights: list[PositiveWeight] | None = None,
    epoch_utterances: PositiveOrNone = None,
    dev: Index | None = 0,
    test: Index | None = 0,
    normalization: Normalization = {"name": "global_mvn"},
    augment: Augment = [],
    max_frames: PositiveOrNone = 20000,
    batch_size: PositiveOrNone = None,
    bucketed: bool = True,
    num_workers: Workers = 0,
    on_bad_file: OnBadFile = "stop",
) -> MixedCorpus:
    """Several datasets trained on at once, each epoch drawing from each by weight; dev and test from one."""
    if not corpora:
        raise RecipeError([("data.corpora", "expected at least one [[data.corpora]] table")])
    problems: list[tuple[str, str]] = []
    if weights is not None and len(weights) != len(corpora):
        problems.append(("data.weights", f"expected one weight per corpus ({len(corpora)}), got {len(weights)}"))
    for key, index in (("dev", dev), ("test", test)):
        if index is not None and index >= len(corpora):
            problems.append((f"data.{key}", f"expected the index of one of the {len(corpora)} corpora (0-{len(corpora) - 1}), got {index}"))
    for spec in corpora:
        problems += _mix_level_problems(spec)
    for spec in augment:
        if domain(spec.build()) != "features":
            problems.append((f"{spec.path}.name", f"{spec.name!r} changes recordings: put it in the augment list of "
                             "the corpus whose audio it should change"))
    if problems:
        raise RecipeError(problems)
    built = [spec.build() for spec in corpora]
    for spec, corpus in zip(corpora, built):
        if corpus.augment:
            problems.append((f"{spec.path}.augment", f"{corpus.augment[0].name!r} acts on batches, which a mix makes "
                             "from all its corpora: put it in data.augment (a corpus keeps its waveform ones)"))
        if corpus.num_mel_bins != built[0].num_mel_bins:
            problems.append((f"{spec.path}.num_mel_bins", f"{corpus.num_mel_bins}, but {corpora[0].path} has "
                             f"{built[0].num_mel_bins}: the corpora of a mix share one feature space"))
    if problems:
        raise RecipeError(problems)
    return MixedCorpus(built, _labels(corpora), weights, epoch_utterances, {"dev": dev, "test": test}, normalization,
                       augment, max_frames, batch_size, bucketed, num_workers, on_bad_file)
