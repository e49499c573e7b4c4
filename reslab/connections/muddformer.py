"""MUDD connections (one way): dynamic dense connections, a depth-wise aggregate after every block whose
weights are generated from the current hidden state.

Xiao, Li, Wang, Chen 2025, *MUDDFormer: Breaking Residual Bottlenecks in Transformers via Multiway Dynamic
Dense Connections* (ICML 2025, arXiv:2502.12170). With X_0 = h_0 and X_j = B_j(Xbar_{j-1}) the output of
block j (which keeps its inner residuals: h' = h' + f(h') per branch), after every block j = 1..K:

    Xbar_j = sum_{i=0}^{j} A_j[i] X_i,     A_j = GELU(RMSNorm(X_j) W1_j) W2_j + a_j     (per position)

W1_j: D x (j+1), W2_j: (j+1) x (j+1) (the hidden width equals the number of sources here), a_j (j+1) static.
Init: a_j one-hot on X_j and W2_j = 0, so the stack *is* ``residual`` at init (W1 ~ N(0, 1/D) gets its
first gradient once W2 moves, as in LoRA). dynamic=false keeps only a_j (the paper's static dense
ablation, a DenseFormer DWA).

Multiway: MUDDFormer computes four such aggregates per block (C = 4 ways: the query, key and value
inputs of the next attention and the residual stream). A reslab branch reads one tensor, so separate
Q/K/V inputs would need the attention's internals; this is the single-way (R) form, the paper's
"dynamic dense" ablation without the multiway split. The dynamic weights need only the hidden state,
so they are kept. Parameters: sum_{j=1..K} (j+1) [static] + (j+1)(D + j+1) [dynamic]. Memory: the
K+1 block outputs are kept (autograd keeps them anyway).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Connection
from .registry import Option, register


def _param_count(opts, shape) -> int:
    return sum((j + 1) + ((j + 1) * (shape.dim + j + 1) if opts["dynamic"] else 0) for j in range(1, shape.n_blocks + 1))


@register(
    "muddformer",
    paper="Xiao et al., ICML 2025, MUDDFormer (arXiv:2502.12170)",
    params="sum_{j=1..K} (j+1) + (j+1)(D+j+1) with dynamic; K(K+3)/2 static",
    param_count=_param_count,
    coefficients={"routing": "K x (K+1) static part a_j: row j-1 = weights of X_0..X_j in Xbar_j"},
    starts_as_residual=True, variants=("muddformer(dynamic=false)",),
    options=[Option("dynamic", "bool", True, "weights generated from X_j by a GELU MLP (false: static a_j only)")],
)
class MUDDFormer(Connection):
    """Single-way MUDD: after block j, Xbar_j = sum_i A_j(X_j)[i] X_i with dynamic + static weights."""

    def __init__(self, n_blocks, dim, channel_dim=-1, dynamic=True):
        super().__init__(n_blocks, dim, channel_dim)
        self.dynamic = bool(dynamic)
        K = n_blocks
        self.a = nn.ParameterList(nn.Parameter(F.one_hot(torch.tensor(j), j + 1).float()) for j in range(1, K + 1))
        if self.dynamic:
            self.w1 = nn.ParameterList(nn.Parameter(torch.randn(dim, j + 1) / dim ** 0.5) for j in range(1, K + 1))
            self.w2 = nn.ParameterList(nn.Parameter(torch.zeros(j + 1, j + 1)) for j in range(1, K + 1))

    def coefficients(self) -> dict[str, Tensor]:
        K = self.n_blocks
        r = torch.zeros(K, K + 1)
        for j in range(1, K + 1):
            r[j - 1, : j + 1] = self.a[j - 1].detach()
        return {"routing": r}

    def routing(self):
        return self.coefficients()["routing"], "dwa", 0.0

    def weights(self, X: Tensor, j: int) -> Tensor:
        """A_j for the newest block output X (shaped like the stream): (j+1, *stream shape with 1 channel)."""
        a = self.a[j - 1].to(X.dtype)
        cd = self.channel_dim % X.ndim
        if not self.dynamic:
            return a.view(-1, *[1] * X.ndim)
        h = X.movedim(cd, -1)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        A = F.gelu(h @ self.w1[j - 1].to(X.dtype)) @ self.w2[j - 1].to(X.dtype) + a  # (*P, j+1)
        return A.movedim(-1, 0).unsqueeze(cd + 1)

    # -- the steps. state = (X_0..X_j: the block outputs, h: the stream inside the current block)
    def start(self, x0):
        return (x0,), x0

    def branch_input(self, state, k, b):
        return state[1]

    def branch_output(self, state, k, b, x, out):
        return state[0], state[1] + out

    def end_block(self, state, k):
        hs = state[0] + (state[1],)
        A = self.weights(state[1], k + 1)
        x = (A * torch.stack(hs)).sum(0)
        return hs, x

    def finish(self, state):
        return state[1]
