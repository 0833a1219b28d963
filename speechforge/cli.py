"""The ``speechforge`` command: parse arguments, call the pipeline, print the result.

Expected problems (a bad recipe, a bad data file) print one or two lines and exit
with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from speechforge import registry
from speechforge.data.errors import DataError
from speechforge.extras import MissingExtra
from speechforge.recipe import RecipeError

EXIT_USAGE = 2


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value (repeatable), e.g. --set model.encoder.num_layers=6")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="speechforge", description="End-to-end speech recognition from TOML recipes.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("--quiet", action="store_true", help="print only the final summary")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train, evaluate on dev, decode test")
    p.add_argument("recipe", type=Path)
    _add_set(p)
    p.add_argument("--run-dir", default=None, help="where the run lives (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir (also automatic)")

    p = sub.add_parser("check", help="validate a recipe and build every component, without training")
    p.add_argument("recipe", type=Path)
    _add_set(p)

    p = sub.add_parser("registry", help="list registered components")
    p.add_argument("kind", nargs="?", choices=registry.KINDS)

    p = sub.add_parser("decode", help="decode with a trained run (no training)")
    p.add_argument("run_dir", type=Path)
    _add_set(p)
    p.add_argument("--split", action="append", help="split(s) to decode: dev, test, or a folder of a list in "
                                                    "data.test (default: all of them)")
    p.add_argument("--weights", choices=["best", "last", "averaged"], default="best")

    p = sub.add_parser("transcribe", help="transcribe audio or feature files with a trained run or an export folder")
    p.add_argument("run_dir", type=Path, metavar="RUN_OR_EXPORT_DIR")
    p.add_argument("files", type=Path, nargs="+")
    _add_set(p)
    p.add_argument("--weights", choices=["best", "last", "averaged"], default="best")
    p.add_argument("--json", action="store_true", help="one JSON object per file")

    p = sub.add_parser("export", help="export a trained run for deployment (ONNX graphs a torch-free runtime decodes with)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, default=None, help="the export folder (default: RUN_DIR/onnx)")
    p.add_argument("--weights", choices=["best", "last", "averaged"], default="best")

    p = sub.add_parser("report", help="write a self-contained HTML report of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None)

    p = sub.add_parser("average", help="average the last or best N checkpoints of a run into averaged.pt")
    p.add_argument("run_dir", type=Path)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--last", type=int, metavar="N")
    group.add_argument("--best", type=int, metavar="N",
                       help="by trainer.select_by, dev CER by default (the run keeps trainer.keep_best of them)")

    p = sub.add_parser("plot-lr", help="draw a recipe's learning-rate schedule to a PNG, before any training")
    p.add_argument("recipe", type=Path)
    _add_set(p)
    p.add_argument("--out", type=Path, default=Path("lr.png"))

    p = sub.add_parser("runs", help="list runs with their best dev CER")
    p.add_argument("root", type=Path, nargs="?", default=Path("runs"))

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="generate the built-in synthetic corpus")
    s.add_argument("--out", type=Path, default=Path("data/synth"))
    s.add_argument("--train", type=int, default=1500)
    s.add_argument("--dev", type=int, default=100)
    s.add_argument("--test", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--wav", action="store_true", help="also keep the waveforms")
    said = s.add_mutually_exclusive_group()
    said.add_argument("--words", nargs="+", metavar="WORD", help="say these words (e.g. ZERO ONE ... NINE), not the grammar's sentences")
    said.add_argument("--text", type=Path, metavar="FILE", help="say this file's sentences, one a line")
    s.add_argument("--words-per-utterance", type=int, nargs=2, default=(1, 1), metavar=("LOW", "HIGH"))
    s.add_argument("--recording-rate", type=int, default=16000, help="record at this rate (8000: telephone band)")
    s.add_argument("--min-seconds", type=float, default=1.5, help="pad shorter utterances with noise to this length")
    s = dsub.add_parser("fsdd", help="write train/dev/test.jsonl manifests of the FSDD digit recordings")
    s.add_argument("--recordings", type=Path, default=Path("../shared/data/fsdd/recordings"))
    s.add_argument("--out", type=Path, default=Path("data/fsdd"))
    s.add_argument("--test-speaker", action="append", default=[], help="hold a speaker out for test (repeatable)")
    s = dsub.add_parser("prepare", help="compute the features of every split of a recipe's dataset, once")
    s.add_argument("recipe", type=Path)
    _add_set(s)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    try:
        return COMMANDS[args.command](args, log)
    except (RecipeError, DataError, MissingExtra) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_run(args, log) -> int:
    from speechforge import pipeline, recipe as recipe_mod
    from speechforge.experiment import resolve_run_dir
    from speechforge.train.trainer import NonFiniteError, TrainingInterrupted

    recipe = recipe_mod.load(args.recipe, args.overrides)
    run_dir = resolve_run_dir(recipe, args.recipe, args.run_dir)
    if args.resume and not (run_dir / "checkpoints").is_dir():
        raise RecipeError([("--resume", f"{run_dir} holds no checkpoint to resume from")])
    try:
        if recipe.task == "lm":
            from speechforge.lm import pipeline as lm_pipeline

            print(lm_pipeline.lines(lm_pipeline.run(recipe, run_dir, log, progress=not args.quiet)))
            return 0
        summary = pipeline.run(recipe, run_dir, log, progress=not args.quiet)
    except TrainingInterrupted as sig:
        print(f"stopped by {sig}; checkpoint saved. Resume with: speechforge run {args.recipe} --run-dir {run_dir}",
              file=sys.stderr)
        return 130
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(_summary_lines(summary))
    return 0


def _summary_lines(summary: dict) -> str:
    lines = [f"run directory: {summary['run_dir']}"]
    dec = summary.get("decode", {})
    for role, res in dec.items():  # dev, then test or each of several test splits
        if isinstance(res, dict) and "cer" in res:
            lines.append(f"{role}: CER {dec[role]['cer']:.4f}  WER {dec[role]['wer']:.4f}  ({dec[role]['utterances']} utterances)")
    if "folder" in dec:
        lines.append(f"transcripts: {dec['folder']}")
    lines.append(f"time: {summary.get('seconds', 0):.0f} s")
    return "\n".join(lines)


def cmd_check(args, log) -> int:
    from speechforge import experiment, recipe as recipe_mod
    from speechforge.model.transformer import count_parameters
    from speechforge.train import memory

    recipe = recipe_mod.load(args.recipe, args.overrides)
    if recipe.task == "lm":
        from speechforge.lm import pipeline as lm_pipeline

        report = lm_pipeline.check(recipe)
        return _print_check(recipe, report["notes"], report["parameters"], report["vocab_size"])
    exp = experiment.build(recipe, Path("/nonexistent-speechforge-run"), log, dry=True)
    loss_fn = recipe.loss.build()
    optimizer = recipe.optimizer.build(model=exp.model)
    recipe.scheduler.build(total_steps=1000)
    trainer = recipe.trainer.build()
    recipe.decode.build()
    notes = list(exp.notes)
    estimate = None
    if exp.corpus.has("train") and not any("generated by `speechforge run`" in n for n in notes):
        steps = experiment.total_steps(exp, trainer.cfg["epochs"], trainer.cfg["grad_accum_steps"],
                                       trainer.cfg["max_steps"], recipe.stages)
        warning = experiment.schedule_warning(recipe, steps)
        if warning:
            print(f"warning: {warning}")
        if exp.tokenizer.trained:
            estimate = memory.for_experiment(exp, loss_fn, optimizer, trainer.cfg).line(
                exp.corpus.max_frames, recipe.optimizer.name)
    return _print_check(recipe, notes, count_parameters(exp.model), exp.tokenizer.vocab_size, estimate)


def _print_check(recipe, notes: list[str], params: int, vocab: int, memory_line: str | None = None) -> int:
    from speechforge import recipe as recipe_mod

    for note in notes:
        print(f"note: {note}")
    print(f"parameters: {params:,}")
    print(f"vocabulary: {vocab}")
    if memory_line:
        print(memory_line)
    print("resolved recipe:")
    print(recipe_mod.dumps(recipe.to_dict()))
    return 0


def cmd_registry(args, log) -> int:
    kinds = [args.kind] if args.kind else list(registry.KINDS)
    for kind in kinds:
        print(f"{kind}:")
        for name, doc, dist in registry.describe(kind):
            print(f"  {name:<20} {doc}  [{dist}]")
    return 0


def cmd_decode(args, log) -> int:
    from speechforge import pipeline

    results = pipeline.decode_run(args.run_dir, args.overrides, log, tuple(args.split or ()) or None, args.weights)
    print(json.dumps(results, indent=2))
    return 0


def cmd_data(args, log) -> int:
    from speechforge.data.synth import build_corpus
    from speechforge.data.synth.corpus import Recording
    from speechforge.data.synth.targeted import TargetText

    if args.data_command == "fsdd":
        from speechforge.data.fsdd import write_manifests

        print(json.dumps(write_manifests(args.recordings, args.out, args.test_speaker)))
        return 0
    if args.data_command == "prepare":
        from speechforge import recipe as recipe_mod
        from speechforge.data.feature_cache import prepare_all

        recipe = recipe_mod.load(args.recipe, args.overrides)
        print(json.dumps(prepare_all(recipe.data.build(), log), indent=2))
        return 0
    stats = build_corpus(args.out, n_train=args.train, n_dev=args.dev, n_test=args.test, seed=args.seed,
                         save_wav=args.wav, progress=not args.quiet,
                         text=(TargetText.from_words(args.words, tuple(args.words_per_utterance)) if args.words
                               else TargetText.from_file(args.text) if args.text else None),
                         recording=Recording(args.recording_rate, args.min_seconds))
    print(json.dumps(stats, indent=2))
    return 0


def cmd_transcribe(args, log) -> int:
    from speechforge.runtime.bundle import is_export_dir

    if is_export_dir(args.run_dir):
        from speechforge import runtime

        transcriber = runtime.load(args.run_dir, runtime.decode_overrides(args.overrides))
    else:
        from speechforge.transcribe import load

        transcriber = load(args.run_dir, args.overrides, args.weights)
    for r in transcriber.transcribe(args.files):
        print(json.dumps(r) if args.json else f"{r['path']}\t{r['text']}")
    return 0


def cmd_export(args, log) -> int:
    from speechforge.export import export_onnx

    out = export_onnx(args.run_dir, args.out, args.weights, log)
    total = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        total += path.stat().st_size
        print(f"{path.stat().st_size:>12,}  {path.relative_to(out)}")
    print(f"{total:>12,}  bytes in {out}")
    print(f"transcribe with it (no torch needed): speechforge transcribe {out} FILE...")
    return 0


def cmd_report(args, log) -> int:
    from speechforge.report import write_report

    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0


def cmd_average(args, log) -> int:
    from speechforge.train import checkpoint

    if args.last is not None:
        paths = [p for _, p in checkpoint.checkpoints(args.run_dir / "checkpoints")][-args.last :]
    else:
        paths = checkpoint.best_checkpoints(args.run_dir / "best", args.best)
    if not paths:
        raise DataError("no checkpoints to average", args.run_dir)
    checkpoint.save_atomic({"model": checkpoint.average_state_dicts(paths), "averaged": [str(p) for p in paths]},
                           args.run_dir / "averaged.pt")
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {args.run_dir / 'averaged.pt'}")
    print(f"decode with it: speechforge decode {args.run_dir} --weights averaged")
    return 0


def cmd_plot_lr(args, log) -> int:
    from speechforge import experiment, plots, recipe as recipe_mod

    import torch

    recipe = recipe_mod.load(args.recipe, args.overrides)
    if recipe.task == "lm":
        from speechforge.lm import pipeline as lm_pipeline

        report = lm_pipeline.check(recipe)
        return _print_check(recipe, report["notes"], report["parameters"], report["vocab_size"])
    exp = experiment.build(recipe, Path("/nonexistent-speechforge-run"), log, dry=True)
    trainer = recipe.trainer.build()
    steps = experiment.total_steps(exp, trainer.cfg["epochs"], trainer.cfg["grad_accum_steps"],
                                   trainer.cfg["max_steps"], recipe.stages)
    optimizer = recipe.optimizer.build(model=torch.nn.Linear(1, 1))
    schedule = recipe.scheduler.build(total_steps=steps).attach(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    note = " (plateau cuts depend on dev CER and are not drawn)" if recipe.scheduler.name == "plateau" else ""
    plots.curves({recipe.scheduler.name: (list(range(1, steps + 1)), lrs)}, args.out,
                 f"learning rate over {steps} steps{note}")
    print(f"{args.out}: {recipe.scheduler.name}, {steps} steps, peak {max(lrs):.3g}, last {lrs[-1]:.3g}")
    warning = experiment.schedule_warning(recipe, steps)
    if warning:
        print(f"warning: {warning}")
    return 0


def cmd_runs(args, log) -> int:
    from speechforge.report import list_runs

    runs = list_runs(args.root)
    if not runs:
        print(f"no runs under {args.root}")
    for r in runs:
        if r["best_val_ppl"] is not None:
            score = f"best val perplexity {r['best_val_ppl']:.3f}"
        else:
            score = "best dev CER " + ("-" if r["best_dev_cer"] is None else f"{r['best_dev_cer']:.4f}")
        print(f"{r['run_dir']:<50} {score}  steps {r['steps'] or '-'}{'' if r['finished'] else '  (unfinished)'}")
    return 0


COMMANDS = {"export": cmd_export, "average": cmd_average, "plot-lr": cmd_plot_lr, "transcribe": cmd_transcribe, "report": cmd_report, "runs": cmd_runs, "run": cmd_run, "check": cmd_check, "registry": cmd_registry, "decode": cmd_decode, "data": cmd_data}

if __name__ == "__main__":
    sys.exit(main())
