"""Where speechforge must compute what ESPnet computes for the LibriSpeech-100 recipes: the
warm-up schedule, the per-utterance loss, validation token accuracy and the choice of the
checkpoints to average. Each is checked against ESPnet's formula written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from speechforge.data.tokenizers import EOS, PAD
from speechforge.recipe import validate_component
from speechforge.train import checkpoint
from speechforge.train.trainer import selection_score, token_accuracy_counts


def espnet_warmup_lr(lr: float, warmup: int, step: int) -> float:
    # espnet2/schedulers/warmup_lr.py WarmupLR.get_lr, step_num = last_epoch + 1
    return lr * warmup**0.5 * min(step**-0.5, step * warmup**-1.5)


def test_noam_schedule_is_espnets_warmuplr_step_for_step():
    model = torch.nn.Linear(2, 2)
    optimizer = validate_component("optimizers", {"name": "adam", "lr": 0.002}, "optimizer").build(model=model)
    schedule = validate_component("schedulers", {"name": "noam", "warmup_steps": 15000}, "scheduler").build(
        total_steps=100000).attach(optimizer)
    for step in range(1, 40001):
        if step in (1, 2, 7499, 15000, 15001, 40000):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(espnet_warmup_lr(0.002, 15000, step), rel=1e-12)
        schedule.step()


def test_loss_per_utterance_is_the_token_sums_over_the_batch_size():
    # ESPnet's length_normalized_loss: false divides the summed CE and CTC by the batch size
    torch.manual_seed(0)
    b, u, v, t = 3, 5, 11, 20
    tokens_out = torch.randint(5, v, (b, u))
    token_lens = torch.tensor([4, 3, 2])
    for i, n in enumerate(token_lens.tolist()):
        tokens_out[i, n], tokens_out[i, n + 1:] = EOS, PAD
    out = {"logits": torch.randn(b, u, v), "ctc_log_probs": torch.randn(b, t, v).log_softmax(-1),
           "enc_lens": torch.tensor([20, 18, 15])}
    per_token = validate_component("losses", {"name": "ce_ctc", "ctc_weight": 0.3}, "loss").build()
    per_utt = validate_component("losses", {"name": "ce_ctc", "ctc_weight": 0.3, "per": "utterance"}, "loss").build()
    a, c = per_token(out, tokens_out, token_lens), per_utt(out, tokens_out, token_lens)
    counted = int((tokens_out != PAD).sum())  # targets and <eos>
    assert float(c["ce"]) == pytest.approx(float(a["ce"]) * counted / b)
    assert float(c["ctc"]) == pytest.approx(float(a["ctc"]) * int(token_lens.sum()) / b)
    ce_sum = F.cross_entropy(out["logits"].reshape(-1, v), tokens_out.reshape(-1), ignore_index=PAD,
                             label_smoothing=0.1, reduction="sum")
    assert float(c["ce"]) == pytest.approx(float(ce_sum) / b)


def test_token_accuracy_counts_eos_and_skips_padding():
    tokens_out = torch.tensor([[7, 8, EOS], [9, EOS, PAD]])
    logits = torch.full((2, 3, 12), -1.0)
    for (i, j), k in {(0, 0): 7, (0, 1): 5, (0, 2): EOS, (1, 0): 9, (1, 1): 6, (1, 2): PAD}.items():
        logits[i, j, k] = 1.0
    assert token_accuracy_counts(logits, tokens_out) == (3, 5)  # the padding's "hit" is not one


def test_checkpoints_kept_by_accuracy_are_the_most_accurate_not_the_lowest_cer(tmp_path):
    weights = lambda step, cer, acc: {"model": {"w": torch.tensor([float(step)])}, "step": step,  # noqa: E731
                                      "dev_cer": cer, "dev_acc": acc, "score": selection_score(
                                          {"dev_cer": cer, "dev_acc": acc}, "dev_acc")}
    for step, cer, acc in [(1, 0.30, 0.70), (2, 0.20, 0.80), (3, 0.25, 0.90), (4, 0.10, 0.60), (5, 0.22, 0.85)]:
        checkpoint.keep_best(weights(step, cer, acc), tmp_path, keep=3)
    best = checkpoint.best_checkpoints(tmp_path, 3)
    assert [checkpoint.load(p)["step"] for p in best] == [3, 5, 2]  # by accuracy, highest first
    assert checkpoint.average_state_dicts(best)["w"].item() == pytest.approx((3 + 5 + 2) / 3)


def test_a_validation_without_references_ranks_last():
    assert selection_score({"dev_cer": math.nan, "dev_acc": math.nan}, "dev_acc") == math.inf
    assert selection_score({"dev_cer": 0.1, "dev_acc": 0.9}, "dev_cer") == 0.1
