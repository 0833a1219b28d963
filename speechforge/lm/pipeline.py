"""What `speechforge run` does with a ``task = "lm"`` recipe: fit the tokenizer on the
training text, train, measure val/test perplexity against a unigram baseline on the
same data, and write samples from the recipe's prompts.

The run directory holds what an ASR run holds, so LM runs are reopened the same way
(``speechforge.lm.transfer.load_lm``): recipe.toml, tokenizer/, best.pt,
checkpoints/, metrics.jsonl, summary.json, and generations.txt when the recipe has a
[generate] section.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from speechforge import precision, recipe as recipe_mod
from speechforge.data.batching import pad_steps
from speechforge.data.tokenizers import Tokenizer, TokenizerError, load_tokenizer
from speechforge.lm.data import ROLES, TextCorpus
from speechforge.lm.metrics import UnigramLM, evaluate
from speechforge.lm.train import steps_per_epoch
from speechforge.model.transformer import count_parameters
from speechforge.recipe import Recipe, RecipeError
from speechforge.train import checkpoint

Log = Callable[[str], None]


def fit_tokenizer(recipe: Recipe, corpus: TextCorpus, run_dir: Path) -> Tokenizer:
    """The run's tokenizer: reloaded when resuming, else trained on the training text."""
    if (run_dir / "tokenizer" / "tokenizer.json").exists():
        return load_tokenizer(run_dir / "tokenizer")
    tokenizer = recipe.tokenizer.build()
    try:
        tokenizer.fit(corpus.texts("train"))
    except TokenizerError as err:
        raise RecipeError([("", str(err))]) from None
    return tokenizer


def run(recipe: Recipe, run_dir: Path, log: Log = print, progress: bool = True) -> dict[str, Any]:
    """Train an LM and evaluate it; returns (and writes) the summary."""
    # imported here: speechforge.pipeline dispatches to this module
    from speechforge.experiment import check_run_dir_writable
    from speechforge.pipeline import check_resumable, seed_everything

    if recipe.task != "lm":
        raise RecipeError([("task", f'this pipeline trains language models (task = "lm"), not {recipe.task!r}')])
    run_dir = Path(run_dir)
    check_run_dir_writable(run_dir)
    resuming = check_resumable(run_dir, recipe)
    start = time.time()
    seed_everything(recipe.seed)  # before the model is built: its initial weights come from here

    corpus: TextCorpus = recipe.data.build()
    splits = {role: corpus.split(role) for role in ROLES if corpus.has(role)}
    for role, split in splits.items():
        if split.skipped:
            log(f"data.{role}: skipped {len(split.skipped)} bad file(s), e.g. {split.skipped[0]}")
    tokenizer = fit_tokenizer(recipe, corpus, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.toml").write_text(recipe_mod.dumps(recipe.to_dict()))
    tokenizer.save(run_dir / "tokenizer")

    stats = {}
    for role, split in splits.items():
        s = split.stats()
        s["tokens"] = sum(len(tokenizer.encode(t)) for t in corpus.texts(role))
        stats[role] = s
        log(f"data.{role}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    model = recipe.model.build(vocab_size=tokenizer.vocab_size)
    log(f"model: {count_parameters(model):,} parameters, vocabulary {tokenizer.vocab_size}"
        + (" (resuming)" if resuming else ""))

    trainer = recipe.trainer.build()
    loss_fn = recipe.loss.build()
    optimizer = recipe.optimizer.build(model=model)
    cfg = trainer.cfg
    # as many batches as the trainer will draw: bf16 pads them in steps, which makes more
    step = pad_steps(precision.planned(cfg["mixed_precision"], cfg["cpu"]))[1]
    batches = len(corpus.loader("train", tokenizer, step=step)[1].batches())
    steps = cfg["epochs"] * steps_per_epoch(batches, cfg["grad_accum_steps"])
    steps = min(steps, cfg["max_steps"]) if cfg["max_steps"] else steps
    schedule = recipe.scheduler.build(total_steps=steps).attach(optimizer)
    summary = trainer.fit(model, corpus, tokenizer, loss_fn, optimizer, schedule, run_dir, recipe.seed, log)
    summary.pop("history", None)

    model.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
    model.eval()
    device = next(model.parameters()).device
    results = {role: evaluate(model, corpus.loader(role, tokenizer)[0], device) for role in splits if role != "train"}
    for role, r in results.items():
        log(f"{role}: perplexity {r['ppl']:.3f} per token, {r['char_ppl']:.3f} per character")

    unigram = UnigramLM([tokenizer.encode(t) for t in corpus.texts("train")], tokenizer.vocab_size)
    baseline = {role: unigram.evaluate([tokenizer.encode(t) for t in corpus.texts(role)], corpus.texts(role))
                for role in results}
    for role, r in baseline.items():
        log(f"{role}: unigram baseline {r['ppl']:.3f} per token, {r['char_ppl']:.3f} per character")

    if recipe.generate is not None:
        samples = recipe.generate.build()(model, tokenizer)
        with open(run_dir / "generations.txt", "w") as f:
            for s in samples:
                f.write(f"PROMPT: {s['prompt']}\n{s['text']}\n\n")
        log(f"generations: {run_dir / 'generations.txt'}")

    summary.update({
        "parameters": count_parameters(model), "vocab_size": tokenizer.vocab_size, "data": stats,
        "eval": results, "unigram": baseline, "seconds": round(time.time() - start, 1), "run_dir": str(run_dir),
    })
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def check(recipe: Recipe) -> dict[str, Any]:
    """What `speechforge check` reports for an LM recipe: every component built, the
    tokenizer fitted on the training text, nothing trained or written."""
    corpus: TextCorpus = recipe.data.build()
    notes = []
    for role in ROLES:
        if corpus.has(role) and corpus.split(role).skipped:
            notes.append(f"data.{role}: {len(corpus.split(role).skipped)} bad file(s) would be skipped")
    tokenizer = recipe.tokenizer.build()
    try:
        tokenizer.fit(corpus.texts("train"))
    except TokenizerError as err:
        notes.append(f"{err} (the model below is sized for the requested vocabulary)")
    model = recipe.model.build(vocab_size=tokenizer.vocab_size)
    recipe.loss.build()
    recipe.scheduler.build(total_steps=1000).attach(recipe.optimizer.build(model=model))
    recipe.trainer.build()
    if recipe.generate is not None:
        recipe.generate.build()
    return {"parameters": count_parameters(model), "vocab_size": tokenizer.vocab_size, "notes": notes,
            "data": {role: corpus.split(role).stats() for role in ROLES if corpus.has(role)}}

def lines(summary: dict[str, Any]) -> str:
    """What the command line prints at the end of an LM run."""
    out = [f"run directory: {summary['run_dir']}"]
    for role in ("val", "test"):
        if role in summary.get("eval", {}):
            r, u = summary["eval"][role], summary["unigram"][role]
            out.append(f"{role}: perplexity {r['ppl']:.3f} (unigram {u['ppl']:.3f}), per character "
                       f"{r['char_ppl']:.3f} (unigram {u['char_ppl']:.3f})")
    out.append(f"time: {summary.get('seconds', 0):.0f} s")
    return "\n".join(out)
