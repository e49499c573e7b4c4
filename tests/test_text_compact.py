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


def test_disk_cache_memory_maps_the_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(text, "CACHE_MIN_TOKENS", 1)
    p = tmp_path / "c.txt"
    p.write_text("to be, or not to be ſ" * 40, encoding="utf-8")
    text._encoded.cache_clear()
    first = get_task(f"text:{p}", block_size=8)
    files = sorted(f.suffix for f in (tmp_path / "cache").iterdir())
    assert files == [".bin", ".json"]  # written once, no temp files left

    def no_encoding(_):
        raise AssertionError("the cached ids should have been read")

    monkeypatch.setattr(text, "encode", no_encoding)
    text._encoded.cache_clear()
    second = get_task(f"text:{p}", block_size=8)  # from the memory-mapped file
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.val_x, second.val_x)
    assert first.info["itos"] == second.info["itos"] and second.train_x.dtype == torch.uint8
    p.write_text("a different text, edited" * 40, encoding="utf-8")  # new size/mtime: a new key
    text._encoded.cache_clear()
    try:
        get_task(f"text:{p}", block_size=8)
        raise RuntimeError("an edited file must be encoded again")
    except AssertionError:
        pass
    text._encoded.cache_clear()


def test_disk_cache_off_and_small_corpora(tmp_path, monkeypatch):
    p = tmp_path / "c.txt"
    p.write_text("abcdefgh" * 100, encoding="utf-8")
    monkeypatch.setenv("RESLAB_CACHE_DIR", "off")
    assert text.cache_dir() is None
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    text._encoded.cache_clear()
    get_task(f"text:{p}", block_size=8)  # 800 tokens < CACHE_MIN_TOKENS: no file
    assert not (tmp_path / "cache").exists()
    text._encoded.cache_clear()
