"""LM text sources: the HW4P1 .npy layout and plain text files; bad files by name."""

from __future__ import annotations

import numpy as np
import pytest

from speechforge.data.batching import TOKEN_STEP
from speechforge.data.errors import DataError
from speechforge.data.tokenizers import EOS, PAD, SOS, CharTokenizer
from speechforge.lm.data import hw4p1_text, text_lines

from lm_fixtures import HW4P1


@pytest.fixture
def hw4p1_root():
    if not (HW4P1 / "train").is_dir():
        pytest.skip(f"the shared HW4P1 text is absent (expected {HW4P1})")
    return HW4P1


def test_hw4p1_text_reads_every_split_of_the_shared_data(hw4p1_root):
    corpus = hw4p1_text(root=str(hw4p1_root))
    counts = {role: len(corpus.split(role).sentences) for role in ("train", "val", "test")}
    files = {role: len(list((hw4p1_root / role).glob("*.npy"))) for role in counts}
    assert counts == files and counts["train"] > 100
    first = corpus.split("train").sentences[0]
    assert first.id == "100-121669-0000" and first.text == "TOM THE PIPER'S SON"
    assert all(s.text and s.text == s.text.strip() for s in corpus.split("val").sentences)


def write_npy_layout(root, bad=None):
    for role, texts in (("train", ["HELLO WORLD", "A  CAT\n"]), ("val", ["HI"]), ("test", ["BYE"])):
        (root / role).mkdir(parents=True)
        for i, t in enumerate(texts):
            np.save(root / role / f"{role}-{i}.npy", np.array(t))
    if bad is not None:
        np.save(root / "train" / "broken.npy", bad)


def test_hw4p1_text_normalises_whitespace_and_case(tmp_path):
    write_npy_layout(tmp_path)
    corpus = hw4p1_text(root=str(tmp_path), case="lower")
    assert [s.text for s in corpus.split("train").sentences] == ["hello world", "a cat"]


@pytest.mark.parametrize("bad, reason", [
    (np.zeros(3, dtype=np.float32), "expected a unicode string, got an array of float32"),
    (np.array("   "), "empty transcript"),
])
def test_a_bad_npy_file_is_named_and_can_be_skipped(tmp_path, bad, reason):
    write_npy_layout(tmp_path, bad)
    with pytest.raises(DataError) as err:
        hw4p1_text(root=str(tmp_path)).split("train")
    assert str(tmp_path / "train" / "broken.npy") in str(err.value) and reason in str(err.value)
    assert 'data.on_bad_file = "skip"' in str(err.value)
    split = hw4p1_text(root=str(tmp_path), on_bad_file="skip").split("train")
    assert len(split.sentences) == 2 and split.skipped[0].startswith(str(tmp_path / "train" / "broken.npy"))


def test_an_unreadable_npy_file_is_named(tmp_path):
    write_npy_layout(tmp_path)
    (tmp_path / "val" / "torn.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="torn.npy: cannot read as .npy"):
        hw4p1_text(root=str(tmp_path)).split("val")


def test_text_lines_reads_one_sentence_a_line(tmp_path):
    (tmp_path / "train.txt").write_text("THE CAT\n\n  SAT   ON\tTHE MAT \n")
    (tmp_path / "val.txt").write_text("A DOG\n")
    corpus = text_lines(train=str(tmp_path / "train.txt"), val=str(tmp_path / "val.txt"))
    assert [(s.id, s.text) for s in corpus.split("train").sentences] == [
        ("train.txt:1", "THE CAT"), ("train.txt:3", "SAT ON THE MAT")]
    assert corpus.has("val") and not corpus.has("test")


def test_a_text_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"GOOD LINE\n\xff\xfe BAD\n")
    with pytest.raises(DataError) as err:
        text_lines(train=str(path)).split("train")
    assert str(err.value).startswith(f"{path}: not UTF-8 text")


def test_batches_are_sos_shifted_in_and_eos_ended_out(tmp_path):
    (tmp_path / "train.txt").write_text("AB\nCAB\n")
    tok = CharTokenizer()
    tok.fit(["ABC"])
    corpus = text_lines(train=str(tmp_path / "train.txt"), batch_size=2)
    a, b, c = tok.encode("ABC")
    (tight,) = list(corpus.loader("train", tok)[0])
    assert tight.tokens_in.tolist() == [[SOS, a, b, PAD], [SOS, c, a, b]]  # an fp32 run's: to the longest
    (batch,) = list(corpus.loader("train", tok, step=TOKEN_STEP)[0])
    assert batch.tokens_in.shape[1] == TOKEN_STEP  # a bf16 run's: padded in steps, as ASR batches are
    assert batch.tokens_in[:, :4].tolist() == [[SOS, a, b, PAD], [SOS, c, a, b]]
    assert batch.tokens_out[:, :4].tolist() == [[a, b, EOS, PAD], [c, a, b, EOS]]
    assert set(batch.tokens_in[:, 4:].flatten().tolist()) == set(batch.tokens_out[:, 4:].flatten().tolist()) == {PAD}
    assert batch.token_lens.tolist() == [3, 4] and batch.char_lens.tolist() == [3, 4]
