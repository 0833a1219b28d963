"""The training loop, on Hugging Face Accelerate.

The canonical Accelerate shape: build, ``prepare`` once, ``accumulate`` around the
step, ``backward``, ``clip_grad_norm_``. Accelerate owns devices, mixed precision,
gradient accumulation and multi-process runs; this file owns what an ASR run needs
around it: validation by error rate, checkpoints that resume at the exact batch,
skipping non-finite updates, and stopping cleanly on a signal.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import torch
from pydantic import AfterValidator, Field

from speechforge import registry
from speechforge.decode.greedy import greedy_search
from speechforge.decode.outputs import decode_batches, gather_records, score
from speechforge import allocator, precision
from speechforge.precision import Precision
from speechforge.train import checkpoint
from speechforge.train.stages import apply_stage, fallback_stage

Log = Callable[[str], None]


class NonFiniteError(RuntimeError):
    pass


class TrainingInterrupted(Exception):
    pass


class TrainingLoop:
    """What the ASR loop here and the LM loop (``speechforge.lm.train``) share: a clean stop
    on SIGTERM/SIGINT, and an optimizer update that skips non-finite steps."""

    def __init__(self, **cfg: Any):
        self.cfg = cfg
        self._stop_signal: int | None = None
        self._consecutive_bad = 0

    def _on_signal(self, signum, frame) -> None:
        # finish the current step, checkpoint, then leave (handled in the loop)
        self._stop_signal = signum

    def catch_signals(self) -> dict:
        """Install the stop handlers; returns the old ones for ``release_signals``."""
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def release_signals(old_handlers: dict) -> None:
        for s, h in old_handlers.items():
            signal.signal(s, h)

    def resolve_precision(self, log: Log) -> str:
        """trainer.mixed_precision with "auto" decided for this process's device; logged with why."""
        from accelerate import PartialState

        device = torch.device("cpu") if self.cfg["cpu"] else PartialState().device
        chosen, why = precision.resolve(self.cfg["mixed_precision"], device)
        if PartialState().is_main_process:
            log(f"precision: {precision.name(chosen)} ({why})")
        self.mixed_precision = chosen
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state and AcceleratorState().mixed_precision != chosen:
            # a second run in one process (a notebook, the tests) in another precision: Accelerate
            # keeps one precision per process, so start its state afresh; the process group
            # (PartialState) stays
            AcceleratorState._reset_state()
        return chosen

    def stop_requested(self) -> str | None:
        return None if self._stop_signal is None else signal.Signals(self._stop_signal).name

    def update(self, acc, params, optimizer, finite: bool, counters: dict, step: int, log: Log) -> float:
        """Clip and step when the loss and the gradient norm are finite; otherwise skip the
        update, count it, and stop after ``max_nonfinite`` in a row. Returns the gradient norm
        (nan when the loss was not finite)."""
        grad_norm = float("nan")
        if finite:
            clip = self.cfg["grad_clip"] if self.cfg["grad_clip"] else float("inf")
            grad_norm = float(acc.clip_grad_norm_(params, clip))
        if finite and math.isfinite(grad_norm):
            optimizer.step()
            self._consecutive_bad = 0
        else:
            counters["nonfinite_skips"] += 1
            self._consecutive_bad += 1
            if acc.is_main_process:
                log(f"step {step + 1}: non-finite {'loss' if not finite else 'gradient'}; "
                    f"update skipped ({counters['nonfinite_skips']} so far)")
            if self._consecutive_bad >= self.cfg["max_nonfinite"]:
                raise NonFiniteError(
                    f"{self._consecutive_bad} consecutive non-finite updates: stopping. Usual causes: "
                    "a learning rate too high (lower optimizer.lr or lengthen warm-up), "
                    "fp16 overflow (try trainer.mixed_precision = \"bf16\" or \"no\"), "
                    "or bad inputs (NaN/inf or unnormalized values in the data)."
                )
        optimizer.zero_grad(set_to_none=True)
        return grad_norm


