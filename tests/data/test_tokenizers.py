"""Tokenizers: round trips, shared special ids, and a clear error for an oversized BPE."""

from __future__ import annotations

import numpy as np
import pytest

from speechforge.data.tokenizers import BLANK, EOS, SOS, BPETokenizer, CharTokenizer, TokenizerError, load_tokenizer

TEXTS = ["THE CAT SAT ON THE MAT", "IT'S A DOG'S LIFE", "TWENTY THREE GREEN BOTTLES"] * 20


def test_char_round_trip_and_specials(tmp_path):
    tok = CharTokenizer()
    tok.fit(TEXTS)
    ids = tok.encode("IT'S THE CAT")
    assert min(ids) >= 5 and tok.decode(ids) == "IT'S THE CAT"
    assert tok.decode([SOS] + ids + [EOS, ids[0]]) == "IT'S THE CAT"  # cut at <eos>
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("CAT") == tok.encode("CAT")


def test_char_reports_characters_outside_its_alphabet():
    tok = CharTokenizer("ABC ")
    assert "Z" in tok.unencodable("ABZ")
    assert tok.unencodable("CAB") is None


def test_bpe_trains_with_the_requested_size_and_reserved_ids(tmp_path):
    tok = BPETokenizer(40)
    tok.fit(TEXTS)
    assert tok.vocab_size == 40
    assert tok.sp.id_to_piece(BLANK) == "<blank>"
    ids = tok.encode("THE DOG SAT")
    assert BLANK not in ids and tok.decode(ids) == "THE DOG SAT"
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("THE DOG SAT") == ids


def test_bpe_too_large_for_the_corpus_says_how_large_it_can_be():
    with pytest.raises(TokenizerError) as e:
        BPETokenizer(5000).fit(TEXTS)
    assert "tokenizer.vocab_size" in str(e.value) and "support at most" in str(e.value)


def test_bpe_on_the_shared_transcripts(hw4p2_root):
    texts = ["".join(np.load(p)) for p in sorted((hw4p2_root / "train-clean-100" / "text").glob("*.npy"))]
    tok = BPETokenizer(1000)
    tok.fit(texts)
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
