"""Assembling an experiment from a validated recipe, and reopening a trained run.

The order follows the data: corpus -> normalization -> tokenizer -> model -> loss,
optimizer, schedule -> trainer and decoder. A run directory keeps what the later
steps need (recipe, tokenizer, normalization statistics, checkpoints), so decoding
and transcription work with no recipe or corpus at hand.
"""

from __future__ import annotations

import functools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from speechforge import precision, recipe as recipe_mod
from speechforge.data.audio import FrontEnd
from speechforge.data.batching import BucketBatchSampler, UtteranceDataset, collate, pad_steps, padding_fraction
from speechforge.data.corpus import check_encodable
from speechforge.data.errors import DataError
from speechforge.data import normalization
from speechforge.data.normalization import Normalizer
from speechforge.data.tokenizers import FrozenTokenizer, Tokenizer, TokenizerError, load_tokenizer
from speechforge.model.transformer import count_parameters
from speechforge.recipe import Recipe, RecipeError

Log = Callable[[str], None]


@dataclass
class Experiment:
    recipe: Recipe
    run_dir: Path
    corpus: Any
    normalizer: Normalizer
    tokenizer: Tokenizer
    model: torch.nn.Module
    augment: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    transferred: list[str] = field(default_factory=list)  # decoder weights copied from an LM run

    @property
    def pad_steps(self) -> tuple[int, int]:
        """(frame step, token step) this run's batches are padded in: only a bf16 or fp16 run
        pads beyond the longest utterance (speechforge.data.batching)."""
        return pad_steps(run_precision(self.recipe))

    def loader(self, role: str, train: bool = False, seed: int = 0, num_replicas: int = 1, rank: int = 0,
               fraction: float | None = None, max_seconds: float | None = None) -> tuple[DataLoader, BucketBatchSampler]:
        """Batches of one split; with several processes, this process's share of each.
        ``fraction`` and ``max_seconds`` narrow the split (progressive training stages)."""
        utterances = self.corpus.split(role).utterances
        if max_seconds is not None:
            utterances = [u for u in utterances if u.num_frames <= max_seconds * 100]
        if fraction is not None and fraction < 1.0:
            # a seeded choice, the same in every process and on every resume
            order = sorted(range(len(utterances)), key=lambda i: random.Random(seed * 7919 + i).random())
            keep = sorted(order[: max(1, round(fraction * len(utterances)))])
            utterances = [utterances[i] for i in keep]
        if not utterances:
            raise DataError(f"data.{role}: no utterance is left after max_seconds={max_seconds}")
        dataset = UtteranceDataset(utterances, self.normalizer, self.tokenizer, self.corpus.num_mel_bins)
        lengths = [u.num_frames for u in utterances]
        frame_step, token_step = self.pad_steps
        sampler = BucketBatchSampler(
            lengths, self.corpus.max_frames, self.corpus.batch_size, bucketed=self.corpus.bucketed or not train,
            shuffle=train, seed=seed, num_replicas=num_replicas, rank=rank,
            draw=self.corpus.draw_for(utterances) if train else None, step=frame_step,
        )
        # pinned host memory lets the copy to a GPU overlap the step (Batch.to(non_blocking=True))
        loader = DataLoader(dataset, batch_sampler=sampler,
                            collate_fn=functools.partial(collate, frame_step=frame_step, token_step=token_step),
                            num_workers=self.corpus.num_workers, pin_memory=torch.cuda.is_available())
        return loader, sampler

    def save_assets(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "recipe.toml").write_text(recipe_mod.dumps(self.recipe.to_dict()))
        self.tokenizer.save(self.run_dir / "tokenizer")
        self.normalizer.save(self.run_dir / "normalization.json")


def resolve_run_dir(recipe: Recipe, recipe_path: Path | None, run_dir: str | None) -> Path:
    if run_dir:
        return Path(run_dir)
    if recipe.run_dir:
        return Path(recipe.run_dir)
    return Path("runs") / (recipe_path.stem if recipe_path else "run")


def check_run_dir_writable(run_dir: Path) -> None:
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not _writable(probe):
        raise RecipeError([("run_dir", f"{run_dir} cannot be created or written (at {probe})")])


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK | os.X_OK)


SKIPPED_FILE = "skipped.tsv"


def write_skipped(exp: "Experiment") -> int:
    """Every file left out of every split, one per line (split, file or file:line, reason), in
    the run directory: a user with 40 bad files among 28,000 needs all 40."""
    rows = []
    for role in exp.corpus.roles:
        if exp.corpus.has(role):
            rows += [(role, *entry.partition(": ")[::2]) for entry in exp.corpus.split(role).skipped]
    if rows:
        lines = ["split\tfile\treason"] + ["\t".join(r) for r in rows]
        (exp.run_dir / SKIPPED_FILE).write_text("\n".join(lines) + "\n")
    return len(rows)