class AccelerateTrainer(TrainingLoop):
    # -- helpers ---------------------------------------------------------------

    def _state(self, acc, model, optimizer, schedule, epoch: int, batch_in_epoch: int, step: int,
               best: float, best_score: float, recipe_text: str, counters: dict) -> dict[str, Any]:
        state = {
            "model": _unwrap(acc, model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": checkpoint.rng_state(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "best_cer": best,
            "best_score": best_score,
            "recipe": recipe_text,
            "counters": counters,
        }
        if acc.scaler is not None:
            state["scaler"] = acc.scaler.state_dict()
        return state

    # -- the loop ----------------------------------------------------------------

    def fit(self, exp, loss_fn, optimizer, schedule, log: Log = print, progress: bool = True) -> dict[str, Any]:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

        cfg = self.cfg
        run_dir: Path = exp.run_dir
        ckpt_dir = run_dir / "checkpoints"
        seed = exp.recipe.seed
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True)
        set_seed(seed)
        staged = bool(exp.recipe.stages) or (exp.recipe.init is not None and exp.recipe.init.lm_run is not None)
        acc = Accelerator(
            # stages change which parameters get gradients: DDP must be told to expect that
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)] if staged else None,
            mixed_precision=self.resolve_precision(log),
            gradient_accumulation_steps=cfg["grad_accum_steps"],
            cpu=cfg["cpu"],
            log_with=list(cfg["trackers"]) or None,
            project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tracking")),
        )
        if cfg["trackers"]:
            acc.init_trackers("speechforge", config=_flat_config(exp.recipe.to_dict()))
        precision.allow_tf32(acc.device)
        kept = allocator.keep_freed_memory(cfg["keep_freed_memory"])
        if acc.is_main_process:
            log(f"host memory: {kept}")
        model = exp.model
        # Our sampler shards each global batch across processes itself (see shard_batch),
        # so the loaders are not handed to prepare(), which would shard them again.
        shard = {"num_replicas": acc.num_processes, "rank": acc.process_index}
        dev_loader = exp.loader("dev", **shard)[0] if exp.corpus.has("dev") else None
        model, optimizer = acc.prepare(model, optimizer)
        if cfg["compile"]:
            # automatic dynamic shapes: the first shape change recompiles once with batch, frame
            # and token counts symbolic, and later batches reuse that graph. dynamic=True would
            # make the feature dimension symbolic too, which Inductor's conv lowering rejects.
            model = torch.compile(model, dynamic=None)
        recipe_text = (run_dir / "recipe.toml").read_text()

        epoch, start_batch, step, best = 0, 0, 0, math.inf
        best_score = math.inf  # of trainer.select_by, lower is better
        counters = {"nonfinite_skips": 0, "stage": 0, "stage_epoch0": 0, "stage_step0": 0}
        stages = list(exp.recipe.stages or [fallback_stage(cfg["epochs"])])
        core = exp.model  # the unwrapped model, whose stacks stages grow
        last = checkpoint.latest(ckpt_dir)
        if last is not None:
            state = checkpoint.load(last)
            _unwrap(acc, model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if "scaler" in state and acc.scaler is not None:
                acc.scaler.load_state_dict(state["scaler"])
            checkpoint.set_rng_state(state["rng"])
            epoch, start_batch, step, best = state["epoch"], state["batch_in_epoch"], state["step"], state["best_cer"]
            best_score = state.get("best_score", best)  # checkpoints from before select_by ranked by CER
            counters = dict(state.get("counters", counters))
            core.encoder.num_active = counters.get("encoder_active", core.encoder.num_active)
            core.decoder.stack.num_active = counters.get("decoder_active", core.decoder.stack.num_active)
            log(f"resumed from {last} (epoch {epoch + 1}, batch {start_batch}, step {step})")

        max_steps = cfg["max_steps"]
        epochs = sum(st.epochs or 1 for st in stages)  # for display; stages decide the end
        metrics_path = run_dir / "metrics.jsonl"
        old_handlers = self.catch_signals()
        history: list[dict[str, Any]] = []

        def write_metrics(record: dict[str, Any]) -> None:
            if acc.is_main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if cfg["trackers"]:
                scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}
                acc.log(scalars, step=record["step"])

        def save(epoch_: int, batch_: int) -> None:
            counters["encoder_active"] = core.encoder.num_active
            counters["decoder_active"] = core.decoder.stack.num_active
            if acc.is_main_process:
                state = self._state(acc, model, optimizer, schedule, epoch_, batch_, step, best, best_score, recipe_text,
                                    counters)
                checkpoint.save_atomic(state, ckpt_dir / f"ckpt-{step:08d}.pt")
                checkpoint.prune(ckpt_dir, cfg["keep_last"])
            acc.wait_for_everyone()

        try:
            augment_on = [True]
            current_stage = None
            while counters["stage"] < len(stages) and (max_steps is None or step < max_steps):
                stage = stages[counters["stage"]]
                frozen_names = set(exp.transferred) if exp.recipe.init and epoch < exp.recipe.init.freeze_epochs else set()
                info = apply_stage(core, stage, loss_fn, augment_on, frozen_names)
                if exp.transferred and epoch == exp.recipe.init.freeze_epochs and start_batch == 0:
                    log(f"init: epoch {epoch + 1}: the {len(exp.transferred)} transferred tensors are unfrozen, at "
                        f"{exp.recipe.init.lr_scale} x the learning rate; {info['frozen_parameters']:,} parameters frozen")
                    write_metrics({"step": step, "epoch": epoch + 1, "init_unfrozen": len(exp.transferred)})
                if current_stage != counters["stage"]:
                    current_stage = counters["stage"]
                    train_loader, sampler = exp.loader("train", train=True, seed=seed, fraction=stage.data_fraction,
                                                       max_seconds=stage.max_seconds, **shard)
                    if len(stages) > 1 or frozen_names:
                        log(f"stage {current_stage + 1}/{len(stages)} ({stage.name or 'unnamed'}) from epoch "
                            f"{epoch + 1}, step {step}: {info['encoder_layers']} encoder / {info['decoder_layers']} "
                            f"decoder layers active, new {info['new_encoder_layers']}/{info['new_decoder_layers']}, "
                            f"{info['frozen_parameters']:,} parameters frozen, {len(sampler.lengths)} utterances")
                        write_metrics({"step": step, "epoch": epoch + 1, "stage_start": current_stage + 1, **{
                            k: v for k, v in info.items() if not isinstance(v, list)}})
                sampler.resume_at(epoch, start_batch)
                model.train()
                t0, frames, losses_sum, n_batches = time.time(), 0, 0.0, 0
                bar = _progress(len(sampler), f"epoch {epoch + 1}/{epochs}", progress and acc.is_main_process)
                batch_index = start_batch
                for batch in train_loader:
                    batch = batch.to(acc.device, non_blocking=True)  # from pinned memory on a GPU
                    batch_index += 1
                    with acc.accumulate(model):
                        feats = batch.feats
                        for aug in exp.augment if augment_on[0] else ():
                            feats = aug(feats, batch.feat_lens)
                        out = model(feats, batch.feat_lens, batch.tokens_in)
                        parts = loss_fn(out, batch.tokens_out, batch.token_lens)
                        loss = parts["loss"]
                        # every process must skip together, or DDP would wait for the one that did not
                        finite = _finite_everywhere(acc, loss)
                        if finite:
                            acc.backward(loss)
                        grad_norm = float("nan")
                        if acc.sync_gradients:
                            params = [p for p in model.parameters() if p.requires_grad]
                            grad_norm = self.update(acc, params, optimizer, finite, counters, step, log)
                    frames += int(batch.feat_lens.sum())
                    if finite:
                        losses_sum += float(loss.detach())
                        n_batches += 1
                    if not acc.sync_gradients:
                        continue
                    step += 1
                    schedule.step()
                    lr = optimizer.param_groups[0]["lr"]
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}")
                    if step % cfg["log_every_steps"] == 0:
                        # averaged over processes: the numbers describe the global batch
                        mean = {k: _mean(acc, v) for k, v in parts.items()}
                        rec = {"step": step, "epoch": epoch + 1, "loss": round(mean["loss"], 5), "lr": lr,
                               "grad_norm": round(grad_norm, 4) if math.isfinite(grad_norm) else None,
                               "frames_per_s": round(_sum(acc, frames) / max(time.time() - t0, 1e-9), 1)}
                        rec.update({k: round(v, 5) for k, v in mean.items() if k != "loss"})
                        write_metrics(rec)
                        if bar is None and acc.is_main_process:
                            log(" ".join(f"{k}={_number(v)}" for k, v in rec.items()))
                    every = cfg["checkpoint_every_steps"]
                    if every and step % every == 0:
                        save(epoch, batch_index)
                    if self.stop_requested():
                        save(epoch, batch_index)
                        raise TrainingInterrupted(self.stop_requested())
                    if max_steps is not None and step >= max_steps:
                        break
                    if stage.steps is not None and step - counters["stage_step0"] >= stage.steps:
                        break
                if bar is not None:
                    bar.close()
                stage_over = (stage.steps is not None and step - counters["stage_step0"] >= stage.steps) or (
                    stage.epochs is not None and epoch + 1 - counters["stage_epoch0"] >= stage.epochs)
                epoch_done = stage_over or max_steps is None or step < max_steps or batch_index >= len(sampler.batches())
                elapsed = time.time() - t0
                record: dict[str, Any] = {
                    "epoch": epoch + 1, "step": step,
                    "train_loss": round(_sum(acc, losses_sum) / max(_sum(acc, n_batches), 1), 5),
                    "frames_per_s": round(_sum(acc, frames) / max(elapsed, 1e-9), 1), "seconds": round(elapsed, 2),
                }
                if dev_loader is not None and ((epoch + 1) % cfg["validate_every_epochs"] == 0 or epoch + 1 == epochs):
                    record.update(self.validate(_unwrap(acc, model), dev_loader, loss_fn, exp, acc, log))
                    if acc.is_main_process:
                        png = self.plot_attention(_unwrap(acc, model), dev_loader, exp, acc.device, epoch + 1)
                        _log_image(acc, cfg["trackers"], "attention", png, step)
                    schedule.on_validation(record["dev_cer"])
                    score = selection_score(record, cfg["select_by"])
                    if acc.is_main_process:
                        weights = {"model": _unwrap(acc, model).state_dict(), "step": step,
                                   "dev_cer": record["dev_cer"], "dev_acc": record["dev_acc"], "score": score}
                        if score < best_score:
                            checkpoint.save_atomic(weights, run_dir / "best.pt")
                        checkpoint.keep_best(weights, run_dir / "best", cfg["keep_best"])
                    best = min(best, record["dev_cer"])
                    best_score = min(best_score, score)
                write_metrics(record)
                history.append(record)
                if acc.is_main_process:
                    log(_epoch_line(record))
                if epoch_done:
                    epoch, start_batch = epoch + 1, 0
                else:
                    start_batch = batch_index
                if stage_over and epoch_done:
                    counters.update(stage=counters["stage"] + 1, stage_epoch0=epoch, stage_step0=step)
                save(epoch, start_batch)
        finally:
            self.release_signals(old_handlers)
        if acc.is_main_process:
            if not (run_dir / "best.pt").exists():
                checkpoint.save_atomic({"model": _unwrap(acc, model).state_dict(), "step": step}, run_dir / "best.pt")
            kept = [p for _, p in checkpoint.checkpoints(ckpt_dir)]
            if cfg["average"] == "best" and (run_dir / "best").is_dir():
                # ESPnet's valid.acc.ave: the keep_best best validations, however far apart
                kept = checkpoint.best_checkpoints(run_dir / "best", cfg["keep_best"]) or kept
            if kept:
                # the mean of the last checkpoints: usually a few tenths of a point of WER better
                checkpoint.save_atomic({"model": checkpoint.average_state_dicts(kept), "step": step,
                                        "averaged": [p.name for p in kept]}, run_dir / "averaged.pt")
        if cfg["trackers"]:
            acc.end_training()
        acc.wait_for_everyone()
        return {"step": step, "epochs": epoch, "precision": self.mixed_precision, "best_dev_cer": None if math.isinf(best) else best,
                "nonfinite_skips": counters["nonfinite_skips"], "history": history}

    @torch.no_grad()
    def validate(self, model, loader, loss_fn, exp, acc, log: Log) -> dict[str, float]:
        """Dev loss, teacher-forced token accuracy (ESPnet's validation "acc") and greedy
        CER/WER; each process scores its shard, the numbers are global."""
        model.eval()
        total, n, correct, tokens = 0.0, 0, 0, 0
        for batch in loader:
            b = batch.to(acc.device)
            with precision.autocast(self.mixed_precision, acc.device):
                out = model(b.feats, b.feat_lens, b.tokens_in)
            total += float(loss_fn(out, b.tokens_out, b.token_lens)["loss"]) * len(b.ids)
            n += len(b.ids)
            hit, counted = token_accuracy_counts(out["logits"], b.tokens_out)
            correct, tokens = correct + hit, tokens + counted
        total, n = _sum(acc, total), _sum(acc, n)
        correct, tokens = _sum(acc, correct), _sum(acc, tokens)
        # the recipe's length limits keep an untrained model from rambling to the cap
        limits = {k: v for k, v in exp.recipe.decode.args.items() if k in ("max_len_ratio", "max_len")}
        records = decode_batches(model, loader, lambda m, e, l: greedy_search(m, e, l, **limits), exp.tokenizer,
                                 acc.device, self.mixed_precision)
        records = gather_records(records)
        rates = score(records) or {"cer": math.nan, "wer": math.nan}
        samples = records[: self.cfg["sample_transcripts"]]
        lines = [f"  {r['id']}\n    REF: {r['ref']}\n    HYP: {r['hyp']}" for r in samples]
        if lines and acc.is_main_process:
            log("sample transcripts (dev):\n" + "\n".join(lines))
            with open(exp.run_dir / "samples.txt", "a") as f:
                f.write("\n".join(lines) + "\n\n")
        model.train()
        return {"dev_loss": round(total / max(n, 1), 5), "dev_acc": round(correct / max(tokens, 1), 5),
                "dev_cer": rates["cer"], "dev_wer": rates["wer"]}


    @torch.no_grad()
    def plot_attention(self, model, loader, exp, device, epoch: int) -> Path | None:
        """Heatmaps for the first dev utterance, teacher-forced on its reference."""
        from speechforge import plots

        batch = next(iter(loader)).to(device)
        if batch.tokens_in is None:
            return None
        model.eval()
        n = int(batch.token_lens[0]) + 1
        out = model(batch.feats[:1], batch.feat_lens[:1], batch.tokens_in[:1, :n], need_weights=True)
        last = out["attention"][-1]
        t = int(out["enc_lens"][0])
        cross = last["cross"][0].mean(0)[:, :t].float().cpu().numpy()
        self_attn = last["self"][0].mean(0).float().cpu().numpy()
        pieces = ["<sos>"] + [exp.tokenizer.decode([i]) or "?" for i in batch.tokens_in[0, 1:n].tolist()]
        path = exp.run_dir / "plots" / f"attention-epoch{epoch:03d}.png"
        plots.attention_maps(cross, self_attn, pieces, path, f"{batch.ids[0]} - epoch {epoch}")
        latest = exp.run_dir / "plots" / "attention-latest.png"
        latest.write_bytes(path.read_bytes())
        model.train()
        return path


