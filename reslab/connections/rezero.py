"""ReZero: h <- h + α_j f(h), one learned scalar α_j per block, initialised to 0.

Bachlechner et al. 2020, "ReZero is All You Need: Fast Convergence at Large Depth" (arXiv:2003.04887).
With α = 0 every block starts as the identity map, so the input-output Jacobian is exactly the
identity at init however deep the stack (dynamical isometry), and no normalization is needed. In the
REX picture (Dherin & Munn 2025) it is a learned λ_j with λ_j(0) = 0: every expansion level k >= 1 is
switched off at init and is turned on by training.

One α per block is shared by all its branches, as in the paper's Transformer, where one "resweight"
gates both the attention and the feed-forward sublayer of a layer. Use ``skipinit`` for one scalar per
branch. Extra parameters: K.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Connection
from .registry import Option, register


@register(
    "rezero",
    paper="Bachlechner et al. 2020, ReZero is All You Need (arXiv:2003.04887)",
    params="K",
    param_count=lambda opts, shape: shape.n_blocks,
    variants=("rezero(init=1)",),
    coefficients={"lambda": "(K,) learned α_j of every block"},
    starts_as_residual=True,
    residual_at_init=lambda opts: opts["init"] == 1.0,
    options=[Option("init", "float", 0.0, "initial α of every block (0: each block is the identity at init)")],
)
class ReZero(Connection):
    """ReZero stream: h <- h + α_j f(h), a learned scalar per block (shared by its branches), α_j(0) = init."""

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1, init: float = 0.0):
        super().__init__(n_blocks, dim, channel_dim)
        self.init = float(init)
        self.alpha = nn.Parameter(torch.full((n_blocks,), self.init))

    def branch_output(self, state, k, b, x, out):
        # cast so a float32 α keeps the stream's dtype (bf16 autocast, float64 analysis)
        return state + self.alpha[k].to(state.dtype) * out

    def branch_scale(self, k, b):
        return self.alpha.detach()[k]

    def coefficients(self):
        return {"lambda": self.alpha.detach().clone()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init}"
