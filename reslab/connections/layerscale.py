"""LayerScale: h <- h + diag(γ_{j,b}) f(h), a learned per-channel scale on every residual branch.

Touvron et al. 2021, "Going deeper with Image Transformers" (CaiT, arXiv:2103.17239). Each branch
output is multiplied channel-wise by a learned vector γ_{j,b} ∈ R^D initialised to a small ε, so
every block starts close to the identity while each channel can open at its own pace (ReZero and
SkipInit use one scalar per block or branch). For a feature map the scale broadcasts along the
connection's ``channel_dim`` (1 for NCHW).

Choice of ε. CaiT sets it by depth: ε = 0.1 up to 18 blocks, 1e-5 at 24, 1e-6 deeper. reslab
defaults to ε = 1e-4: the nets it trains on a CPU have roughly 4-32 blocks, where the CaiT rule jumps
from 0.1 to 1e-6; 1e-4 gives a near-identity start (each branch adds ~1e-4 of its raw output) and,
since Adam moves γ by about the learning rate per step whatever its size, γ still reaches useful
values in a few hundred steps. ``eps=cait`` applies the paper's
depth rule with depth = the network's blocks (CaiT's depth counts layers, each holding an attention and an
MLP branch; a ResNet's three stages count together).

The number of branches per block is an option (``branches``) because parameters exist before any
block is seen; ``reslab.connection()`` fills it from the model (2 for a transformer ``[attention, mlp]``). Extra parameters: K*branches*D.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Connection
from .registry import Option, register


def cait_eps(depth: int) -> float:
    """CaiT's LayerScale init for a network of ``depth`` blocks."""
    return 0.1 if depth <= 18 else (1e-5 if depth <= 24 else 1e-6)


def parse_eps(raw) -> float | str:
    """``eps`` is a number > 0 or ``cait`` (the depth rule, resolved once K is known)."""
    if isinstance(raw, str) and raw.strip().lower() == "cait":
        return "cait"
    try:
        if isinstance(raw, bool):
            raise ValueError
        val = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"eps={raw!r} is not understood; give a number > 0 (e.g. eps=1e-4) or eps=cait "
                         "(0.1 up to 18 blocks, 1e-5 up to 24, 1e-6 deeper)") from None
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"eps={raw!r} must be a finite number > 0 (e.g. eps=1e-4); for an exact identity "
                         "start use rezero or skipinit, whose init may be 0")
    return val


@register(
    "layerscale",
    paper="Touvron et al. 2021, Going deeper with Image Transformers (CaiT, arXiv:2103.17239)",
    params="K*branches*D",
    param_count=lambda opts, shape: shape.n_blocks * shape.branches * shape.dim,
    variants=("layerscale(eps=cait)",),
    coefficients={"scale": "(K, branches, D) learned per-channel γ of every branch"},
    per_branch=True,
    options=[
        Option("eps", "float", 1e-4, "initial per-channel scale, > 0, or 'cait' for the paper's depth rule",
               parse=parse_eps),
        Option("branches", "int", 1, "branches per block; reslab.connection() fills it from the model (2 for a transformer block)", min=1, max=64),
    ],
)
class LayerScale(Connection):
    """LayerScale stream: h <- h + γ_{j,b} ⊙ f(h), a learned per-channel scale per branch, γ(0) = eps."""

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1, eps: float | str = 1e-4,
                 branches: int = 1):
        super().__init__(n_blocks, dim, channel_dim)
        eps = parse_eps(eps)
        self._cait = eps == "cait"
        self.eps = cait_eps(n_blocks) if self._cait else eps
        self.scale = nn.Parameter(torch.full((n_blocks, int(branches), dim), self.eps))

    def set_network(self, branches_per_block, network_branches):
        super().set_network(branches_per_block, network_branches)
        if self._cait:  # CaiT's depth is the network's layers, not this stack's (a ResNet stage is a third of it)
            self.eps = cait_eps(max(network_branches // max(branches_per_block, 1), self.n_blocks))
            with torch.no_grad():
                self.scale.fill_(self.eps)

    def branch_output(self, state, k, b, x, out):
        # cast so a float32 γ does not promote a bf16/float64 stream
        return state + self.scale_channels(self.scale[k, b].to(state.dtype), out)

    def branch_scale(self, k, b):
        return self.scale.detach()[k, b]

    def coefficients(self):
        return {"scale": self.scale.detach().clone()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps:g}, branches={self.branches_per_block}"