def token_accuracy_counts(logits: torch.Tensor, tokens_out: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) next-token predictions of a teacher-forced (B, U, V) decoder output
    against its (B, U) targets, <eos> included and padding not (ESPnet's th_accuracy)."""
    from speechforge.data.tokenizers import PAD

    counted = tokens_out != PAD
    return int(((logits.argmax(-1) == tokens_out) & counted).sum()), int(counted.sum())


def selection_score(record: dict[str, float], select_by: str) -> float:
    """A validation's rank for trainer.select_by, lower is better: dev CER, or minus the
    token accuracy (ESPnet's best_model_criterion [valid, acc, max])."""
    value = record[select_by]
    if value != value:  # NaN: a dev split without references ranks last
        return math.inf
    return -value if select_by == "dev_acc" else value


def _finite_everywhere(acc, loss: torch.Tensor) -> bool:
    bad = torch.tensor(0.0 if bool(torch.isfinite(loss.detach())) else 1.0, device=acc.device)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, "sum")
    return float(bad) == 0.0


def _mean(acc, value: torch.Tensor) -> float:
    v = value.detach().float().reshape(())
    return float(acc.reduce(v, "mean")) if acc.num_processes > 1 else float(v)


def _sum(acc, value: float) -> float:
    if acc.num_processes == 1:
        return value
    return float(acc.reduce(torch.tensor(float(value), device=acc.device), "sum"))


