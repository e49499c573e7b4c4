"""LAuReL, the Learned Augmented Residual Layer (Menghani, Kumar, Kumar, ICML 2025, arXiv:2411.07501).

General form (eq. 2): x_{i+1} = alpha * f(x_i) + g(x_i, x_{i-1}, ...), g linear. Variants, per instance i:

    RW       (sec 2.1): alpha f + beta x
    LR       (eq. 3):   f + x + lr(x),          lr(x) = (x A) B, A: D x r (down), B: r x D (up)
    PA       (eq. 4):   f + x + sum_{j=0}^{k-1} gamma_j h_j(x_{i-j})     (j = 0 is x_i itself)
    RW+LR    (eq. 5):   alpha f + beta (x + lr(x))
    RW+PA:              alpha f + beta (x + sum_j gamma_j h_j(x_{i-j}))
    LR+PA:              f + x + sum_j gamma_j A_j B_j x_{i-j}            (a separate pair per j)
    RW+LR+PA (eq. 6):   alpha f + beta (x + sum_j gamma_j A_j B_j x_{i-j})

Choices the paper leaves open (every default equals the plain residual stream at init):
- rw_param: softmax2 (alpha, beta = 2 softmax(w), w = 0), sigmoid (2 sigmoid(w), w = 0), single (one
  parameter: alpha = 2 sigmoid(w), beta = 2 - alpha, so alpha + beta = 2 always; w = 0), free (raw, init 1).
  rw_per_channel makes alpha, beta length-D vectors (sec 2.4).
- rank defaults to 16: the paper's best ResNet ranks were 16-32, its LLMs used 4-64.
- A: column_orthogonal (A[i, j] = 1/sqrt(rD) if i mod r == j, the paper's LLM init) or xavier (its
  ResNet init); B = 0 as in LoRA, so A gets no gradient until B moves (accepted, as in LoRA).
- pa_map: identity h (gamma = 0, so gamma itself gets gradient) or lowrank h_j = A_j B_j (eq. 6, one pair
  per previous activation; gamma = 1, since gamma = B = 0 would be a dead path). pa_map=auto picks
  lowrank when lr is set (LR+PA *is* the per-j low-rank map, its j = 0 pair plays LR's role) else
  identity; pa_map=identity together with lr is rejected. Only activations that exist are used: block
  i sees min(k, i+1) of them, so gamma[i, j > i] (and its pair) is never used and stays at its init.
- unit=block (default; the paper counts one instance per transformer layer): f(x) of a multi-branch
  block is its composite residual computation minus x (h = x; h = h + f_b(h) per branch; f = h - x),
  the digest's option (a). unit=branch: one instance per branch, PA history over branch inputs; the
  parameters are built in __init__, so the branch count comes from reslab.connection()'s
  branches_per_block (set by the model) or from laurel(unit=branch, branches=N).
  branches is ignored under unit=block, so one spec can switch placement for an ablation.
Per-instance parameters live in stacked tensors (rw_w: (n, 2[, D]), lr_A: (n, D, r), pa_A: (n, k, D, r)...).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._fused import scaled_add
from .base import Connection
from .registry import Option, register

PAPER = "Menghani, Kumar, Kumar, ICML 2025, LAuReL (arXiv:2411.07501)"
PARAMS = ("per instance (n_blocks, or n_blocks*branches with unit=branch): RW 2 (2D per-channel; single 1, "
          "D per-channel), LR 2rD, PA k (identity) or 2rkD+k (lowrank), RW+LR 2+2rD, LR+PA 2rkD+k, "
          "RW+LR+PA 2+2rkD+k")


def _resolve_pa_map(lr: bool, pa: bool, pa_map: str) -> str:
    if pa_map != "auto" and not pa:
        raise ValueError(f"laurel: pa_map={pa_map} only applies to previous activations; add the pa flag, "
                         "e.g. laurel(pa, pa_map=lowrank), or drop pa_map")
    if lr and pa_map == "identity":
        raise ValueError("laurel: with both lr and pa the previous-activation map is low rank (eq. 6: "
                         "gamma_j A_j B_j x_{i-j}, its j = 0 pair is the LR term), so pa_map=identity cannot "
                         "be combined with lr; drop lr for identity PA, or use pa_map=lowrank/auto")
    return "lowrank" if pa_map == "lowrank" or (pa_map == "auto" and lr) else "identity"


def laurel_extra_params(rw: bool, lr: bool, pa: bool, rank: int, k: int, D: int, n_instances: int,
                        rw_param: str = "softmax2", rw_per_channel: bool = False, pa_map: str = "auto") -> int:
    """Extra parameters of a LAuReL connection, by the formula in the registry's ``params`` string."""
    per = 0
    if rw:
        per += (1 if rw_param == "single" else 2) * (D if rw_per_channel else 1)
    if pa:
        per += 2 * rank * k * D + k if _resolve_pa_map(lr, pa, pa_map) == "lowrank" else k
    elif lr:
        per += 2 * rank * D
    return n_instances * per


