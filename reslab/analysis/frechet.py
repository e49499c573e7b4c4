"""Fréchet distance between image sets in the feature space of a small Fashion-MNIST classifier.

The Fréchet (2-Wasserstein) distance between Gaussians fitted to two feature sets,

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

(Dowson & Landau 1982), is what FID computes in the pool features of an ImageNet Inception-v3
(Heusel et al. 2017, arXiv:1706.08500). Inception knows nothing useful about 14x14 grey clothes and
is not available offline, so reslab uses the features of a **small CNN it trains itself** on
Fashion-MNIST and caches. The number is therefore *not* FID and is not comparable with any published
FID; it ranks models evaluated with the same classifier, the same sample count and the same reference
set. We call it ``fd_cls`` ("Fréchet distance, reslab classifier features").

Trace of the matrix square root, without ``sqrtm``: with A = S_1^{1/2} (symmetric, from ``eigh``),
S_1 S_2 is similar to A S_2 A, which is symmetric positive semi-definite, so
Tr (S_1 S_2)^{1/2} = sum_i sqrt(lambda_i(A S_2 A)). Everything is float64.

The classifier works on **pixel space in [0, 1]** at the resolution it was trained at, so any model's
samples can be scored after undoing its own normalisation. It is cached under
``$XDG_CACHE_HOME/reslab/frechet`` (default ``~/.cache/reslab/frechet``) or a given folder, keyed by
everything that changes it (resolution, architecture, steps, training-set size, seed), and saved
atomically with its test accuracy.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCH_VERSION = "cnn-v1"  # bump when FeatureNet changes: old cache files are then simply not found


class FeatureNet(nn.Module):
    """conv3x3(32) -> ReLU -> conv3x3/2(64) -> ReLU -> conv3x3/2(64) -> ReLU -> avgpool 2x2 -> Linear(256, F)
    -> ReLU [features] -> Linear(F, n_classes). Inputs are pixels in [0, 1], normalised inside with the
    mean/std of its training images (buffers, saved with it)."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, feature_dim: int = 64, width: int = 32):
        super().__init__()
        if min(in_channels, n_classes, feature_dim, width) < 1:
            raise ValueError("FeatureNet: in_channels, n_classes, feature_dim and width must be >= 1")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))

    def features(self, x: Tensor) -> Tensor:
        return self.body((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(x: Tensor, y: Tensor, n_classes: int, steps: int = 1000, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, feature_dim: int = 64, width: int = 32,
                     log: Callable[[str], None] | None = None) -> FeatureNet:
    """Train a :class:`FeatureNet` on pixels ``x`` (N, C, H, W) in [0, 1] and labels ``y`` (N,) with
    AdamW (cosine decay) on random batches drawn with ``seed``. Returns it in eval mode."""
    if x.ndim != 4 or y.shape != (x.shape[0],) or x.shape[0] < 1:
        raise ValueError(f"train_classifier: need images (N, C, H, W) and labels (N,), got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train_classifier: steps and batch_size must be >= 1, got {steps}, {batch_size}")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # do not disturb the caller's global RNG stream
        torch.manual_seed(seed)
        net = FeatureNet(x.shape[1], n_classes, feature_dim, width)
    net.mean.fill_(float(x.mean()))
    net.std.fill_(float(x.std()) or 1.0)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    net.train()
    for step in range(steps):
        ix = torch.randint(x.shape[0], (batch_size,), generator=g)
        loss = F.cross_entropy(net(x[ix]), y[ix])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step + 1) % max(1, steps // 5) == 0:
            log(f"  classifier step {step + 1}/{steps}: loss {loss.item():.3f}")
    return net.eval()


@torch.no_grad()
def accuracy(net: FeatureNet, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    correct = sum(int((net(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, x.shape[0], batch_size))
    return correct / max(1, x.shape[0])


@torch.no_grad()
def features(net: FeatureNet, x: Tensor, batch_size: int = 1000) -> np.ndarray:
    """(N, F) float64 features of pixels ``x`` (N, C, H, W) in [0, 1]."""
    net.eval()
    return torch.cat([net.features(x[i:i + batch_size].float()) for i in range(0, x.shape[0], batch_size)]
                     ).double().numpy()


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of (N, F) features; N >= 2."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"feature_stats: need (N >= 2, F) features, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    lam, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(lam, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), the trace root from eigenvalues of
    S1^{1/2} S2 S1^{1/2} (see module doc). Tiny negative results of round-off are clipped to 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes must be mu (F,), sigma (F, F) for both sets; got "
                         f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    a = _psd_sqrt(s1)
    m = a @ ((s2 + s2.T) / 2) @ a
    tr_root = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_root)
    return max(fd, 0.0)


def fd_between(net: FeatureNet, xa: Tensor, xb: Tensor | tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between pixel sets ``xa`` and ``xb`` (or precomputed ``(mu, sigma)`` of xb)."""
    mu_a, s_a = feature_stats(features(net, xa))
    mu_b, s_b = xb if isinstance(xb, tuple) else feature_stats(features(net, xb))
    return frechet_distance(mu_a, s_a, mu_b, s_b)


# ------------------------------------------------------------------------------------- cache

def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reslab" / "frechet"


def fashion_classifier(resize: int | None = 14, cache_dir: str | os.PathLike | None = None, steps: int = 1000,
                       n_train: int | None = None, seed: int = 0, batch_size: int = 128,
                       log: Callable[[str], None] = print) -> tuple[FeatureNet, dict]:
    """The Fashion-MNIST feature classifier at side ``resize`` (None: 28), loaded from the cache or
    trained (on the first ``n_train`` training images, all when None) and cached. Returns the net
    (eval mode, pixels in [0, 1]) and its metadata (test accuracy, key, path)."""
    from ..data import images
    from ..train import atomic_write_bytes

    side = 28 if resize is None else int(resize)
    key = f"fmnist-{ARCH_VERSION}-r{side}-steps{steps}-n{n_train or 'all'}-b{batch_size}-seed{seed}"
    path = cache_root(cache_dir) / f"{key}.pt"
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(blob["meta"])
            net = FeatureNet(1, meta["n_classes"], meta["feature_dim"], meta["width"])
            net.load_state_dict(blob["state"])
            return net.eval(), meta | {"path": str(path), "cached": True}
        except Exception as e:  # a corrupt cache entry is rebuilt, not fatal
            log(f"frechet: ignoring unreadable cached classifier {path} ({type(e).__name__}: {e})")
    task = images.fashion_mnist(n_train=n_train, resize=resize)
    mean, std = task.info["mean"], task.info["std"]
    x_tr, x_te = task.train_x * std + mean, task.val_x * std + mean  # undo the task's standardisation
    log(f"frechet: training the feature classifier ({key}) on {x_tr.shape[0]} images, cached at {path}")
    net = train_classifier(x_tr, task.train_y, len(images.CLASSES), steps=steps, batch_size=batch_size,
                           seed=seed, log=log)
    acc = accuracy(net, x_te, task.val_y)
    log(f"frechet: classifier test accuracy {acc:.4f}")
    meta = {"key": key, "resize": side, "n_classes": len(images.CLASSES), "feature_dim": net.head.in_features,
            "width": net.body[0].out_channels, "steps": steps, "n_train": x_tr.shape[0], "seed": seed,
            "test_accuracy": acc}
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"state": net.state_dict(), "meta": json.dumps(meta)}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return net, meta | {"path": str(path), "cached": False}


__all__ = ["ARCH_VERSION", "FeatureNet", "accuracy", "cache_root", "fashion_classifier", "fd_between", "feature_stats",
           "features", "frechet_distance", "train_classifier"]
