"""DenseFormer: a Depth-Weighted Average (DWA) of all earlier states after each block.

Pagliardini, Mohtashami, Fleuret, Jaggi 2024, *DenseFormer: Enhancing Information Flow in Transformers
via Depth Weighted Averaging* (NeurIPS 2024, arXiv:2402.02622). With h_0 the stack's input and
x_0 = h_0, for j = 1..K:

    h_j = B_j(x_{j-1})                           the block, with its inner residuals (h' = h' + f(h'))
    x_j = sum_{i in S_j} alpha_{j,i} h_i         after a DWA step (j % period == 0)
    x_j = h_j                                    otherwise (no DWA after this block)

and the stack returns x_K. The alphas are learned, unnormalised scalars (shared over batch, tokens and
channels), initialised to the identity alpha_{j,j} = 1, others 0, so at init the stack *is*
``residual``, bit for bit.

Sparse variants (the paper's "k x p" DenseFormer; this is our reading of the official DWAModules):
    dilation=k: S_j = {i <= j : i = j (mod k)}, i.e. h_j, h_{j-k}, h_{j-2k}, ... (h_0 only when k | j).
    period=p:   DWA steps only after blocks j = p, 2p, ...; the other blocks pass h_j on unchanged, and
                if p does not divide K the stack returns h_K. The states h_i in S_j are always the raw
                block outputs (never DWA outputs), also for blocks without a DWA step.
Parameters: sum over DWA steps j of |S_j| = floor(j/k) + 1; K(K+3)/2 for k = p = 1.

All alphas live in one packed parameter (row-major over (step j, source i)); the state keeps a tuple
of the block outputs autograd saves anyway. ``reslab.connections.fused(True)`` accumulates each average
in place into one tensor (``_fused.weighted_sum``), an opt-in fast path that is once-differentiable.
"""
from __future__ import annotations

import torch

from ._fused import fused_enabled, weighted_sum
from .base import Connection
from .registry import Option, register


def dwa_sources(n_blocks: int, dilation: int, period: int) -> dict[int, list[int]]:
    """{DWA step j: sources S_j (ascending)} for the given sparsity pattern."""
    return {j: list(range(j % dilation, j + 1, dilation))
            for j in range(1, n_blocks + 1) if j % period == 0}


def _param_count(opts: dict, shape) -> int:
    return sum(len(src) for src in dwa_sources(shape.n_blocks, opts["dilation"], opts["period"]).values())


@register(
    "denseformer",
    paper="Pagliardini et al. 2024, DenseFormer (arXiv:2402.02622)",
    params="sum over DWA steps j (j % period == 0) of floor(j/dilation)+1; K(K+3)/2 for dilation=period=1",
    param_count=_param_count,
    variants=("denseformer(dilation=2)", "denseformer(period=2)"),
    coefficients={"routing": "K x (K+1) matrix, row j-1 = weights alpha_{j,i} of the block outputs h_i "
                             "in the stream after block j"},
    starts_as_residual=True,
    options=[
        Option("dilation", "int", 1, "average only states i = j (mod dilation)", min=1),
        Option("period", "int", 1, "a DWA step only after every period-th block", min=1),
    ],
)
class DenseFormer(Connection):
    """Residual blocks, each followed by a learned depth-weighted average of all earlier states."""

    def __init__(self, n_blocks, dim, channel_dim=-1, dilation=1, period=1):
        super().__init__(n_blocks, dim, channel_dim)
        self.dilation, self.period = int(dilation), int(period)
        self._sources = dwa_sources(self.n_blocks, self.dilation, self.period)
        self._first_reader = {}  # source -> the first DWA step that reads it (the last one in backward)
        for j, src in self._sources.items():
            for i in src:
                self._first_reader.setdefault(i, j)
        # where each step's alphas start in the packed vector
        self._offset, n, init = {}, 0, []
        rows, cols = [], []
        for j, src in self._sources.items():
            self._offset[j] = n
            n += len(src)
            init += [1.0 if i == j else 0.0 for i in src]  # identity: alpha_{j,j} = 1
            rows += [j - 1] * len(src)
            cols += src
        alpha = torch.tensor(init, dtype=torch.float32)
        if n:
            self.alpha = torch.nn.Parameter(alpha)
        else:  # period > K: no DWA step at all; an empty Parameter would trip DDP's unused check
            self.register_buffer("alpha", alpha)
        # coordinates of each packed alpha in the K x (K+1) routing matrix
        self.register_buffer("_rows", torch.tensor(rows, dtype=torch.long), persistent=False)
        self.register_buffer("_cols", torch.tensor(cols, dtype=torch.long), persistent=False)

    def coefficients(self):
        """{"routing": K x (K+1)} with row j-1 = (alpha_{j,i})_i; a block without a DWA step has the
        identity row (1 at column j)."""
        K = self.n_blocks
        r = torch.zeros(K, K + 1, dtype=self.alpha.dtype, device=self.alpha.device)
        for j in range(1, K + 1):
            if j not in self._sources:
                r[j - 1, j] = 1.0
        r[self._rows, self._cols] = self.alpha.detach()
        return {"routing": r}

    def routing(self):
        return self.coefficients()["routing"], "dwa", 0.0

    # -- the steps. state = (hs: the raw block outputs h_0..h_j, x: the stream, pending) -------------------
    def start(self, x0):
        return (x0,), x0, ({} if fused_enabled() else None)

    def branch_input(self, state, k, b):
        return state[1]

    def branch_output(self, state, k, b, x, out):
        hs, h, pending = state
        return hs, h + out, pending

    def end_block(self, state, k):
        hs, h, pending = state
        j = k + 1
        hs = hs + (h,)
        src = self._sources.get(j)
        if src is None:
            return hs, h, pending
        o = self._offset[j]
        w = self.alpha[o: o + len(src)].to(h.dtype)
        if pending is not None:  # opt-in fused path; the first step to read a source hands it its gradient
            x = weighted_sum([], w, [hs[i] for i in src], pending, [(i, self._first_reader[i] == j) for i in src],
                             last_call=j == max(self._sources))
        else:
            x = None
            for t, i in enumerate(src):
                x = w[t] * hs[i] if x is None else x + w[t] * hs[i]
        return hs, x, pending

    def finish(self, state):
        return state[1]

    def map_stream(self, state, fn):
        # the stream the next block reads is the average (or the block output); the raw outputs stay as averaged
        hs, x, pending = state
        return hs, fn(x), pending
