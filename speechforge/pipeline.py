"""What the commands do: train-evaluate-decode a recipe; decode a trained run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from speechforge import experiment, recipe as recipe_mod
from speechforge.decode.outputs import decode_batches, decode_tag, decoder_defaults, gather_records, write_outputs
from speechforge.model.packed import product_choices
from speechforge.model.transformer import count_parameters
from speechforge.precision import name as precision_name, resolve as resolve_precision
from speechforge.recipe import Recipe, RecipeError

Log = Callable[[str], None]

# sections whose change makes a checkpoint meaningless for a recipe
_MUST_MATCH = ("tokenizer", "model")


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{path}.{key}")
        elif a != b:
            diffs.append(f"{path}: {a!r} in the run, {b!r} now")

    for section in _MUST_MATCH:
        walk(old.get(section, {}), new.get(section, {}), section)
    return diffs


def check_resumable(run_dir: Path, recipe: Recipe) -> bool:
    """True when run_dir holds a run to resume; refuse one whose recipe differs where it matters."""
    saved = run_dir / "recipe.toml"
    if not saved.exists():
        return False
    old = recipe_mod.read_toml(saved)
    diffs = recipe_differences(old, recipe.to_dict())
    if diffs:
        raise RecipeError([("run_dir", f"{run_dir} holds a run made with a different recipe; "
                                       f"use another --run-dir or the same recipe. Differences: " + "; ".join(diffs))])
    return True


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


def run(recipe: Recipe, run_dir: Path, log: Log = print, progress: bool = True) -> dict[str, Any]:
    """Train, validate each epoch, then decode dev and test with the recipe's decoder."""
    experiment.check_run_dir_writable(run_dir)
    resuming = check_resumable(run_dir, recipe)
    start = time.time()
    seed_everything(recipe.seed)  # before the model is built: its initial weights come from here
    exp = experiment.build(recipe, run_dir, log)
    for note in exp.notes:
        log(note)
    from accelerate import PartialState

    state = PartialState()
    if not state.is_main_process:
        log = _silent  # one process speaks; the others follow
    stats = experiment.dataset_stats(exp)
    if state.is_main_process:
        exp.save_assets()
        (run_dir / "dataset_stats.json").write_text(json.dumps(stats, indent=2))
        experiment.write_skipped(exp)
    state.wait_for_everyone()
    for role, s in stats.items():
        log(f"data.{role}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k != "corpora"))
        for label, c in s.get("corpora", {}).items():  # a mix: each corpus's share of an epoch
            log(f"data.{role}.corpora {label}: {c['utterances']} utterances ({c['hours']} h), weight {c['weight']:g}, "
                f"{c['epoch_utterances']} an epoch: {c['share']:.1%} of its utterances, {c['frame_share']:.1%} of its frames")
    log(f"model: {count_parameters(exp.model):,} parameters, vocabulary {exp.tokenizer.vocab_size}"
        + (" (resuming)" if resuming else ""))

    optimizer_spec = recipe.optimizer
    if recipe.init is not None and recipe.init.lm_run is not None:
        optimizer_spec = init_from_lm(exp, recipe, run_dir, log, state.is_main_process)
    elif recipe.init is not None and not resuming:  # a resumed run's checkpoint holds newer weights
        init_from_asr(exp.model, recipe.init.asr_run, log)
    trainer = recipe.trainer.build()
    loss_fn = recipe.loss.build()
    optimizer = optimizer_spec.build(model=exp.model)
    steps = experiment.total_steps(exp, trainer.cfg["epochs"], trainer.cfg["grad_accum_steps"], trainer.cfg["max_steps"],
                                   recipe.stages)
    schedule = recipe.scheduler.build(total_steps=steps).attach(optimizer)
    warning = experiment.schedule_warning(recipe, steps)
    if warning:
        log(f"warning: {warning}")
    summary = trainer.fit(exp, loss_fn, optimizer, schedule, log=log, progress=progress)

    weights = trainer.cfg["decode_weights"]  # ESPnet decodes with the average of its best checkpoints
    exp.model.load_state_dict(experiment.load_weights(run_dir, weights))
    results = decode_splits(exp.model, exp, recipe, run_dir, log, suffix="" if weights == "best" else f"-{weights}")
    summary.update({"decode": results, "seconds": round(time.time() - start, 1), "run_dir": str(run_dir)})
    summary.pop("history", None)
    if state.is_main_process:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _silent(msg: str) -> None:
    pass


def init_from_asr(model: torch.nn.Module, asr_run: str, log: Log) -> None:
    """Every tensor of the model from a trained ASR run's best weights, which must be
    the same model: names and shapes are all checked before anything is copied."""
    source = experiment.load_weights(Path(asr_run))
    target = model.state_dict()
    problems = [f"{name}: the run has {tuple(source[name].shape)}, this recipe builds {tuple(t.shape)}"
                for name, t in target.items() if name in source and source[name].shape != t.shape]
    missing = [name for name in target if name not in source]
    unused = [name for name in source if name not in target]
    if missing:
        problems.append(f"{len(missing)} tensor(s) the run does not have, e.g. {missing[0]}")
    if unused:
        problems.append(f"{len(unused)} tensor(s) of the run this model has no place for, e.g. {unused[0]}")
    if problems:
        raise RecipeError([("init.asr_run", f"{asr_run} holds another model ({'; '.join(problems[:3])}); "
                            "give this recipe the run's [model] section")])
    model.load_state_dict(source)
    log(f"init: {len(target)} tensors ({count_parameters(model):,} parameters) from {asr_run}")


def init_from_lm(exp, recipe: Recipe, run_dir: Path, log: Log, main: bool):
    """Copy a trained LM into the decoder; return the optimizer spec with the transferred
    weights' learning-rate multiplier (they are frozen for init.freeze_epochs first)."""
    import re
    from dataclasses import replace

    from speechforge.lm.transfer import TransferError, transfer_decoder

    try:
        report = transfer_decoder(exp.model, recipe.init.lm_run, exp.tokenizer)
    except TransferError as err:
        raise RecipeError([("init.lm_run", str(err))]) from None
    exp.transferred = list(report.transferred)
    log(str(report))
    frozen = sum(p.numel() for n, p in exp.model.named_parameters() if n in set(report.transferred))
    log(f"init: {frozen:,} parameters frozen for the first {recipe.init.freeze_epochs} epoch(s), "
        f"then trained at {recipe.init.lr_scale} x the learning rate")
    if main:
        (run_dir / "transfer.json").write_text(json.dumps({**report.as_dict(), "frozen_parameters": frozen}, indent=2))
    spec = recipe.optimizer
    multipliers = {f"^{re.escape(name)}$": recipe.init.lr_scale for name in report.transferred}
    multipliers.update(spec.args.get("lr_multipliers", {}))
    return replace(spec, args={**spec.args, "lr_multipliers": multipliers})


def decode_splits(model, exp, recipe: Recipe, run_dir: Path, log: Log, splits=None,
                  suffix: str = "") -> dict[str, Any]:
    """Decode and score ``splits`` (default: dev and every test split of data.test)."""
    from accelerate import PartialState

    roles = exp.corpus.eval_roles
    unknown = [role for role in splits or () if role not in roles]
    if unknown:
        raise RecipeError([("--split", f"no split {unknown[0]!r} in this run's data; it has {', '.join(roles)}")])
    splits = splits or roles
    state = PartialState()  # under `accelerate launch`, each process decodes its share
    decoder = recipe.decode.build()
    if hasattr(decoder, "bind"):
        decoder.bind(exp.tokenizer)
    precision = decode_precision(recipe, state.device)
    tag = decode_tag(recipe.decode.name, recipe.decode.args, decoder_defaults(recipe.decode.name))
    if precision != resolve_precision("auto", state.device)[0]:
        # a decode in the other precision than this device's default sits beside it, not over it
        tag += f"-{precision_name(precision)}"
    tag += suffix
    folder = run_dir / "decode" / tag
    model.to(state.device)
    results = {}
    for role in splits:
        if not exp.corpus.has(role):
            continue
        loader, _ = exp.loader(role, num_replicas=state.num_processes, rank=state.process_index)
        t0 = time.time()
        records = gather_records(decode_batches(model, loader, decoder, exp.tokenizer, state.device, precision))
        if not state.is_main_process:
            continue
        res = write_outputs(records, folder, role)
        res["seconds"] = round(time.time() - t0, 2)
        results[role] = res
        rates = f"CER {res['cer']:.4f} WER {res['wer']:.4f}" if "cer" in res else "no references"
        log(f"decode {tag} {role}: {res['utterances']} utterances, {rates}")
        capped = sum(bool(r.get("at_cap")) for r in records)
        if capped:
            # short utterances of long words: one token per encoder frame can be too few
            log(f"decode {tag} {role}: {capped} of {len(records)} hypotheses stopped at the length cap "
                f"(decode.max_len_ratio x encoder frames, or decode.max_len) without <eos>, maybe cut short; "
                f"raise decode.max_len_ratio or decode.max_len if they are")
    products = searched_products(model)
    if state.is_main_process and products:
        log(f"decode {tag}: bf16 search products, measured on this CPU: {products_text(products)}")
    if state.is_main_process and results:  # no split to decode (dev and test both null): no folder
        (folder / "metrics.json").write_text(json.dumps(
            {"decoder": recipe.decode.to_dict(), "precision": precision_name(precision),
             **({"search_products": {rows: dtype for rows, (dtype, _) in products.items()}} if products else {}),
             **results}, indent=2))
    results["folder"] = str(folder)
    return results


def searched_products(model) -> dict[int, tuple[str, float]]:
    """most rows -> (the dtype bf16 searches multiplied in, bf16 step time / fp32 step time), as
    the decoder's packed step measured them (model/packed.py); empty where none was measured."""
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, torch.nn.Module):
        return {}
    return {rows: (str(dtype).removeprefix("torch."), ratio) for rows, (dtype, ratio) in product_choices(decoder).items()}


