"""Length-aware batching: bounds, padding, seeded shuffles, and multi-worker loading."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from speechforge.data.batching import BucketBatchSampler, UtteranceDataset, collate, make_batches, padding_fraction
from speechforge.data.corpus import scan_feature_split
from speechforge.data.normalization import Normalizer
from speechforge.data.tokenizers import CharTokenizer

_rng = random.Random(0)
LENGTHS = [_rng.randint(50, 1500) for _ in range(300)]


def test_every_batch_stays_within_max_frames_and_every_utterance_is_used_once():
    for bucketed in (True, False):
        batches = make_batches(LENGTHS, 4000, None, bucketed, random.Random(1))
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        assert all(max(LENGTHS[i] for i in b) * len(b) <= 4000 for b in batches)


def test_padding_fraction_counts_the_zeros_collate_adds():
    batches = make_batches(LENGTHS, 6000, None, True, random.Random(2))[:5]
    pad, real = 0, 0
    for b in batches:
        batch = collate([{"id": str(i), "feats": torch.ones(LENGTHS[i], 2), "text": None} for i in b])
        pad += int((batch.feats == 0).sum()) // 2
        real += int(batch.feat_lens.sum())
    assert padding_fraction(LENGTHS, batches) == pytest.approx(pad / (pad + real))


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
