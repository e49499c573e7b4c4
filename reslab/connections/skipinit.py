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

import torch
from torch import nn

from .base import Connection
from .registry import Option, register


@register(
    "skipinit",
    paper="De & Smith 2020, Batch Normalization Biases Residual Blocks Towards the Identity (arXiv:2002.10444)",
    params="K*branches",
    param_count=lambda opts, shape: shape.n_blocks * shape.branches,
    coefficients={"lambda": "(K, branches) learned α of every branch"},
    starts_as_residual=True,
    residual_at_init=lambda opts: opts["init"] == 1.0,
    per_branch=True,
    options=[
        Option("init", "float", 0.0, "initial α of every branch (0: the identity at init)"),
        Option("branches", "int", 1, "branches per block; reslab.connection() fills it from the model (2 for a transformer block)", min=1, max=64),
    ],
)
class SkipInit(Connection):
    """SkipInit stream: h <- h + α_{j,b} f(h), a learned scalar per branch, α(0) = init."""

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1, init: float = 0.0, branches: int = 1):
        super().__init__(n_blocks, dim, channel_dim)
        self.init = float(init)
        self.alpha = nn.Parameter(torch.full((n_blocks, int(branches)), self.init))

    def branch_output(self, state, k, b, x, out):
        return state + self.alpha[k, b].to(state.dtype) * out

    def branch_scale(self, k, b):
        return self.alpha.detach()[k, b]

    def coefficients(self):
        return {"lambda": self.alpha.detach().clone()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init}, branches={self.branches_per_block}"
