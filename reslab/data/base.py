"""What the trainer needs from a data set: a Task.

A Task holds its train/val tensors in memory (every built-in set is small) and draws batches with an
explicit ``torch.Generator``, so a run is reproducible and resumable from the generator's state, and
DDP ranks can draw the same global batch and each keep their slice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

Kind = Literal["lm", "classification", "regression"]


@dataclass
class Task:
    """A supervised task.

    kind:
        ``lm``: ``train``/``val`` are 1-D token tensors (``x``); batches are random windows of
        ``block_size`` tokens, targets shifted by one. ``info["vocab_size"]``, ``info["itos"]``.
        ``classification``: ``x`` (N, ...) float inputs and ``y`` (N,) int64 labels;
        ``info["n_classes"]``, ``info["input_shape"]``.
        ``regression``: ``x`` (N, d_in), ``y`` (N, d_out) floats; ``info["in_dim"]``, ``info["out_dim"]``.
    """

    name: str
    kind: Kind
    train_x: Tensor
    val_x: Tensor
    train_y: Tensor | None = None
    val_y: Tensor | None = None
    block_size: int = 128  # lm only
    info: dict = field(default_factory=dict)

    def split(self, split: str) -> tuple[Tensor, Tensor | None]:
        if split == "train":
            return self.train_x, self.train_y
        if split == "val":
            return self.val_x, self.val_y
        raise ValueError(f"unknown split {split!r}; valid: train, val")

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random batch (with replacement) drawn with ``generator``."""
        x, y = self.split(split)
        if self.kind == "lm":
            n = x.numel() - self.block_size - 1
            if n <= 0:
                raise ValueError(f"task {self.name!r}: {split} split has {x.numel()} tokens, fewer than "
                                 f"block_size+2={self.block_size + 2}; lower block_size or add data")
            ix = torch.randint(n, (batch_size,), generator=generator)
            offs = torch.arange(self.block_size)
            idx = ix[:, None] + offs[None, :]
            return x[idx], x[idx + 1]
        ix = torch.randint(x.shape[0], (batch_size,), generator=generator)
        return x[ix], y[ix]

    def fixed_batches(self, split: str, n_batches: int, batch_size: int, seed: int = 1234) -> list[tuple[Tensor, Tensor]]:
        """The same ``n_batches`` batches on every call: the evaluation set of a run.

        For classification/regression with a small split the whole split is used in order instead,
        so validation metrics are exact."""
        x, y = self.split(split)
        if self.kind != "lm" and x.shape[0] <= n_batches * batch_size:
            return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        g = torch.Generator().manual_seed(seed)
        return [self.get_batch(split, batch_size, g) for _ in range(n_batches)]