def _init_A(A: Tensor, how: str) -> None:
    """A: (..., D, r), initialised slice by slice."""
    D, r = A.shape[-2:]
    for a in A.reshape(-1, D, r):
        if how == "xavier":
            nn.init.xavier_uniform_(a)
        else:  # column orthogonal: A[i, i mod r] = 1/sqrt(rD)
            a[torch.arange(D), torch.arange(D) % r] = 1.0 / math.sqrt(r * D)


@register("laurel", paper=PAPER, params=PARAMS, summary="LAuReL: alpha*f(x) + learned linear g(x, x_{i-1}, ...)",
          example="laurel(rw, lr)",
          options=[
              Option("rw", "bool", False, "learned residual weights alpha, beta"),
              Option("lr", "bool", False, "low-rank term (x A) B on the skip path"),
              Option("pa", "bool", False, "weighted sum of the k previous activations"),
              Option("rw_param", "choice", "softmax2", "how alpha, beta are formed (all 1/1 at init)",
                     choices=("softmax2", "sigmoid", "single", "free")),
              Option("rw_per_channel", "bool", False, "alpha, beta as length-D vectors"),
              Option("rank", "int", 16, "rank r of the low-rank maps", min=1),
              Option("lr_init", "choice", "column_orthogonal", "init of A (B = 0)",
                     choices=("column_orthogonal", "xavier")),
              Option("k", "int", 3, "previous activations used by PA (j = 0 is the current input)", min=1),
              Option("pa_map", "choice", "auto", "h_j: auto = lowrank with lr, else identity",
                     choices=("auto", "identity", "lowrank")),
              Option("unit", "choice", "block", "one instance per block or per branch", choices=("block", "branch")),
              Option("branches", "int", 1, "branches per block for unit=branch; reslab.connection() fills it from the model", min=1),
          ])
