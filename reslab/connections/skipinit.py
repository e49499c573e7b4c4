"""SkipInit: h <- h + α_{j,b} f(h), one learned scalar at the end of every residual branch.

De & Smith 2020, "Batch Normalization Biases Residual Blocks Towards the Identity Function in Deep
Networks" (arXiv:2002.10444). Their analysis: batch norm downscales each residual branch by about
sqrt(depth) at init, which makes a deep ResNet behave like a shallow ensemble and keeps it trainable.
SkipInit drops normalization and reproduces that bias with a learnable scalar multiplier at the end of
each branch, initialised to 0 (or to something small, < 1/sqrt(K)). In the REX picture (Dherin & Munn
2025) it is a learned λ per module with λ(0) = init.

Parameters have to exist at construction, before any block is seen, so the number of branches per
block is an option (``branches``); ``reslab.connection()`` fills it from the model's
``branches_per_block`` (2 for a transformer ``[attention, mlp]``), and forward() checks it. Extra parameters: K * branches.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Connection
from .registry import Option, register


@register(
    "skipinit",
    paper="De & Smith 2020, Batch Normalization Biases Residual Blocks Towards the Identity (arXiv:2002.10444)",
    params="K*branches",
    options=[
        Option("init", "float", 0.0, "initial α of every branch (0: the identity at init)"),
        Option("branches", "int", 1, "branches per block; reslab.connection() fills it from the model (2 for a transformer block)", min=1),
    ],
)
class SkipInit(Connection):
    """SkipInit stream: h <- h + α_{j,b} f(h), a learned scalar per branch, α(0) = init."""

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1, init: float = 0.0, branches: int = 1):
        super().__init__(n_blocks, dim, channel_dim)
        if not math.isfinite(float(init)):
            raise ValueError(f"skipinit: init must be a finite number, got {init!r}")
        if isinstance(branches, bool) or int(branches) != branches or branches < 1:
            raise ValueError(f"skipinit: branches must be an integer >= 1, got {branches!r}")
        self.init = float(init)
        self.branches = int(branches)
        self.alpha = nn.Parameter(torch.full((n_blocks, self.branches), self.init))

    def check_branches(self, blocks) -> None:
        counts = [len(block) for block in blocks]
        bad = [j for j, c in enumerate(counts) if c != self.branches]
        if not bad:
            return
        if len(set(counts)) > 1:
            raise ValueError(f"skipinit: blocks have different branch counts {counts}; skipinit needs the "
                             f"same number of branches in every block (one scalar per block and branch)")
        raise ValueError(f"skipinit: built with branches={self.branches} but every block has {counts[0]} "
                         f"branches; build it with skipinit(branches={counts[0]})")

    def forward(self, x, blocks):
        self.check_blocks(blocks)
        self.check_branches(blocks)
        blocks = self.effective_blocks(blocks)  # lesioned blocks' branches -> zeros
        self._record_state(0, x)
        for j, block in enumerate(blocks):
            for b, f in enumerate(block):
                out = self.alpha[j, b].to(x.dtype) * f(x)
                self._record_branch(j, b, x, out)  # the term actually added to the stream
                x = x + out
            self._record_state(j + 1, x)
        return x

    def coefficients(self):
        return {"lambda": self.alpha.detach().clone()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init}, branches={self.branches}"
