"""Length-aware batching: bounds, padding, seeded shuffles, and multi-worker loading."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from speechforge.data.batching import (FRAME_STEP, TOKEN_STEP, BucketBatchSampler, UtteranceDataset, collate, make_batches,
                                       pad_steps, padded_length, padding_fraction)
from speechforge.data.corpus import scan_feature_split
from speechforge.data.normalization import Normalizer
from speechforge.data.tokenizers import CharTokenizer

_rng = random.Random(0)
LENGTHS = [_rng.randint(50, 1500) for _ in range(300)]


def test_every_batch_stays_within_max_frames_and_every_utterance_is_used_once():
    for bucketed in (True, False):
        for step in (1, FRAME_STEP):
            batches = make_batches(LENGTHS, 4000, None, bucketed, random.Random(1), step=step)
            assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
            # the bound counts the length collate pads to
            assert all(padded_length(max(LENGTHS[i] for i in b), step) * len(b) <= 4000 for b in batches)


def test_only_bf16_and_fp16_runs_pad_in_steps():
    assert pad_steps("bf16") == pad_steps("fp16") == (FRAME_STEP, TOKEN_STEP)
    assert pad_steps("no") == (1, 1)  # fp32 kernels are not built per shape: padding would only cost


def test_collate_pads_frames_and_tokens_in_steps_so_batch_shapes_repeat():
    items = [{"id": str(n), "feats": torch.ones(n, 2), "text": "x", "tokens": list(range(5, 5 + u))}
             for n, u in ((70, 3), (97, 20), (33, 1))]
    tight = collate(items)
    assert tight.feats.shape == (3, 97, 2) and tight.tokens_in.shape == (3, 21)  # the longest, no further
    batch = collate(items, FRAME_STEP, TOKEN_STEP)
    assert batch.feats.shape == (3, 128, 2) and batch.feat_lens.tolist() == [70, 97, 33]
    assert int(batch.feats[1, 97:].abs().sum()) == 0 and int(batch.feats[1, :97].sum()) == 97 * 2
    assert batch.tokens_in.shape == (3, 32) and batch.tokens_in.shape[1] % TOKEN_STEP == 0
    assert batch.tokens_out[1, :21].tolist() == list(range(5, 25)) + [3]  # tokens, <eos>
    assert set(batch.tokens_out[1, 21:].tolist()) == {0}  # PAD
    # batches of different lengths within a step share one shape
    assert (collate(items[:1], FRAME_STEP).feats.shape[1]
            == collate([{**items[0], "feats": torch.ones(90, 2)}], FRAME_STEP).feats.shape[1])


def test_padding_fraction_counts_the_zeros_collate_adds():
    for step in (1, FRAME_STEP):
        batches = make_batches(LENGTHS, 6000, None, True, random.Random(2), step=step)[:5]
        pad, real = 0, 0
        for b in batches:
            batch = collate([{"id": str(i), "feats": torch.ones(LENGTHS[i], 2), "text": None} for i in b], step)
            pad += int((batch.feats == 0).sum()) // 2
            real += int(batch.feat_lens.sum())
        assert padding_fraction(LENGTHS, batches, step) == pytest.approx(pad / (pad + real))


def test_bucketing_pads_far_less_than_fixed_size_batches():
    fixed = make_batches(LENGTHS, None, 16, bucketed=False, rng=random.Random(0))
    bucketed = make_batches(LENGTHS, 16 * 800, None, bucketed=True, rng=random.Random(0))
    assert padding_fraction(LENGTHS, bucketed) < 0.1 < 0.3 < padding_fraction(LENGTHS, fixed)


def test_shuffles_come_from_the_seed_and_the_epoch():
    def order(seed: int, epoch: int) -> list[list[int]]:
        sampler = BucketBatchSampler(LENGTHS, 4000, None, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(map(sorted, order(0, 0))) != sorted(map(sorted, order(0, 1)))  # new batches, not only a new order


@pytest.fixture
def feature_split(tmp_path: Path):
    rng = np.random.default_rng(0)
    for sub in ("fbank", "text"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    for i in range(24):
        np.save(tmp_path / "train" / "fbank" / f"u{i:02d}.npy", rng.standard_normal((80, int(rng.integers(20, 200)))).astype(np.float32))
        np.save(tmp_path / "train" / "text" / f"u{i:02d}.npy", np.array(list(f"UTTERANCE {i}")))
    return scan_feature_split(tmp_path / "train", 80, "stop", require_text=True)


def test_workers_load_the_same_batches_as_the_main_process(feature_split):
    tokenizer = CharTokenizer()
    tokenizer.fit([u.text for u in feature_split.utterances])
    dataset = UtteranceDataset(feature_split.utterances, Normalizer(), tokenizer)
    sampler = BucketBatchSampler([u.num_frames for u in feature_split.utterances], 600, None, seed=5)

    def epoch(workers: int, number: int) -> list:
        sampler.set_epoch(number)
        return list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers))

    for number in (0, 1):
        main, workers = epoch(0, number), epoch(2, number)
        assert [b.ids for b in main] == [b.ids for b in workers]
        for a, b in zip(main, workers):
            assert torch.equal(a.feats, b.feats) and torch.equal(a.tokens_out, b.tokens_out)
    assert [b.ids for b in epoch(2, 0)] != [b.ids for b in epoch(2, 1)]



def test_padding_in_steps_changes_neither_the_loss_nor_the_gradients():
    from speechforge.recipe import validate_component

    torch.manual_seed(0)
    model = validate_component("models", {"name": "transformer_ctc", "d_model": 32, "dropout": 0.0,
                                          "embedding": {"name": "conv2d", "channels": 8},
                                          "encoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0},
                                          "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0}},
                               "model").build(vocab_size=20, input_dim=16)
    loss_fn = validate_component("losses", {"name": "ce_ctc"}, "loss").build()
    g = torch.Generator().manual_seed(0)
    items = [{"id": str(n), "feats": torch.randn(n, 16, generator=g), "text": "x",
              "tokens": torch.randint(5, 20, (u,), generator=g).tolist()} for n, u in ((61, 9), (90, 13))]

    def loss_and_grads(*steps):
        batch = collate(items, *steps)
        model.zero_grad()
        loss = loss_fn(model(batch.feats, batch.feat_lens, batch.tokens_in), batch.tokens_out, batch.token_lens)["loss"]
        loss.backward()
        # a key bias gets no gradient in exact arithmetic (softmax ignores a shift): rounding only
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if not n.endswith("k_proj.bias")}
        return batch.feats.shape[1], loss.detach(), grads

    width, loss, grads = loss_and_grads(FRAME_STEP, TOKEN_STEP)
    tight_width, tight_loss, tight_grads = loss_and_grads()
    assert (width, tight_width) == (96, 90)
    torch.testing.assert_close(loss, tight_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, tight_grads[name], atol=1e-6, rtol=1e-4, msg=name)
