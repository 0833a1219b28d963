"""The HW4P2 feature layout: reading the real sample, and each kind of bad file by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from speechforge.data.corpus import scan_feature_split
from speechforge.data.errors import DataError
from speechforge.data.normalization import GlobalMVN


def test_reads_the_shared_sample_with_transcripts(hw4p2_root):
    split = scan_feature_split(hw4p2_root / "train-clean-100", 80, "stop", require_text=True)
    assert len(split.utterances) == 28
    assert all(u.text and u.text == u.text.upper() for u in split.utterances)
    assert all(u.num_frames > 100 for u in split.utterances)


def test_test_split_without_text_is_decodable(hw4p2_root):
    split = scan_feature_split(hw4p2_root / "test-clean", 80, "stop", require_text=False)
    assert len(split.utterances) == 2 and not split.has_text


def test_global_statistics_come_from_the_scan(hw4p2_root):
    mvn = GlobalMVN()
    split = scan_feature_split(hw4p2_root / "dev-clean", 80, "stop", require_text=True, visit=mvn.update)
    feats = np.concatenate([np.load(u.feats).T for u in split.utterances])
    np.testing.assert_allclose(mvn(feats).mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(mvn(feats).std(0), 1, atol=1e-2)


def make_split(root: Path, n: int = 3) -> Path:
    for i in range(n):
        (root / "fbank").mkdir(parents=True, exist_ok=True)
        (root / "text").mkdir(parents=True, exist_ok=True)
        np.save(root / "fbank" / f"u{i}.npy", np.random.randn(80, 50 + i).astype(np.float32))
        np.save(root / "text" / f"u{i}.npy", np.array(list("HELLO WORLD")))
    return root


BAD_FILES = {
    "transposed": (lambda d: np.save(d / "fbank/u1.npy", np.zeros((50, 80), np.float32)), "fbank/u1.npy", "looks transposed"),
    "nan": (lambda d: np.save(d / "fbank/u1.npy", np.full((80, 9), np.nan, np.float32)), "fbank/u1.npy", "NaN or infinite"),
    "truncated": (lambda d: (d / "fbank/u1.npy").write_bytes((d / "fbank/u1.npy").read_bytes()[:100]), "fbank/u1.npy", "cannot read features"),
    "integer": (lambda d: np.save(d / "fbank/u1.npy", np.zeros((80, 9), np.int16)), "fbank/u1.npy", "floating-point"),
    "empty_text": (lambda d: np.save(d / "text/u1.npy", np.array([" "])), "text/u1.npy", "transcript is empty"),
    "no_text": (lambda d: (d / "text/u1.npy").unlink(), "fbank/u1.npy", "features without a transcript"),
    "no_feats": (lambda d: (d / "fbank/u1.npy").unlink(), "text/u1.npy", "transcript without features"),
    "no_frames": (lambda d: np.save(d / "fbank/u1.npy", np.zeros((80, 0), np.float32)), "fbank/u1.npy", "has no frames"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_reported_by_name(tmp_path, kind):
    damage, where, reason = BAD_FILES[kind]
    split = make_split(tmp_path / "train")
    damage(split)
    with pytest.raises(DataError) as e:
        scan_feature_split(split, 80, "stop", require_text=True)
    assert str(split / where) in str(e.value) and reason in str(e.value)
    skipped = scan_feature_split(split, 80, "skip", require_text=True)
    assert len(skipped.utterances) == 2 and len(skipped.skipped) == 1
    assert reason in skipped.skipped[0]
