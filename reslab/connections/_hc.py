"""Shared core of ``hyper`` (n streams) and ``frac`` (m fractions): n streams of m fractions each.

The stream is held as H (n, *P, D) with the channels last (P = batch/positions; a channels-first input
is moved to channels-last once in :meth:`start`), seen as n*m slots of width d = D/m. Per branch t
(one "layer" in the papers, t = k * branches + b):

    read   x[g]     = sum_{s,f} A[t,s,f,g,0]   H[s,f]            input fraction g (width connection)
    mix    H'[u,g]  = sum_{s,f} A[t,s,f,g,1+u] H[s,f]            (n*m x n*m, the A_r of the papers)
    write  H''[u,g] = H'[u,g] + B[t,u,g] f(x)[g]                 (write=paper: fraction g of f to slot g)
           H''[u,g] = H'[u,g] + sum_f B[t,u,f,g] f(x)[f]         (write=sum: lucidrains' reading, below)

dynamic: A and B get input-dependent terms  s_a tanh(norm(H)[s,f] W_a[t])  and  s_b tanh(norm(H)[s,f] W_b[t])
(Zhu et al. 2025, eqs. 10-12 / Algorithm 2), with W = 0 and s = 0.01 at init, so the dynamic form
starts as the static one.

write=sum follows hyper_connections 0.4.11 (hyper_connections.py:244-245, 304-313, 357): the dynamic
beta has one weight per (branch fraction f, slot) and the static beta broadcasts over f, so every slot
receives the *sum* of all fractions of f(x). The Frac-Connections paper writes fraction g of f(x)
into fraction g (its B is a vector of m betas); that is write=paper, the default. For m = 1 the two
coincide. The state is a tuple (H, x, H', B) prepared one branch ahead, so each branch computes its
norm and weights once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Connection, stream_precision


def hc_param_count(n: int, m: int, dim: int, layers: int, dynamic: bool, norm: str, write: str) -> int:
    d = dim // m
    per = n * m * m * (1 + n) + n * m  # static read/mix A, static write B
    if dynamic:
        per += d * m * (1 + n) + 1 + (d * m if write == "sum" else d) + 1 + (2 * d if norm == "layernorm" else d)
    return layers * per


class StreamMix(Connection):
    """n streams x m fractions, read/mixed/written per branch by learned (optionally dynamic) weights."""

    def __init__(self, n_blocks, dim, channel_dim, *, n, m, dynamic, norm, reduce, write, branches):
        super().__init__(n_blocks, dim, channel_dim)
        self.n, self.m, self.d = int(n), int(m), dim // int(m)
        self.dynamic, self.norm_kind, self.reduce, self.write = bool(dynamic), norm, reduce, write
        self.branches = self.branches_per_block = int(branches)
        L, n, m, d = n_blocks * self.branches, self.n, self.m, self.d
        self.layers = L
        A = torch.zeros(L, n, m, m, 1 + n)
        eye = torch.eye(m)
        for t in range(L):
            A[t, t % n, :, :, 0] = eye  # branch t reads stream t mod n (the paper's init_alpha0)
            for s in range(n):
                A[t, s, :, :, 1 + s] = eye  # identity mixing: A_r = I
        self.alpha = nn.Parameter(A)
        # write to every stream with weight 1: streams stay equal copies of the residual stream at init
        self.beta = nn.Parameter(torch.ones(L, n, m))
        if self.dynamic:
            self.w_alpha = nn.Parameter(torch.zeros(L, d, m, 1 + n))
            self.s_alpha = nn.Parameter(torch.full((L,), 0.01))
            self.w_beta = nn.Parameter(torch.zeros(L, d, m) if write == "sum" else torch.zeros(L, d))
            self.s_beta = nn.Parameter(torch.full((L,), 0.01))
            self.norm_w = nn.Parameter(torch.ones(L, d))
            if norm == "layernorm":
                self.norm_b = nn.Parameter(torch.zeros(L, d))

    def _branches_spec(self, n: int) -> str:
        return f"{self.name}(branches={n})"

    def coefficients(self) -> dict[str, Tensor]:
        A, B = self.alpha.detach(), self.beta.detach()
        nm = self.n * self.m
        mix = A[..., 1:].permute(0, 1, 2, 4, 3).reshape(self.layers, nm, nm)  # [t, (s,f), (u,g)]
        return {"read": A[..., 0].clone(), "mix": mix, "write": B.clone()}

    # -- helpers: channels-last view, slots, norm -------------------------------------------------
    def _last(self, x: Tensor) -> Tensor:
        return x.movedim(self.channel_dim, -1)

    def _first(self, x: Tensor) -> Tensor:
        """Back to the stream's layout. Contiguous, because a channels-last-strided NCHW tensor handed to a
        stride-2 convolution corrupted the heap in its CPU backward (torch 2.13, a ResNet's downsampling)."""
        y = x.movedim(-1, self.channel_dim)
        return y if self.channel_dim in (-1, x.ndim - 1) else y.contiguous()

    def _norm(self, Hs: Tensor, t: int) -> Tensor:
        w = self.norm_w[t].to(Hs.dtype)
        if self.norm_kind == "layernorm":  # the HC paper's Algorithm 2
            return F.layer_norm(Hs, (self.d,), w, self.norm_b[t].to(Hs.dtype), eps=1e-5)
        return F.normalize(Hs, dim=-1) * self.d ** 0.5 * w  # RMS norm as hyper_connections.py:92-93

    def _prepare(self, H: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
        """Branch t's input x (*P, D), the mixed streams H' (n, *P, D) and the write weights."""
        # weights and mixing in float32 at least (a bf16 stream mixes n terms), returned in the stream's dtype
        dtype, H = H.dtype, H.to(torch.promote_types(H.dtype, torch.float32))
        with stream_precision(H):
            x, Hm, B = self._mix(H, t)
        return x.to(dtype), Hm.to(dtype), B.to(dtype)

    def _mix(self, H: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
        Hs = H.unflatten(-1, (self.m, self.d))  # (n, *P, m, d)
        A, B = self.alpha[t].to(H.dtype), self.beta[t].to(H.dtype)
        if not self.dynamic:
            x = torch.einsum("s...fd,sfg->...gd", Hs, A[..., 0])
            Hm = torch.einsum("s...fd,sfgu->u...gd", Hs, A[..., 1:])
            return x.flatten(-2), Hm.flatten(-2), B.view(self.n, *[1] * (H.ndim - 2), self.m)
        Hbar = self._norm(Hs, t)
        pad = [1] * (H.ndim - 2)
        dyn = torch.tanh(torch.einsum("s...fd,dgv->s...fgv", Hbar, self.w_alpha[t].to(H.dtype)))
        A = A.view(self.n, *pad, *A.shape[1:]) + self.s_alpha[t].to(H.dtype) * dyn  # (n, *P, m, m, 1+n)
        x = torch.einsum("s...fd,s...fg->...gd", Hs, A[..., 0])
        Hm = torch.einsum("s...fd,s...fgu->u...gd", Hs, A[..., 1:])
        s_b = self.s_beta[t].to(H.dtype)
        if self.write == "sum":  # B[s, *P, f, g]: branch fraction f into slot (s, g), from slot (s, f)
            db = torch.einsum("s...fd,dg->s...fg", Hbar, self.w_beta[t].to(H.dtype))
            B = B.view(self.n, *pad, 1, self.m) + s_b * torch.tanh(db)
        else:  # B[s, *P, g], from slot (s, g)
            B = B.view(self.n, *pad, self.m) + s_b * torch.tanh(Hbar @ self.w_beta[t].to(H.dtype))
        return x.flatten(-2), Hm.flatten(-2), B

    # -- the steps. state = (H,) after the last branch, else (H, x, H', B) prepared for the next branch
    def start(self, x0):
        H = self._last(x0).unsqueeze(0).expand(self.n, *self._last(x0).shape)  # n copies of h_0
        return (H, *self._prepare(H, 0)) if self.layers else (H,)

    def branch_input(self, state, k, b):
        return self._first(state[1])

    def branch_output(self, state, k, b, x, out):
        _, _, Hm, B = state
        # a bf16 branch output (autocast) joins the streams in their own dtype, as x + f(x) does in residual
        o = self._last(out).to(Hm.dtype).unflatten(-1, (self.m, self.d))  # (*P, m, d)
        with stream_precision(Hm):
            if self.write == "sum" and self.dynamic:
                add = torch.einsum("...fd,s...fg->s...gd", o, B)
            elif self.write == "sum":  # the static beta broadcasts over the branch's fractions
                add = B.unsqueeze(-1) * o.sum(-2, keepdim=True)
            else:
                add = B.unsqueeze(-1) * o
            H = Hm + add.flatten(-2)
        t = k * self.branches + b + 1
        return (H, *self._prepare(H, t)) if t < self.layers else (H,)

    def finish(self, state):
        H = state[0]
        y = H.sum(0) if self.reduce == "sum" else H.mean(0)
        return self._first(y)