def build(recipe: Recipe, run_dir: Path, log: Log = print, train: bool = True, dry: bool = False) -> Experiment:
    """Build every component. ``dry`` (speechforge check) builds without writing anything
    and tolerates a tokenizer the corpus cannot train, reporting it instead."""
    notes: list[str] = []
    corpus = recipe.data.build()
    if not dry:
        corpus.prepare(log)
    normalizer = corpus.normalization.build()
    stats_path = run_dir / "normalization.json"
    reuse = stats_path.exists() and not dry
    if reuse:
        normalizer.load(stats_path)
    try:
        train_split = corpus.split("train", visit=None if reuse or not normalizer.needs_stats else normalizer.update)
    except DataError as err:
        if dry and not corpus.has("train"):
            made = " (the corpus is generated by `speechforge run`)" if getattr(corpus, "generates_itself", False) else ""
            notes.append(f"data: {err}{made}")
            train_split = None
        else:
            raise
    if normalizer.per_speaker and not reuse and train_split is not None:
        # before anything reads them: a split is read once, and its speakers' means come from it
        for role in corpus.eval_roles:
            if corpus.has(role):
                corpus.split(role, visit=normalizer.observe)
    if train_split is not None:
        line = train_split.skip_line("train", None if dry else run_dir / SKIPPED_FILE)
        if line:
            log(line)

    tokenizer = recipe.tokenizer.build()
    tok_dir = run_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").exists() and not dry:
        tokenizer = load_tokenizer(tok_dir)
    elif recipe.init is not None and recipe.init.asr_run is not None:
        # the output layer's rows are the pretrained run's token ids: keep them
        tokenizer = FrozenTokenizer(load_tokenizer(Path(recipe.init.asr_run) / "tokenizer"))
        notes.append(f"tokenizer: {recipe.init.asr_run}'s ({tokenizer.kind}, {tokenizer.vocab_size} tokens), "
                     "as init.asr_run asks; [tokenizer] is not used")
    elif train_split is not None:
        try:
            tokenizer.fit([u.text for u in train_split.utterances])
        except TokenizerError as err:
            if not dry:
                raise RecipeError([("", str(err))]) from None
            notes.append(f"{err} (the model below is sized for the requested vocabulary)")
    if train_split is not None and tokenizer.trained:
        bad = check_encodable(((u.id, u.text) for u in train_split.utterances), tokenizer.unencodable)
        if bad:
            if corpus.on_bad_file == "stop":
                raise DataError(f"{bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                                + "; set data.on_bad_file = \"skip\" to leave them out")
            keep = {b.split(":")[0] for b in bad}
            train_split.utterances = [u for u in train_split.utterances if u.id not in keep]
            train_split.skipped += bad
            log(f"data.train: skipped {len(bad)} utterance(s) the tokenizer cannot encode, e.g. {bad[0]}")

    model = recipe.model.build(vocab_size=tokenizer.vocab_size, input_dim=corpus.num_mel_bins)
    augment = [spec.build() for spec in corpus.augment]
    return Experiment(recipe, run_dir, corpus, normalizer, tokenizer, model, augment, notes)


def run_precision(recipe: Recipe, device: torch.device | str | None = None) -> str:
    """The precision a run of ``recipe`` computes in (trainer.mixed_precision, "auto" by
    default): on ``device``, or where its trainer would run on this machine."""
    args = recipe.trainer.args if recipe.trainer else {}
    requested = args.get("mixed_precision", "auto")
    if device is not None:
        return precision.resolve(requested, device)[0]
    return precision.planned(requested, args.get("cpu", False))


def total_steps(exp: Experiment, epochs: int, grad_accum_steps: int, max_steps: int | None,
                stages: list | None = None) -> int:
    """Optimizer steps of the whole run, for schedules that need to know where it ends."""
    per_epoch = math.ceil(len(train_batches(exp, shuffle=True)[1]) / grad_accum_steps)
    if stages:
        steps = sum(st.steps or math.ceil(st.epochs * per_epoch * (st.data_fraction or 1.0)) for st in stages)
    else:
        steps = epochs * per_epoch
    return min(steps, max_steps) if max_steps else steps


def schedule_warning(recipe: Recipe, steps: int) -> str | None:
    """One line when the schedule cannot do what it says: a warm-up longer than the run."""
    warmup = recipe.scheduler.args.get("warmup_steps") or 0
    if steps >= warmup:
        return None
    lr = recipe.optimizer.args.get("lr")
    return (f"scheduler.warmup_steps = {warmup} but the run has {steps} optimizer steps: the learning rate never "
            f"reaches its peak (it stops at {steps / warmup:.0%} of optimizer.lr = {lr:g}); lower warmup_steps "
            "or train longer")


def train_batches(exp: Experiment, shuffle: bool) -> tuple[list[int], list[list[int]]]:
    """The training split's lengths and the batches of its first epoch, as the run draws them."""
    utterances = exp.corpus.split("train").utterances
    lengths = [u.num_frames for u in utterances]
    sampler = BucketBatchSampler(lengths, exp.corpus.max_frames, exp.corpus.batch_size, exp.corpus.bucketed,
                                 shuffle=shuffle, draw=exp.corpus.draw_for(utterances), step=exp.pad_steps[0])
    return lengths, sampler.batches()


