"""ANCRe: learned softmax-weighted shortcuts from every earlier state to every later one.

Zhang, Li, He, Giannakis 2026, *ANCRe: Adaptive Neural Connection Reassignment for Efficient Depth
Scaling* (arXiv:2602.09009). With h_0 the stack's input and K blocks, for j = 1..K:

    h_j  = B_j(h_{j-1}) + sum_{i<j} p_ij h_i
    p_ij = exp(c_ij / tau) / sum_{i'<j} exp(c_i'j / tau)          (norm=incoming, the paper's)

one static scalar logit c_ij per shortcut i->j (0 <= i < j <= K), shared over batch, tokens and
channels; tau is a fixed buffer (no schedule). Logits start at 0, so each destination starts as the
uniform average of all earlier states (ANCRe does *not* start as ``residual``).

form=repo (default, the official code): B_j keeps the block's inner residuals, h' = h then
    h' = h' + f(h') per branch, and the ANCRe sum is added on top (total shortcut mass 2).
form=theory (the paper's linear-network analysis): B_j is the plain chain h' = f(h'); ANCRe supplies
    every shortcut, so a one-hot p_{j-1,j} = 1 is exactly ``residual``.
learn=false: logits frozen at 0 -> a fixed uniform average ("constant" in the official code).
norm=outgoing (the official ``ANCReOutgoingNorm`` ablation): each *source's* outgoing edges are
    normalised instead, p_ij = exp(c_ij/tau) / sum_{j'=i+1..K} exp(c_ij'/tau), so sum_{j>i} p_ij = 1
    for every source i = 0..K-1 (h_K feeds nothing); a destination's incoming weights then need not
    sum to 1.

Parameters: K(K+1)/2 shortcuts, minus the one whose softmax has a single entry and is the constant 1
(incoming: 0->1; outgoing: (K-1)->K). That entry is not stored at all, so it can neither count nor
receive a gradient: K(K+1)/2 - 1 trainable scalars (0 with learn=false). Keep them out of weight decay
and note that under Adam a small tau acts as a 1/tau learning-rate multiplier on the logits.

Cost: one masked_scatter + one softmax per forward for all destinations, then K(K+1)/2 scaled adds;
the history is a tuple of the states autograd keeps anyway, never a stacked (K, batch, ...) tensor.
With ``reslab.connections.fused(True)`` each destination is accumulated in place into one tensor by
``_fused.weighted_sum`` (dL/dp as dot products, one gradient buffer per source), which is faster but
once-differentiable, so it is opt-in.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._fused import fused_enabled, weighted_sum
from .base import Connection
from .registry import Option, register


def _param_count(opts: dict, shape) -> int:
    K = shape.n_blocks
    return max(K * (K + 1) // 2 - 1, 0) if opts["learn"] else 0


@register(
    "ancre",
    paper="Zhang, Li, He, Giannakis 2026, ANCRe (arXiv:2602.09009)",
    params="K(K+1)/2 - 1 (0 with learn=false)",
    param_count=_param_count,
    variants=("ancre(form=theory, tau=1)", "ancre(learn=false)", "ancre(norm=outgoing, tau=0.5)"),
    coefficients={"routing": "K x (K+1) matrix, row j-1 = weights p_ij of the states h_i added to block j's output"},
    options=[
        Option("tau", "float", 0.01, "softmax temperature; logits are c/tau", positive=True),
        Option("form", "choice", "repo", "repo: blocks keep inner residuals; theory: plain blocks",
               choices=("repo", "theory")),
        Option("learn", "bool", True, "false: logits frozen at 0 (fixed uniform average)"),
        Option("norm", "choice", "incoming", "softmax over each destination's sources, or each "
               "source's destinations", choices=("incoming", "outgoing")),
    ],
)
class ANCRe(Connection):
    """Learned softmax-normalised shortcuts i->j for all 0 <= i < j <= K, added to each block's output."""

    def __init__(self, n_blocks, dim, channel_dim=-1, tau=0.01, form="repo", learn=True, norm="incoming"):
        super().__init__(n_blocks, dim, channel_dim)
        self.form, self.norm, self.learn = form, norm, bool(learn)
        K = self.n_blocks
        self.register_buffer("tau", torch.tensor(float(tau)))
        # Logit matrix L (K x K): row r = destination j = r+1, column i = source; valid iff i <= r.
        # (The routing matrix has K+1 columns but source K never feeds anything, so it is left out
        # here: then no softmax row/column is ever fully masked.)
        valid = torch.ones(K, K).tril().bool()
        single = torch.zeros(K, K, dtype=torch.bool)
        if K:
            single[(0, 0) if norm == "incoming" else (K - 1, K - 1)] = True  # the singleton softmax
        # -inf outside the triangle (weight exactly 0); the singleton entry keeps logit 0 forever
        self.register_buffer("_fill", torch.full((K, K), -math.inf).masked_fill(valid, 0.0), persistent=False)
        self.register_buffer("_mask", valid & ~single, persistent=False)
        n = int(self._mask.sum())  # = K(K+1)/2 - 1 for K >= 1
        # Packed trainable logits, row-major over (destination j, source i) as masked_scatter fills them.
        if self.learn and n:  # (K = 1 has nothing to learn: an empty Parameter would trip DDP's unused check)
            self.logits = torch.nn.Parameter(torch.zeros(n))
        else:
            self.register_buffer("logits", torch.zeros(n))
        self._dim = 1 if norm == "incoming" else 0  # softmax over sources (per row) or destinations (per column)

    def extra_parameters(self) -> int:
        # the singleton logit is a constant that is never stored; learn=false keeps its logits in a buffer
        return self.logits.numel() if isinstance(self.logits, torch.nn.Parameter) else 0

    def weights(self) -> torch.Tensor:
        """P (K x K) with P[j-1, i] = p_ij, differentiable in the logits."""
        full = self._fill.masked_scatter(self._mask, self.logits.to(self._fill.dtype))
        return torch.softmax(full / self.tau, dim=self._dim)

    def coefficients(self):
        # K x (K+1): column K (source h_K) is all zeros, everything above the diagonal too.
        return {"routing": F.pad(self.weights().detach(), (0, 1))}

    def routing(self):
        # the shortcut sum is added to the block's output, which keeps its inner residual with form=repo
        return self.coefficients()["routing"], "shortcut", 1.0 if self.form == "repo" else 0.0

    # -- the steps. state = (hs: h_0..h_j, h: the running stream inside block j, P, pending) ---------------
    def start(self, x0):
        P = self.weights() if self.n_blocks else None  # one softmax for every destination
        return (x0,), x0, P, ({} if fused_enabled() else None)

    def branch_input(self, state, k, b):
        return state[1]

    def branch_output(self, state, k, b, x, out):
        hs, h, P, pending = state
        return hs, (h + out if self.form == "repo" else out), P, pending

    def end_block(self, state, k):
        # h_{k+1} = B(h_k) + sum_{i<=k} p_{i,k+1} h_i
        hs, h, P, pending = state
        w = P[k, : k + 1].to(h.dtype)
        if pending is not None:  # the opt-in fused path: one buffer, dL/dp as dot products
            new = weighted_sum([h], w, list(hs), pending, [(i, i == k) for i in range(k + 1)],
                               last_call=k + 1 == self.n_blocks)
        else:
            new = h
            for i, hi in enumerate(hs):
                new = new + w[i] * hi
        return hs + (new,), new, P, pending

    def finish(self, state):
        return state[1]

    def map_stream(self, state, fn):
        # the mapped state is h_{j+1} itself: later shortcuts read it (a post-activation ResNet's ReLU output)
        hs, h, P, pending = state
        y = fn(h)
        return hs[:-1] + (y,), y, P, pending
