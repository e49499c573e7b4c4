"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747) from its idx files, read with numpy.

Where the files are looked for, in order (a folder counts when it holds all four files, each either
raw or ``.gz``):

1. ``$RESLAB_DATA`` and ``$RESLAB_DATA/fashion-mnist``
2. ``/usr/share/datasets/fashion-mnist`` (the Debian package ``dataset-fashion-mnist``)
3. ``~/.cache/reslab/fashion-mnist`` (``$XDG_CACHE_HOME/reslab/fashion-mnist`` when that is set)

If none has them, the four ``.gz`` files are downloaded from the official Zalando Research locations
into the cache folder (MD5-checked, atomic write) unless ``download=False`` or ``RESLAB_OFFLINE=1``;
failing that, a ``FileNotFoundError`` lists every folder looked in and how to get the data.

Validation uses the **official test set** (10,000 images): there is no separate held-out split.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Task

STEMS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
URLS = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
       "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
       "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
       "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
TIMEOUT_S = 15.0
INSTALL_HINT = ("get the data with `apt-get install dataset-fashion-mnist`, or put the four idx files in "
                "a folder and set RESLAB_DATA to it, or allow the download (download=True and RESLAB_OFFLINE unset)")

# idx type code -> numpy dtype (multi-byte types are big-endian on disk).
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ----------------------------------------------------------------------------------------- idx

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one idx file (raw, or gzip when the name ends in ``.gz``).

    Format: bytes 0-1 zero, byte 2 the type code, byte 3 the number of dims n, then n big-endian
    uint32 sizes, then the data. Any mismatch is a ``ValueError`` naming the file."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"idx file {str(path)!r} cannot be read ({e}); it is corrupt or truncated: "
                         f"delete it and get it again") from None
    bad = f"idx file {str(path)!r} is corrupt"
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise ValueError(f"{bad}: bad magic number {data[:4].hex() or '(empty file)'}; expected 0000 <type> <ndim> "
                         f"(e.g. 00000803 for images); delete it and get it again")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{bad}: header announces {ndim} dims but the file has only {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{bad}: header says shape {dims} ({expected} bytes of data) but it holds "
                         f"{len(data) - header} bytes; delete it and get it again")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)  # native order, writable


# ------------------------------------------------------------------------------------- finding

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reslab" / "fashion-mnist"


def search_dirs() -> list[Path]:
    """Folders searched for the idx files, in order."""
    dirs = []
    if os.environ.get("RESLAB_DATA"):
        root = Path(os.environ["RESLAB_DATA"]).expanduser()
        dirs += [root, root / "fashion-mnist"]
    return dirs + [SYSTEM_DIR, cache_dir()]


def find_files(d: Path) -> dict[str, Path] | None:
    """The four files in ``d`` (raw preferred over ``.gz``), or None if any is missing."""
    found = {}
    for key, stem in STEMS.items():
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                found[key] = d / name
                break
        else:
            return None
    return found


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https/http URLs)
        return r.read()


def download(dest: Path, timeout: float = TIMEOUT_S) -> None:
    """Fetch the missing ``.gz`` files into ``dest``. Each is MD5-checked, written to a temporary file
    in ``dest`` and renamed into place, so a crash never leaves a half file under the real name."""
    for stem in STEMS.values():
        name = stem + ".gz"
        if (dest / name).is_file() or (dest / stem).is_file():
            continue
        errors = []
        for base in URLS:
            try:
                blob = _fetch(base + name, timeout)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, HTTP errors, cut reads
                errors.append(f"{base + name}: {e}")
                continue
            digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
            if MD5.get(name) not in (None, digest):
                errors.append(f"{base + name}: MD5 {digest} != expected {MD5[name]}")
                continue
            dest.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, dest / name)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            break
        else:
            raise OSError(f"could not download {name}: " + "; ".join(errors))