def _log_image(acc, trackers, tag: str, png: Path | None, step: int) -> None:
    if png is None or "tensorboard" not in trackers or not acc.is_main_process:
        return
    from speechforge import plots

    acc.get_tracker("tensorboard", unwrap=True).add_image(tag, plots.to_image(png), step, dataformats="HWC")


def _flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """TensorBoard's hparams take flat scalars only."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_config(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
    return out


def _unwrap(acc, model):
    # without the DDP and torch.compile wrappers: state dicts keep the model's own names
    return acc.unwrap_model(model, keep_torch_compile=False)


def _trackers_available(value: list[str]) -> list[str]:
    import importlib.util

    for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if name in value and importlib.util.find_spec(module) is None:
            raise ValueError(f"{name} is not installed (pip install {module}), or leave it out of trainer.trackers")
    return value


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _number(v: Any) -> str:
    """A float as a person reads it in a log line: 3.03e-04, not 0.00030300000000000005."""
    if not isinstance(v, float):
        return str(v)
    if v != 0 and abs(v) < 1e-2:
        return f"{v:.2e}"
    return f"{v:.0f}" if abs(v) >= 1e3 else f"{v:.4g}"


def _epoch_line(r: dict[str, Any]) -> str:
    parts = [f"epoch {r['epoch']}", f"step {r['step']}", f"train_loss {r['train_loss']:.4f}"]
    if "dev_cer" in r:
        parts += [f"dev_loss {r['dev_loss']:.4f}", f"dev_acc {r['dev_acc']:.4f}", f"dev_cer {r['dev_cer']:.4f}",
                  f"dev_wer {r['dev_wer']:.4f}"]
    parts += [f"{r['frames_per_s']:.0f} frames/s", f"{r['seconds']:.1f}s"]
    return " | ".join(parts)


@registry.trainers.register("accelerate")
def accelerate(
    epochs: Annotated[int, Field(ge=1)] = 50,
    max_steps: Annotated[int, Field(ge=1)] | None = None,
    grad_accum_steps: Annotated[int, Field(ge=1)] = 1,
    grad_clip: Annotated[float, Field(gt=0.0)] | None = 5.0,
    mixed_precision: Precision = "auto",
    cpu: bool = False,
    compile: bool = False,
    deterministic: bool = False,
    keep_freed_memory: bool = True,
    log_every_steps: Annotated[int, Field(ge=1)] = 10,
    checkpoint_every_steps: Annotated[int, Field(ge=1)] | None = None,
    keep_last: Annotated[int, Field(ge=1)] = 3,
    keep_best: Annotated[int, Field(ge=1)] = 3,
    select_by: Literal["dev_cer", "dev_acc"] = "dev_cer",
    average: Literal["last", "best"] = "last",
    decode_weights: Literal["best", "averaged", "last"] = "best",
    validate_every_epochs: Annotated[int, Field(ge=1)] = 1,
    max_nonfinite: Annotated[int, Field(ge=1)] = 10,
    sample_transcripts: Annotated[int, Field(ge=0)] = 3,
    trackers: Annotated[list[Literal["tensorboard", "wandb"]], AfterValidator(_trackers_available)] = ["tensorboard"],
) -> AccelerateTrainer:
    """Hugging Face Accelerate loop: mixed precision, accumulation, checkpoints, resume.

    best.pt and the keep_best checkpoints in best/ are chosen by select_by (dev CER, or the
    teacher-forced dev token accuracy as ESPnet does); averaged.pt is the mean of the keep_last
    last checkpoints or of the keep_best best ones (average); the run's closing decode uses
    decode_weights. keep_freed_memory keeps the memory each step frees in the process for the
    next step (speechforge.allocator: glibc only; about a tenth more resident memory, and on a
    CPU fewer page faults and faster steps); false leaves malloc as it is."""
    return AccelerateTrainer(**{k: v for k, v in locals().items()})

