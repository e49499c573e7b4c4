"""Attention Residuals: each branch reads a softmax attention over depth, with one learned query per branch.

Kimi Team (Moonshot AI) 2026, *Attention Residuals* (arXiv:2603.15031). Each branch f_t (one "layer";
t = 0..L-1) reads, instead of the running sum h_0 + f_1 + ... + f_{t-1},

    x_t = sum_i alpha_{i,t} v_i,   alpha_{.,t} = softmax_i( w_t . RMSNorm(v_i) )

over the sources v_i: v_0 = h_0 (the embedding) and the earlier branch outputs, with w_t in R^D a
learned pseudo-query (not computed from the input), initialised to 0 so every branch starts with the
uniform average of its sources (so the scheme does not start as ``residual``). The stack's output is
the same read with one more query w_L. The RMSNorm on the keys has no gain (a gain would only rescale w).

Block AttnRes (block=S): the L branches form blocks of S consecutive branches; within a block the
outputs are summed (b_n = sum of its outputs, b_0 = h_0), and branch t attends over the completed
blocks b_0..b_{n-1} plus the partial sum of its own block when that is non-empty. block=1 is Full
AttnRes. Parameters: (L + 1) D. Memory: Full AttnRes keeps L + 1 stream-sized sources (O(L D) per
position, which autograd mostly keeps anyway), Block AttnRes ceil(L/S) + 1.

x-transformers 2.31 (x_transformers.py:1293-1360, ``AttentionResidual``) implements a different reading:
the query is computed from the latest hidden through RMSNorm + LoRA (input-dependent), the sources are
the hidden states (not branch outputs) and the logits are scaled by D^-1/2; it is not used as an oracle.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Connection
from .registry import Option, register


@register(
    "attnres",
    paper="Kimi Team 2026, Attention Residuals (arXiv:2603.15031)",
    params="(L + 1) * D, L = n_blocks * branches",
    param_count=lambda o, s: (s.n_blocks * s.branches + 1) * s.dim,
    coefficients={"queries": "(L+1, D) pseudo-query w_t of every branch, the last one reads the output"},
    per_branch=True, variants=("attnres(block=2)", "attnres(block=4)"),
    options=[
        Option("block", "int", 1, "branches per AttnRes block (1: Full AttnRes)", min=1, max=4096),
        Option("branches", "int", 1, "branches per block; reslab.connection() fills it from the model", min=1, max=64),
    ],
)
class AttnRes(Connection):
    """Attention over depth: every branch reads a softmax-weighted sum of h_0 and earlier (block) outputs."""

    def __init__(self, n_blocks, dim, channel_dim=-1, block=1, branches=1):
        super().__init__(n_blocks, dim, channel_dim)
        self.block = int(block)
        self.branches = self.branches_per_block = int(branches)
        self.layers = n_blocks * self.branches
        self.queries = nn.Parameter(torch.zeros(self.layers + 1, dim))

    def _branches_spec(self, n: int) -> str:
        return f"attnres(branches={n})"

    def coefficients(self) -> dict[str, Tensor]:
        return {"queries": self.queries.detach().clone()}

    def read(self, sources: tuple[Tensor, ...], t: int) -> Tensor:
        """sum_i softmax_i(w_t . RMSNorm(v_i)) v_i over the sources (each shaped like the stream)."""
        V = torch.stack(sources)  # (N, *x.shape)
        cd = self.channel_dim % sources[0].ndim + 1  # channel axis of V
        wdt = torch.promote_types(V.dtype, torch.float32)  # the softmax in float32 at least
        Vw = V.to(wdt)
        keys = Vw * torch.rsqrt(Vw.pow(2).mean(cd, keepdim=True) + 1e-6)
        shape = [1] * V.ndim
        shape[cd] = -1
        logits = (keys * self.queries[t].to(wdt).view(shape)).sum(cd, keepdim=True)
        alpha = torch.softmax(logits, dim=0).to(V.dtype)
        return (alpha * V).sum(0)

    # -- the steps: state = (b_0 = h_0, completed block sums..., partial sum of the current block if any)
    def start(self, x0):
        return (x0,)

    def branch_input(self, state, k, b):
        return self.read(state, k * self.branches + b)

    def branch_output(self, state, k, b, x, out):
        out = out.to(state[0].dtype)  # block sums in the stream's dtype (float32 under bf16 autocast)
        if (k * self.branches + b) % self.block == 0:  # the first branch of an AttnRes block opens it
            return state + (out,)
        return state[:-1] + (state[-1] + out,)

    def finish(self, state):
        return self.read(state, self.layers)