def _offline() -> bool:
    return os.environ.get("RESLAB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def locate(download_ok: bool = True) -> dict[str, Path]:
    """Paths of the four files: searched, then downloaded, else a ``FileNotFoundError`` that says
    where it looked and how to get them."""
    dirs = search_dirs()
    for d in dirs:
        if (files := find_files(d)) is not None:
            return files
    why = "download disabled (download=False)" if not download_ok else (
        "download disabled (RESLAB_OFFLINE is set)" if _offline() else None)
    if why is None:
        try:
            download(cache_dir())
            if (files := find_files(cache_dir())) is not None:
                return files
            why = "download finished but the files are still missing"
        except OSError as e:
            why = f"download failed: {e}"
    looked = "\n".join(f"  {d}" for d in dirs)
    if not os.environ.get("RESLAB_DATA"):
        looked += "\n  (RESLAB_DATA is not set)"
    raise FileNotFoundError(f"Fashion-MNIST idx files ({', '.join(STEMS.values())}, raw or .gz) not found in:\n"
                            f"{looked}\n{why}.\nTo fix: {INSTALL_HINT}.")


@lru_cache(maxsize=2)
def _load(key: tuple) -> dict[str, np.ndarray]:
    paths = {k: p for k, p, _, _ in key}
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        xp, yp = paths[f"{split}_images"], paths[f"{split}_labels"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(f"{xp}: expected uint8 images of shape (N, H, W), got {x.dtype} {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{yp}: expected {x.shape[0]} labels (one per image in {xp}), got shape {y.shape}")
        if y.size and int(y.max()) >= len(CLASSES):
            raise ValueError(f"{yp}: label {int(y.max())} out of range 0..{len(CLASSES) - 1}")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError("train and test images differ in size: "
                         f"{arrays['train_images'].shape[1:]} vs {arrays['test_images'].shape[1:]}")
    return arrays


def load_arrays(download: bool = True) -> tuple[dict[str, np.ndarray], Path]:
    """The raw uint8 arrays and the folder they came from, cached in-process (keyed on the files'
    paths, mtimes and sizes, so replaced files are read again)."""
    files = locate(download)
    key = tuple((k, str(p), p.stat().st_mtime_ns, p.stat().st_size) for k, p in files.items())
    return _load(key), files["train_images"].parent


# ----------------------------------------------------------------------------------------- task

def _subset(n_total: int, n: int | None, name: str, subset: str, g: torch.Generator) -> torch.Tensor:
    if n is None:
        return torch.arange(n_total)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= n_total:
        raise ValueError(f"option {name}={n!r}: expected an integer in 1..{n_total} (or None for all)")
    if subset == "first":
        return torch.arange(n)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def fashion_mnist(*, n_train: int | None = None, n_val: int | None = None, subset: str = "first",
                  seed: int = 0, resize: int | None = None, download: bool = True) -> Task:
    """Fashion-MNIST classification: x float32 (N, 1, r, r), y int64 in 0..9.

    ``n_train``/``n_val``: use that many images, the first ones (``subset="first"``) or a random
    subset drawn with ``seed`` (``subset="random"``). Val = the official test set.
    ``resize``: side length r; smaller sizes average-pool (exact 2x2 pooling for 14), larger ones
    interpolate bilinearly. Pixels are scaled to [0, 1], resized, then standardised with the mean
    and std of the training images used, so val is normalised with train statistics."""
    if subset not in ("first", "random"):
        raise ValueError(f"option subset={subset!r}: expected 'first' or 'random'")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < 1):
        raise ValueError(f"option resize={resize!r}: expected a side length >= 1 (e.g. 14 or 16) or None")
    arrays, folder = load_arrays(download)
    g = torch.Generator().manual_seed(int(seed))
    ix_tr = _subset(arrays["train_images"].shape[0], n_train, "n_train", subset, g)
    ix_va = _subset(arrays["test_images"].shape[0], n_val, "n_val", subset, g)

    def prep(images: np.ndarray, ix: torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(images[ix.numpy()]).float().div_(255.0).unsqueeze(1)
        if resize is None or resize == x.shape[-1]:
            return x
        if resize < x.shape[-1]:
            return F.adaptive_avg_pool2d(x, resize)  # area average: equals avg_pool2d when it divides
        return F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)

    x_tr, x_va = prep(arrays["train_images"], ix_tr), prep(arrays["test_images"], ix_va)
    mean, std = x_tr.mean().item(), x_tr.std().item()
    std = std if std > 0 else 1.0  # a constant training image set would otherwise divide by zero
    x_tr, x_va = x_tr.sub_(mean).div_(std), x_va.sub_(mean).div_(std)
    y_tr = torch.from_numpy(arrays["train_labels"][ix_tr.numpy()].astype(np.int64))
    y_va = torch.from_numpy(arrays["test_labels"][ix_va.numpy()].astype(np.int64))
    info = {"n_classes": len(CLASSES), "input_shape": tuple(x_tr.shape[1:]), "classes": list(CLASSES),
            "mean": mean, "std": std, "n_train": len(ix_tr), "n_val": len(ix_va),
            "val": "official Fashion-MNIST test set", "source": str(folder)}
    return Task(name="fashion_mnist", kind="classification", train_x=x_tr, val_x=x_va, train_y=y_tr,
                val_y=y_va, info=info)

