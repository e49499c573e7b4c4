"""Compact token storage of the char-LM tasks (reslab/data/text.py): the smallest integer type that holds the
vocabulary, chunked encoding equal to the one-shot definition, int64 batches."""
from __future__ import annotations

import pytest
import torch

from reslab.data import get_task, text


def test_token_dtype_is_the_smallest_that_holds_the_vocabulary():
    assert text.token_dtype(65) == torch.uint8 and text.token_dtype(256) == torch.uint8
    assert text.token_dtype(257) == torch.uint16 and text.token_dtype(65536) == torch.uint16
    assert text.token_dtype(65537) == torch.int32


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_chunked_encode_equals_the_definition(monkeypatch, chunk):
    monkeypatch.setattr(text, "ENCODE_CHUNK", chunk)
    s = "ſweet Æolus — to be, or not\nthou art é " * 7
    ids, itos = text.encode(s)
    assert itos == tuple(sorted(set(s))) and ids.dtype == torch.uint8
    assert ids.tolist() == [itos.index(c) for c in s]
    wide = "".join(chr(0x4E00 + i) for i in range(300)) + "ab"  # 302 characters: uint16
    ids, itos = text.encode(wide)
    assert ids.dtype == torch.uint16 and [itos[i] for i in ids.long().tolist()] == list(wide)


def test_lm_batches_are_int64_from_compact_storage(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("abcdefghij" * 50, encoding="utf-8")
    task = get_task(f"text:{p}", block_size=8)
    assert task.train_x.dtype == torch.uint8
    x, y = task.get_batch("train", 4, torch.Generator().manual_seed(0))
    assert x.dtype == y.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    assert all(xb.dtype == torch.int64 for xb, _ in task.fixed_batches("val", 2, 3))