class Laurel(Connection):
    """LAuReL: x_{i+1} = alpha f(x_i) + g(x_i, x_{i-1}, ...), variants RW, LR, PA and their combinations."""

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1, *, rw=False, lr=False, pa=False,
                 rw_param="softmax2", rw_per_channel=False, rank=16, lr_init="column_orthogonal", k=3,
                 pa_map="auto", unit="block", branches=1):
        super().__init__(n_blocks, dim, channel_dim)
        if not (rw or lr or pa):
            raise ValueError("laurel: pick at least one of rw, lr, pa, e.g. laurel(rw) or laurel(rw, lr, rank=16)")
        for name, val, ok in (("rw_param", rw_param, ("softmax2", "sigmoid", "single", "free")),
                              ("lr_init", lr_init, ("column_orthogonal", "xavier")),
                              ("unit", unit, ("block", "branch"))):
            if val not in ok:
                raise ValueError(f"laurel: {name}={val!r} is not one of {', '.join(ok)}")
        for name, val in (("rank", rank), ("k", k), ("branches", branches)):
            if int(val) < 1:
                raise ValueError(f"laurel: {name} must be an integer >= 1, got {val}; e.g. laurel(lr, rank=16)")
        self.rw, self.lr, self.pa, self.rw_param, self.unit = bool(rw), bool(lr), bool(pa), rw_param, unit
        self.rank, self.k, self.branches = int(rank), int(k), int(branches)
        self.pa_map = _resolve_pa_map(self.lr, self.pa, pa_map)
        n, D, r = n_blocks * (self.branches if unit == "branch" else 1), self.dim, self.rank
        self.n_instances = n
        if self.rw:
            shape = (n,) if rw_param == "single" else (n, 2)
            shape += (D,) if rw_per_channel else ()
            # logits 0 give alpha = beta = 1 for softmax2/sigmoid/single; the free form starts at 1 itself
            self.rw_w = nn.Parameter(torch.full(shape, 1.0 if rw_param == "free" else 0.0))
        if self.pa:
            # identity h: gamma = 0 is the baseline and gamma gets gradient; lowrank: B = 0 already is
            self.pa_gamma = nn.Parameter(torch.full((n, self.k), 1.0 if self.pa_map == "lowrank" else 0.0))
            if self.pa_map == "lowrank":
                self.pa_A = nn.Parameter(torch.zeros(n, self.k, D, r))
                self.pa_B = nn.Parameter(torch.zeros(n, self.k, r, D))
                with torch.no_grad():
                    _init_A(self.pa_A, lr_init)
        elif self.lr:
            self.lr_A = nn.Parameter(torch.zeros(n, D, r))
            self.lr_B = nn.Parameter(torch.zeros(n, r, D))
            with torch.no_grad():
                _init_A(self.lr_A, lr_init)

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        """alpha, beta for every instance: (n,) or (n, D). Computed once per forward."""
        w = self.rw_w
        if self.rw_param == "softmax2":
            ab = 2 * torch.softmax(w, dim=1)
        elif self.rw_param == "sigmoid":
            ab = 2 * torch.sigmoid(w)
        elif self.rw_param == "single":
            a = 2 * torch.sigmoid(w)
            return a, 2 - a
        else:
            ab = w
        return ab[:, 0], ab[:, 1]

    def coefficients(self) -> dict[str, Tensor]:
        out = {}
        if self.rw:
            a, b = self.alpha_beta()
            out["alpha"], out["beta"] = a.detach(), b.detach()
        if self.pa:
            out["gamma"] = self.pa_gamma.detach()
        return out

    def _lowrank(self, h: Tensor, A: Tensor, B: Tensor) -> Tensor:
        """(h A) B along the channel axis: down- then up-projection, for (B, T, D) and (B, C, H, W) alike."""
        cd = self.channel_dim % h.ndim
        if cd == h.ndim - 1:
            return (h @ A) @ B
        if h.is_contiguous():
            # channels inside (NCHW): on an (N, C, H*W) view, einsum runs each map as one (r x C) @ (C x N*H*W)
            # product -- half the time of movedim + matmul, which copies h and runs N small products
            hv = h.reshape(math.prod(h.shape[:cd]), h.shape[cd], -1)
            z = torch.einsum("cr,ncp->nrp", A, hv)
            return torch.einsum("rc,nrp->ncp", B, z).reshape(h.shape)
        return torch.movedim((torch.movedim(h, cd, -1) @ A) @ B, -1, cd)

    def _plus_lowrank(self, h: Tensor, A: Tensor, B: Tensor) -> Tensor:
        """h + (h A) B; for channels-last streams one addmm adds the up-projection straight into a copy of h
        (not under autocast, which would run the addmm -- and so the skip path h -- in half precision)."""
        if (self.channel_dim % h.ndim != h.ndim - 1 or not h.is_contiguous()
                or torch.is_autocast_enabled(h.device.type)):
            return h + self._lowrank(h, A, B)
        h2 = h.reshape(-1, h.shape[-1])
        return torch.addmm(h2, h2 @ A, B).view(h.shape)

    def _combine(self, t: int, fx: Tensor, x: Tensor, prev: list[Tensor], ab) -> Tensor:
        """Instance t: alpha f + beta g, with g = x [+ lr(x)] [+ sum_j gamma_j h_j(x_{t-j})]."""
        g = x
        if self.pa:
            for j, h in enumerate([x] + prev):  # prev holds at most k-1 earlier inputs, newest first
                if self.pa_map == "lowrank":
                    h = self._lowrank(h, self.pa_A[t, j], self.pa_B[t, j])
                g = g + self.pa_gamma[t, j] * h
        elif self.lr:
            g = self._plus_lowrank(x, self.lr_A[t], self.lr_B[t])
        if not self.rw:
            return fx + g
        if ab[0].ndim == 2:  # per-channel
            return self.channel_view(ab[0][t], x.ndim) * fx + self.channel_view(ab[1][t], x.ndim) * g
        return scaled_add(g, fx, ab[0][t], ab[1][t])  # alpha f + beta g in one output; dL/dalpha, dL/dbeta as dots

    def forward(self, x, blocks):
        blocks = self.effective_blocks(blocks)  # lesion studies: a lesioned block's branches return zeros
        self.check_blocks(blocks)
        self._record_state(0, x)
        ab = self.alpha_beta() if self.rw else None
        prev: list[Tensor] = []  # earlier unit inputs, newest first; only k-1 are ever needed
        t = 0
        for i, block in enumerate(blocks):
            if self.unit == "branch":
                if len(block) != self.branches:
                    raise ValueError(f"laurel(unit=branch) was built with branches={self.branches} but block {i} "
                                     f"has {len(block)} branches; set laurel(unit=branch, branches={len(block)})")
                for b, f in enumerate(block):
                    out = f(x)
                    self._record_branch(i, b, x, out)
                    x, prev, t = self._combine(t, out, x, prev, ab), ([x] + prev)[: self.k - 1], t + 1
            else:
                h, fx = x, None
                for b, f in enumerate(block):
                    out = f(h)
                    self._record_branch(i, b, h, out)
                    fx = out if fx is None else fx + out  # f(x) = composite(x) - x, kept exact
                    if b + 1 < len(block):
                        h = h + out
                fx = torch.zeros_like(x) if fx is None else fx
                x, prev, t = self._combine(t, fx, x, prev, ab), ([x] + prev)[: self.k - 1], t + 1
            self._record_state(i + 1, x)
        return x