def products_text(products: dict[int, tuple[str, float]]) -> str:
    """``searched_products`` as the run log says it."""
    return "; ".join(f"up to {rows} rows in {dtype} (a bf16 step took {ratio:.2f}x an fp32 one)"
                     for rows, (dtype, ratio) in products.items())


def decode_precision(recipe: Recipe, device) -> str:
    """Decoding computes in the precision training chose (trainer.mixed_precision, "auto" by
    default); `--set trainer.mixed_precision="no"` decodes a bf16 run in fp32."""
    return experiment.run_precision(recipe, device)


def decode_run(run_dir: Path, overrides: list[str], log: Log = print, splits=None,
               weights: str = "best") -> dict[str, Any]:
    """Decode with a trained run and any decoder the recipe or --set names; no training."""
    trained = experiment.open_run(run_dir, overrides, weights, need_data=True)
    exp = experiment.Experiment(
        trained.recipe, run_dir, trained.recipe.data.build(), trained.normalizer, trained.tokenizer, trained.model
    )
    if trained.normalizer.per_speaker:
        experiment.meet_new_speakers(exp, splits or exp.corpus.eval_roles, log)
    return decode_splits(trained.model, exp, trained.recipe, run_dir, log, splits,
                         suffix="" if weights == "best" else f"-{weights}")
