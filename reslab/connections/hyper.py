"""Hyper-Connections: n copies of the stream, read, mixed and written by learned weights per branch.

Zhu, Huang, Huang, Zeng, Wu, Min, Qiao, Zhou 2025, *Hyper-Connections* (ICLR 2025, arXiv:2409.19606).
With H = (h_1..h_n) the n streams (all equal to h_0 at the start) and each branch f one "layer":

    x   = sum_s A_m[s] h_s                          width connection (what f reads)
    h_u <- sum_s A_r[s, u] h_s + beta_u f(x)        depth connection (mix, then write)

static (default): A_m, A_r, beta are learned constants per branch, n(n+2) scalars. dynamic: each gets an
input-dependent term s * tanh(norm(H) W) (paper eqs. 10-12), W = 0 and s = 0.01 at init, plus the norm's
weights: n(n+2) + D(n+2) + 2 + (2D layernorm | D rmsnorm) per branch.

Init (paper, Appendix J Algorithm 2): branch t reads stream t mod n (A_m one-hot), A_r = I, beta = 1.
Every stream then receives every branch output, so all n streams stay equal to the pre-norm residual
stream h at init. Reduction (``reduce``): sum, the paper's ("the n hidden vectors are summed" before the
final norm), gives n*h at init, which the model's final norm (RMS/LayerNorm) maps to the same output as
``residual``; reduce=mean gives h exactly (``starts_as_residual`` is declared for reduce=mean).
norm=layernorm is the paper's; norm=rmsnorm is hyper_connections' (hyper_connections.py:86-93, a
learned gain (1 + gamma)), used by the oracle test. Memory: the stream costs n times the residual's
(n activations per position kept for backward) by design.
"""
from __future__ import annotations

from ._hc import StreamMix, hc_param_count
from .registry import Option, register


@register(
    "hyper",
    paper="Zhu et al., ICLR 2025, Hyper-Connections (arXiv:2409.19606)",
    params="per branch: n(n+2) static; + D(n+2) + 2 + norm (2D layernorm, D rmsnorm) with dynamic",
    param_count=lambda o, s: hc_param_count(o["n"], 1, s.dim, s.n_blocks * s.branches, o["dynamic"], o["norm"], "paper"),
    coefficients={"read": "(L, n, 1, 1) static A_m: weight of stream s in branch t's input",
                  "mix": "(L, n, n) static A_r[t, s, u]: weight of stream s in stream u after branch t",
                  "write": "(L, n, 1) static beta[t, u]: weight of branch t's output in stream u"},
    starts_as_residual=True, residual_at_init=lambda o: o["reduce"] == "mean" or o["n"] == 1,
    per_branch=True,
    variants=("hyper(dynamic)", "hyper(reduce=mean)", "hyper(dynamic, norm=rmsnorm, n=2)"),
    options=[
        Option("n", "int", 4, "number of streams (expansion rate)", min=1, max=64),
        Option("dynamic", "bool", False, "input-dependent (tanh-gated) weights, the paper's DHC"),
        Option("norm", "choice", "layernorm", "norm of H for the dynamic weights", choices=("layernorm", "rmsnorm")),
        Option("reduce", "choice", "sum", "how the n streams become the output", choices=("sum", "mean")),
        Option("branches", "int", 1, "branches per block; reslab.connection() fills it from the model", min=1, max=64),
    ],
)
class Hyper(StreamMix):
    """Hyper-Connections: n streams, learned read (A_m), mix (A_r) and write (beta) per branch."""

    def __init__(self, n_blocks, dim, channel_dim=-1, n=4, dynamic=False, norm="layernorm", reduce="sum", branches=1):
        super().__init__(n_blocks, dim, channel_dim, n=n, m=1, dynamic=dynamic, norm=norm, reduce=reduce,
                         write="paper", branches=branches)
