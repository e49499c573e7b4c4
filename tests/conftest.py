import os

import pytest
import torch

# Two cores are shared by everything on CI's machine; tiny tensors gain nothing from more threads.
torch.set_num_threads(int(os.environ.get("RESLAB_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def perturb(module, scale=0.3, seed=0, vectors_only=False):
    """Move every parameter of ``module`` off its init, so a check does not pass only at a special point.
    ``vectors_only``: norms' weights and biases only (at init every norm is the same map, so a check that an
    adapter calls the right one needs them apart; the matrices stay as the model drew them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not vectors_only or p.dim() == 1:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def write_fake_fashion_mnist(folder, n_train: int, n_test: int, seed: int = 0):
    """Gzipped idx files in Fashion-MNIST's layout whose images carry their label in their brightness, so a
    model can learn something; returns ``folder`` (point $RESLAB_DATA at it)."""
    import gzip

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def idx(path, arr, magic):
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())

    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 19).clip(0, 255)
        idx(folder / f"{split}-images-idx3-ubyte.gz", images, 2051)
        idx(folder / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
    return folder