def dataset_stats(exp: Experiment) -> dict[str, dict[str, float]]:
    stats = {}
    for role in exp.corpus.roles:
        if exp.corpus.has(role):
            split = exp.corpus.split(role)
            s = split.stats()
            if split.skipped:
                s["skipped_by_reason"] = split.skipped_by_reason()
            if split.has_text:
                s["tokens"] = sum(len(exp.tokenizer.encode(u.text)) for u in split.utterances)
            stats[role] = s
    if "train" in stats:
        lengths, batches = train_batches(exp, shuffle=False)
        stats["train"]["batches"] = len(batches)
        stats["train"]["padding_fraction"] = round(padding_fraction(lengths, batches, exp.pad_steps[0]), 4)
        if hasattr(exp.corpus, "shares"):  # a mix of corpora: what each brings to an epoch
            stats["train"]["corpora"] = exp.corpus.shares(exp.corpus.split("train").utterances)
    return stats


def describe(exp: Experiment) -> dict[str, Any]:
    return {
        "parameters": count_parameters(exp.model),
        "vocab_size": exp.tokenizer.vocab_size,
    }


# --- reopening a trained run ----------------------------------------------------


@dataclass
class TrainedRun:
    run_dir: Path
    recipe: Recipe
    tokenizer: Tokenizer
    normalizer: Normalizer
    model: torch.nn.Module


def open_run(run_dir: Path, overrides: list[str] | None = None, weights: str = "best",
             need_data: bool = False) -> TrainedRun:
    """A trained model from its run directory alone (no corpus needed)."""
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.toml"
    if not recipe_path.exists():
        raise RecipeError([("", f"{run_dir}: not a run directory (no recipe.toml)")])
    raw = recipe_mod.read_toml(recipe_path)
    raw.pop("init", None)  # the weights are the run's own now: the run it started from may be gone
    recipe_mod.apply_overrides(raw, list(overrides or []))
    if not need_data:
        _skip_data_checks(raw)
    recipe = recipe_mod.validate(raw)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    normalizer = normalization.from_state(json.loads((run_dir / "normalization.json").read_text()))
    model = recipe.model.build(vocab_size=tokenizer.vocab_size, input_dim=_input_dim(raw))
    model.load_state_dict(load_weights(run_dir, weights))
    model.eval()
    return TrainedRun(run_dir, recipe, tokenizer, normalizer, model)


def meet_new_speakers(exp: Experiment, roles: list[str], log: Log = print) -> None:
    """A per-speaker normalizer learns the means of speakers it has not met from the splits
    about to be decoded (their recordings, not their transcripts); nothing is saved."""
    from speechforge.data.corpus import load_features

    unknown: dict[str, list[np.ndarray]] = {}
    known = set(exp.normalizer.state()["speakers"])
    for role in roles:
        if exp.corpus.has(role):
            for utt in exp.corpus.split(role).utterances:
                if utt.speaker is not None and utt.speaker not in known:
                    unknown.setdefault(utt.speaker, []).append(load_features(utt.feats, exp.corpus.num_mel_bins))
    new = exp.normalizer.add_speakers(unknown)
    if new:
        log(f"data.normalization: {len(new)} speaker(s) the run has not met ({', '.join(new[:5])}"
            f"{', ...' if len(new) > 5 else ''}): their means come from the recordings decoded now")


def _input_dim(raw: dict[str, Any]) -> int:
    return int(raw.get("data", {}).get("num_mel_bins", 80))


def front_end(recipe: Recipe) -> FrontEnd:
    """How the run's features are computed from a recording (audio sources resample to
    their ``sample_rate``; stored-feature datasets are read as 16 kHz, the synth corpus's rate)."""
    args = recipe.data.args
    return FrontEnd(sample_rate=int(args.get("sample_rate", 16000)), num_mel_bins=int(args.get("num_mel_bins", 80)))


def _skip_data_checks(raw: dict[str, Any]) -> None:
    """A run is reusable where its corpus is absent: validate data.root only if it exists."""
    data = raw.get("data", {})
    for section in [data] + (data.get("corpora", []) if isinstance(data, dict) else []):  # a mix's too
        if isinstance(section, dict) and "root" in section and not Path(str(section["root"])).exists():
            section["root"] = "."


def load_weights(run_dir: Path, which: str = "best") -> dict[str, torch.Tensor]:
    from speechforge.train import checkpoint

    path = run_dir / f"{which}.pt"
    if which == "averaged" and not path.exists():
        raise DataError("no averaged.pt: the run has not finished", run_dir)
    if which == "last" or not path.exists():
        path = checkpoint.latest(run_dir / "checkpoints") or path
    if not path.exists():
        raise DataError("no trained weights (best.pt or checkpoints/ckpt-*.pt)", run_dir)
    state = checkpoint.load(path)
    return state.get("model", state)
