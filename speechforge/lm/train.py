"""Training the language model: the loss and the loop, on Hugging Face Accelerate.

The loop has the ASR trainer's shape (``speechforge.train.trainer``): build,
``prepare`` once, ``accumulate`` around the step, ``backward``, ``clip_grad_norm_``;
checkpoints in ``run_dir/checkpoints`` that resume at the exact batch, non-finite
updates skipped, a clean stop on SIGTERM/SIGINT. What differs is the validation:
perplexity instead of error rates, and ``best.pt`` is the lowest validation perplexity.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from speechforge import registry
from speechforge.data.batching import pad_steps
from speechforge.data.tokenizers import PAD
from speechforge.lm.metrics import evaluate
from speechforge.precision import Precision
from speechforge.train import checkpoint
from speechforge.train.trainer import TrainingInterrupted, TrainingLoop

Log = Callable[[str], None]


class LabelSmoothedCE:
    """Cross-entropy per predicted token (padding ignored), with label smoothing."""

    def __init__(self, label_smoothing: float):
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, tokens_out: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        num_tokens = (tokens_out != PAD).sum().clamp(min=1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens_out.reshape(-1), ignore_index=PAD,
                               label_smoothing=self.label_smoothing, reduction="sum") / num_tokens
        return {"loss": loss}


@registry.losses.register("lm_ce")
def lm_ce(label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0) -> LabelSmoothedCE:
    """Next-token cross-entropy of a language model, with optional label smoothing."""
    return LabelSmoothedCE(label_smoothing)


def steps_per_epoch(num_batches: int, grad_accum_steps: int) -> int:
    return math.ceil(num_batches / grad_accum_steps)


class LMTrainer(TrainingLoop):
    def fit(self, model, corpus, tokenizer, loss_fn, optimizer, schedule, run_dir: Path, seed: int = 0,
            log: Log = print) -> dict[str, Any]:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        ckpt_dir = run_dir / "checkpoints"
        set_seed(seed)
        acc = Accelerator(mixed_precision=self.resolve_precision(log), gradient_accumulation_steps=cfg["grad_accum_steps"],
                          cpu=cfg["cpu"])
        step = pad_steps(self.mixed_precision)[1]
        train_loader, sampler = corpus.loader("train", tokenizer, train=True, seed=seed, step=step)
        val_loader = corpus.loader("val", tokenizer, step=step)[0] if corpus.has("val") else None
        model, optimizer, train_loader = acc.prepare(model, optimizer, train_loader)
        recipe_text = (run_dir / "recipe.toml").read_text() if (run_dir / "recipe.toml").exists() else ""

        epoch, start_batch, step, best = 0, 0, 0, math.inf
        counters = {"nonfinite_skips": 0}
        last = checkpoint.latest(ckpt_dir)
        if last is not None:
            state = checkpoint.load(last)
            acc.unwrap_model(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            checkpoint.set_rng_state(state["rng"])
            epoch, start_batch = state["epoch"], state["batch_in_epoch"]
            step, best = state["step"], state["best_val_ppl"]
            counters = dict(state.get("counters", counters))
            log(f"resumed from {last} (epoch {epoch + 1}, batch {start_batch}, step {step})")

        epochs, max_steps = cfg["epochs"], cfg["max_steps"]
        metrics_path = run_dir / "metrics.jsonl"
        old_handlers = self.catch_signals()
        history: list[dict[str, Any]] = []

        def write_metrics(record: dict[str, Any]) -> None:
            if acc.is_main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")

        def save(epoch_: int, batch_: int) -> None:
            if acc.is_main_process:
                state = {
                    "model": acc.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "rng": checkpoint.rng_state(), "epoch": epoch_,
                    "batch_in_epoch": batch_, "step": step, "best_val_ppl": best, "recipe": recipe_text,
                    "counters": counters,
                }
                checkpoint.save_atomic(state, ckpt_dir / f"ckpt-{step:08d}.pt")
                checkpoint.prune(ckpt_dir, cfg["keep_last"])
            acc.wait_for_everyone()

        try:
            while epoch < epochs and (max_steps is None or step < max_steps):
                sampler.resume_at(epoch, start_batch)
                train_loader.set_epoch(epoch)
                model.train()
                t0, tokens, losses_sum, n_batches = time.time(), 0, 0.0, 0
                batch_index = start_batch
                for batch in train_loader:
                    batch_index += 1
                    with acc.accumulate(model):
                        loss = loss_fn(model(batch.tokens_in), batch.tokens_out)["loss"]
                        finite = bool(torch.isfinite(loss))
                        if finite:
                            acc.backward(loss)
                        grad_norm = float("nan")
                        if acc.sync_gradients:
                            grad_norm = self.update(acc, model.parameters(), optimizer, finite, counters, step, log)
                    tokens += int(batch.token_lens.sum())
                    if finite:
                        losses_sum += float(loss.detach())
                        n_batches += 1
                    if not acc.sync_gradients:
                        continue
                    step += 1
                    schedule.step()
                    if step % cfg["log_every_steps"] == 0:
                        write_metrics({
                            "step": step, "epoch": epoch + 1, "loss": round(float(loss.detach()), 5),
                            "lr": optimizer.param_groups[0]["lr"],
                            "grad_norm": round(grad_norm, 4) if math.isfinite(grad_norm) else None,
                            "tokens_per_s": round(tokens / max(time.time() - t0, 1e-9), 1),
                        })
                    every = cfg["checkpoint_every_steps"]
                    if every and step % every == 0:
                        save(epoch, batch_index)
                    if self.stop_requested():
                        save(epoch, batch_index)
                        raise TrainingInterrupted(self.stop_requested())
                    if max_steps is not None and step >= max_steps:
                        break
                epoch_done = max_steps is None or step < max_steps or batch_index >= len(sampler.batches())
                elapsed = time.time() - t0
                record: dict[str, Any] = {
                    "epoch": epoch + 1, "step": step, "train_loss": round(losses_sum / max(n_batches, 1), 5),
                    "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1), "seconds": round(elapsed, 2),
                }
                last_epoch = epoch + 1 == epochs or (max_steps is not None and step >= max_steps)
                if val_loader is not None and ((epoch + 1) % cfg["validate_every_epochs"] == 0 or last_epoch):
                    val = evaluate(acc.unwrap_model(model), val_loader, acc.device)
                    record.update({"val_nll": round(val["nll"], 5), "val_ppl": round(val["ppl"], 4),
                                   "val_char_ppl": round(val["char_ppl"], 4)})
                    schedule.on_validation(val["ppl"])
                    if val["ppl"] < best and acc.is_main_process:
                        best = val["ppl"]
                        checkpoint.save_atomic({"model": acc.unwrap_model(model).state_dict(), "step": step,
                                                "val_ppl": best}, run_dir / "best.pt")
                write_metrics(record)
                history.append(record)
                if acc.is_main_process:
                    log(_epoch_line(record))
                if epoch_done:
                    epoch, start_batch = epoch + 1, 0
                else:
                    start_batch = batch_index
                save(epoch, start_batch)
        finally:
            self.release_signals(old_handlers)
        if acc.is_main_process and not (run_dir / "best.pt").exists():
            # no validation split: the last weights are the best there are
            checkpoint.save_atomic({"model": acc.unwrap_model(model).state_dict(), "step": step}, run_dir / "best.pt")
        return {"step": step, "epochs": epoch, "best_val_ppl": None if math.isinf(best) else best,
                "nonfinite_skips": counters["nonfinite_skips"], "history": history}


def _epoch_line(r: dict[str, Any]) -> str:
    parts = [f"epoch {r['epoch']}", f"step {r['step']}", f"train_loss {r['train_loss']:.4f}"]
    if "val_ppl" in r:
        parts += [f"val_ppl {r['val_ppl']:.3f}", f"val_char_ppl {r['val_char_ppl']:.3f}"]
    parts += [f"{r['tokens_per_s']:.0f} tokens/s", f"{r['seconds']:.1f}s"]
    return " | ".join(parts)


@registry.trainers.register("lm")
def lm(
    epochs: Annotated[int, Field(ge=1)] = 20,
    max_steps: Annotated[int, Field(ge=1)] | None = None,
    grad_accum_steps: Annotated[int, Field(ge=1)] = 1,
    grad_clip: Annotated[float, Field(gt=0.0)] | None = 1.0,
    mixed_precision: Precision = "auto",
    cpu: bool = False,
    log_every_steps: Annotated[int, Field(ge=1)] = 10,
    checkpoint_every_steps: Annotated[int, Field(ge=1)] | None = None,
    keep_last: Annotated[int, Field(ge=1)] = 3,
    validate_every_epochs: Annotated[int, Field(ge=1)] = 1,
    max_nonfinite: Annotated[int, Field(ge=1)] = 10,
) -> LMTrainer:
    """Language-model loop on Accelerate: checkpoints, resume, best.pt by validation perplexity."""
    return LMTrainer(**{k: v for k, v in locals().items()})
