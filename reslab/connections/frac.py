"""Frac-Connections: the stream split into m fractions, read, mixed and written like hyper-connections.

Zhu, Huang, Zhou, Huang, Zeng, Wu, Min, Zhou 2025, *Frac-Connections: Fractional Extension of
Hyper-Connections* (arXiv:2503.14125). Instead of n copies of width D, h is reshaped to m fractions
h_1..h_m of width D/m (channels c*D/m .. (c+1)*D/m - 1 form fraction c), so memory stays that of the
residual stream. Per branch f:

    x_g <- sum_f Gamma[f, g] h_f       (the input, re-assembled from mixed fractions)
    h_g <- sum_f A[f, g] h_f + beta_g f(x)_g

static: 2m^2 + m scalars per branch; dynamic adds tanh-gated terms from the normed fractions (as in
``hyper``): + (D/m)(2m + 1) + 2 + norm. Init: Gamma = A = I, beta = 1, so the stack *is* ``residual``.

write=sum is hyper_connections 0.4.11's reading (hyper_connections.py:244-245, 311, 357): every fraction
g receives beta_g * sum_f f(x)_f (its static beta broadcasts over the branch's fractions); its init also
reads fraction 0 into every input fraction (hyper_connections.py:229-232 with the column split at 297),
which is not residual. We follow the paper (fraction g of f(x) into fraction g) and keep write=sum as an
option; the oracle test copies hyper_connections' weights, so the init difference does not matter there.
"""
from __future__ import annotations

from ._hc import StreamMix, hc_param_count
from .registry import Option, register


def _check(opts, shape):
    if shape.dim % opts["m"]:
        raise ValueError(f"frac: the width D={shape.dim} is not divisible by m={opts['m']}; pick m dividing D")


@register(
    "frac",
    paper="Zhu et al. 2025, Frac-Connections (arXiv:2503.14125)",
    params="per branch: 2m^2 + m static; + (D/m)(2m+1) + 2 + norm (2D/m layernorm, D/m rmsnorm) with dynamic "
           "(write=sum: W_b is D/m x m, so + D - D/m)",
    param_count=lambda o, s: hc_param_count(1, o["m"], s.dim, s.n_blocks * s.branches, o["dynamic"], o["norm"], o["write"]),
    coefficients={"read": "(L, 1, m, m) static Gamma[t, f, g]: fraction f in input fraction g",
                  "mix": "(L, m, m) static A[t, f, g]: fraction f in fraction g after branch t",
                  "write": "(L, 1, m) static beta[t, g]"},
    starts_as_residual=True, residual_at_init=lambda o: o["write"] == "paper",
    per_branch=True, check=_check, example="frac",
    variants=("frac(dynamic)", "frac(m=4, dynamic, write=sum, norm=rmsnorm)", "frac(m=1)"),
    options=[
        Option("m", "int", 2, "number of fractions (must divide the width)", min=1, max=64),
        Option("dynamic", "bool", False, "input-dependent (tanh-gated) weights"),
        Option("norm", "choice", "layernorm", "norm of the fractions for the dynamic weights",
               choices=("layernorm", "rmsnorm")),
        Option("write", "choice", "paper", "paper: fraction g of f(x) into fraction g; sum: hyper_connections' "
               "sum over the branch's fractions", choices=("paper", "sum")),
        Option("branches", "int", 1, "branches per block; reslab.connection() fills it from the model", min=1, max=64),
    ],
)
class Frac(StreamMix):
    """Frac-Connections: m fractions of one stream, learned read/mix/write per branch."""

    def __init__(self, n_blocks, dim, channel_dim=-1, m=2, dynamic=False, norm="layernorm", write="paper", branches=1):
        super().__init__(n_blocks, dim, channel_dim, n=1, m=m, dynamic=dynamic, norm=norm, reduce="sum",
                         write=write, branches=branches)
