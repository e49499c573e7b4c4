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

The classifier (:class:`reslab.models.feature_cnn.FeatureNet`, model family ``feature_cnn``) is trained by
reslab's Trainer on the Fashion-MNIST task, like every other network here, and then reads **pixels in [0, 1]**
at the resolution it was trained at (its input statistics are set after training), so any model's samples can
be scored after undoing its own normalisation. Its run folder is the cache: ``$XDG_CACHE_HOME/reslab/frechet``
(default ``~/.cache/reslab/frechet``) or a given folder, one folder per setting (resolution, architecture,
steps, training-set size, batch, lr, seed); a finished run there is reused when its config and the code it was
trained by match (:func:`reslab.compare.train_or_reuse`), else trained again. Checkpoints are the Trainer's
(atomic).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..models.feature_cnn import FeatureNet

ARCH_VERSION = "cnn-v2"  # bump when FeatureNet or its training changes (v2: trained by the Trainer)


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
                       n_train: int | None = None, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                       log: Callable[[str], None] = print) -> tuple[FeatureNet, dict]:
    """The Fashion-MNIST feature classifier at side ``resize`` (None: 28), trained by the Trainer on the CPU on the
    first ``n_train`` training images (all when None) -- the Trainer's AdamW (weight decay 1e-4 on the weight
    matrices and kernels), cosine decay to 0 without warmup, gradient clipping 1 -- or reused from its run folder
    under the cache (see the module docstring). The caller's global RNG state is left as it was either way.
    Returns the net (eval mode, pixels in [0, 1]) and its metadata: test accuracy on the whole official test set,
    key, run folder, whether it was reused (``cached``). An unreadable cached run is trained again."""
    from ..compare import code_revision, finished_run, train_or_reuse
    from ..train import TrainConfig, load_trained

    side = 28 if resize is None else int(resize)
    key = f"fmnist-{ARCH_VERSION}-r{side}-steps{steps}-n{n_train or 'all'}-b{batch_size}-lr{lr:g}-seed{seed}"
    run = cache_root(cache_dir) / key
    task_args = {"resize": side} | ({"n_train": int(n_train)} if n_train else {})  # 28 and None: one run
    cfg = TrainConfig(task="fashion_mnist", task_args=task_args, model="feature_cnn", steps=steps,
                      batch_size=batch_size, lr=lr, weight_decay=1e-4, warmup_steps=0, min_lr_ratio=0.0,
                      grad_clip=1.0, eval_every=steps, eval_batches=8, log_every=max(1, steps // 5), seed=seed,
                      out_dir=str(run), progress=False, tensorboard=False, fused_adamw="cuda",
                      device="cpu")  # small, and one cache entry whatever machine trained it
    def trained(summary: dict):
        return load_trained(run)[:2] if summary.get("status") == "completed" else (None, None)

    cached, tag = finished_run(cfg) is not None, f"frechet: feature classifier {key}"
    with torch.random.fork_rng():  # the Trainer seeds the global RNG, and only when it trains (not on reuse)
        summary = train_or_reuse(cfg, log, tag=tag)
        try:
            net, task = trained(summary)
        except Exception as e:  # an unreadable cache entry (e.g. a deleted checkpoint) is rebuilt, not fatal
            log(f"frechet: cached classifier in {run} is unreadable ({type(e).__name__}: {e}); training it again")
            shutil.rmtree(run)
            cached, summary = False, train_or_reuse(cfg, log, tag=tag)
            net, task = trained(summary)
    if net is None:
        raise RuntimeError(f"frechet: the feature classifier's run in {run} ended {summary.get('status')!r}; pass "
                           f"fashion_classifier(lr=..., seed=...) another value (ancre-diffusion: the preset's "
                           f"classifier lr / seed)")
    mean, std = task.info["mean"], task.info["std"]
    net.mean.fill_(mean)  # from here on the net reads pixels in [0, 1]: (pixel - mean) / std is what it trained on
    net.std.fill_(std)
    net.eval()
    acc = accuracy(net, task.val_x * std + mean, task.val_y)
    log(f"frechet: classifier test accuracy {acc:.4f} (whole test set, {task.val_x.shape[0]} images)")
    meta = {"key": key, "resize": side, "n_classes": net.head.out_features, "feature_dim": net.head.in_features,
            "width": net.body[0].out_channels, "steps": steps, "n_train": int(task.train_x.shape[0]),
            "batch_size": batch_size, "lr": lr, "seed": seed, "test_accuracy": acc,
            "code_revision": code_revision()}
    return net, meta | {"path": str(run), "cached": cached}


__all__ = ["ARCH_VERSION", "FeatureNet", "accuracy", "cache_root", "fashion_classifier", "fd_between", "feature_stats",
           "features", "frechet_distance"]
