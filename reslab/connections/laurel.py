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
  the reading of "one LAuReL per layer" that keeps one instance per block. unit=branch: one instance
  per branch, PA history over branch inputs; the parameters are built in __init__, so the branch count
  comes from reslab.connection()'s branches_per_block (set by the model) or from laurel(unit=branch,
  branches=N).
  branches is ignored under unit=block, so one spec can switch placement for an ablation.
- Evaluation, not a choice of model: where D <= 2r the rank-r map is applied as one dense W = A B (cheaper than
  two thin maps there), and LR without PA as x (I + W) diag(beta); equal up to rounding (see _dense).
Per-instance parameters live in stacked tensors (rw_w: (n, 2[, D]), lr_A: (n, D, r), pa_A: (n, k, D, r)...).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Connection, stream_precision
from .registry import Option, register

PAPER = "Menghani, Kumar, Kumar, ICML 2025, LAuReL (arXiv:2411.07501)"
PARAMS = ("per instance (n_blocks, or n_blocks*branches with unit=branch): RW 2 (2D per-channel; single 1, "
          "D per-channel), LR 2rD, PA k (identity) or 2rkD+k (lowrank), RW+LR 2+2rD, LR+PA 2rkD+k, "
          "RW+LR+PA 2+2rkD+k")


@torch.compiler.assume_constant_result  # a setting, not data: read when torch.compile traces, like a config
def _float32_products_exact() -> bool:
    """Whether float32 matrix products run at float32 precision (no TF32 / bf16 reductions)."""
    return torch.get_float32_matmul_precision() == "highest"


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


def _variant(opts: dict) -> tuple[bool, bool, bool]:
    """(rw, lr, pa); a bare ``laurel`` is RW+LR, the paper's eq. 5 combination that it reports for its LLMs."""
    if not (opts["rw"] or opts["lr"] or opts["pa"]):
        return True, True, False
    return bool(opts["rw"]), bool(opts["lr"]), bool(opts["pa"])


def _param_count(opts: dict, shape) -> int:
    n = shape.n_blocks * (shape.branches if opts["unit"] == "branch" else 1)
    return laurel_extra_params(*_variant(opts), opts["rank"], opts["k"], shape.dim, n,
                               opts["rw_param"], opts["rw_per_channel"], opts["pa_map"])


def _check(opts: dict, shape) -> None:
    _, lr, pa = _variant(opts)
    _resolve_pa_map(lr, pa, opts["pa_map"])
    # A rank above the width adds parameters but no rank; the bound keeps a typo (rank=1000000) from
    # allocating gigabytes, and max(D, 16) lets the default rank build on small test nets.
    if opts["rank"] > max(shape.dim, 16):
        raise ValueError(f"laurel: rank={opts['rank']} exceeds the stream's width D={shape.dim}; a low-rank map "
                         f"has rank <= D, e.g. laurel(lr, rank={min(16, shape.dim)})")


@register("laurel", paper=PAPER, params=PARAMS, summary="LAuReL: alpha*f(x) + learned linear g(x, x_{i-1}, ...)",
          example="laurel(rw, lr)", param_count=_param_count,
          variants=("laurel(rw)", "laurel(lr, rank=4)", "laurel(pa)", "laurel(rw, lr, pa, rank=4)",
                    "laurel(rw, rw_per_channel, rw_param=sigmoid)", "laurel(rw, unit=branch)",
                    "laurel(rw, rw_param=single)", "laurel(rw, rw_param=free)"), check=_check, starts_as_residual=True,
          coefficients={"alpha": "(n,) or (n, D) weight of f(x) per instance (with rw)",
                        "beta": "(n,) or (n, D) weight of g(x) per instance (with rw)",
                        "gamma": "(n, k) weights of the previous activations (with pa)",
                        "lr_norm": "(n,) Frobenius norm of the low-rank map A B per instance (with lr, without pa)"},
          per_branch=False,
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
              Option("k", "int", 3, "previous activations used by PA (j = 0 is the current input)", min=1, max=64),
              Option("pa_map", "choice", "auto", "h_j: auto = lowrank with lr, else identity",
                     choices=("auto", "identity", "lowrank")),
              Option("unit", "choice", "block", "one instance per block or per branch", choices=("block", "branch")),
              Option("branches", "int", 1, "branches per block for unit=branch; reslab.connection() fills it from the model", min=1, max=64),
          ])
class Laurel(Connection):
    """LAuReL: x_{i+1} = alpha f(x_i) + g(x_i, x_{i-1}, ...), variants RW, LR, PA and their combinations."""

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1, *, rw=False, lr=False, pa=False,
                 rw_param="softmax2", rw_per_channel=False, rank=16, lr_init="column_orthogonal", k=3,
                 pa_map="auto", unit="block", branches=1):
        super().__init__(n_blocks, dim, channel_dim)
        rw, lr, pa = _variant({"rw": rw, "lr": lr, "pa": pa})
        self.rw, self.lr, self.pa, self.rw_param, self.unit = rw, lr, pa, rw_param, unit
        self.rank, self.k, self.branches = int(rank), int(k), int(branches)
        self.branches_per_block = self.branches
        self.per_branch = unit == "branch"  # one instance per branch: every block must have `branches` of them
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

    def _branches_spec(self, n: int) -> str:
        return f"laurel(unit=branch, branches={n})"

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
        elif self.lr:  # how far each low-rank map has moved from 0 (B starts at 0)
            out["lr_norm"] = torch.linalg.matrix_norm(self.lr_A.detach() @ self.lr_B.detach())
        return out

    @staticmethod
    def _dense(A: Tensor) -> bool:
        """Whether the map A B (A: D x r) is applied as one dense D x D matrix W = A B: when D <= 2r, two thin
        maps cost at least as much as one dense map per position (2Dr >= D^2 multiply-adds, forward and again
        twice backward; forming W adds D^2 r once per step, not per position), and the r-channel intermediate
        x A is not kept. The function is the same (equal up to rounding), and A and B get their gradients
        through W. The paper's ResNet ranks (16-32) hit this on ResNet-20's 16- and 32-channel stages
        (results/bench-overhead/NOTES.md, 2026-12-03)."""
        return A.shape[-2] <= 2 * A.shape[-1]

    @staticmethod
    def _can_fold_skip(x: Tensor) -> bool:
        """Whether the skip x itself may go through a matrix product (:meth:`_scaled_skip`'s fold): only where
        float32 products keep float32's precision. Under TF32 or bf16 matmul reductions
        (``torch.set_float32_matmul_precision("high"/"medium")``) the product would round the stream itself,
        which ``x + ...`` never does."""
        return x.dtype == torch.float64 or _float32_products_exact()

    def _channel_map(self, h: Tensor, M: Tensor) -> Tensor:
        """h M along the channel axis (M: D_in x D_out), for (B, T, D) and (B, C, H, W) alike."""
        cd = self.channel_dim % h.ndim
        if cd == h.ndim - 1:
            return h @ M
        # channels inside (NCHW): on an (N, C, H*W) view, einsum applies M^T to every sample's (C x H*W) slab as
        # one batched product -- half the time of movedim + matmul, which copies h and runs N small products
        hv = h.reshape(math.prod(h.shape[:cd]), h.shape[cd], -1)
        return torch.einsum("cd,ncp->ndp", M, hv).reshape(h.shape[:cd] + M.shape[-1:] + h.shape[cd + 1:])

    def _lowrank(self, h: Tensor, A: Tensor, B: Tensor) -> Tensor:
        """(h A) B along the channel axis: down- then up-projection, or h (A B) when that is cheaper
        (:meth:`_dense`). A and B are cast to the stream's dtype (a float64 analysis stream, a bf16 autocast one)."""
        A, B = A.to(h.dtype), B.to(h.dtype)
        if self._dense(A):
            return self._channel_map(h, A @ B)
        return self._channel_map(self._channel_map(h, A), B)

    def _scaled_skip(self, x: Tensor, t: int, b: Tensor | None) -> Tensor:
        """b (x + lr(x)) for LR without PA (b = None: no RW). With a dense map (:meth:`_dense`) the identity and
        beta are folded into it, x (I + A B) diag(b), so one product replaces the product, the sum and the
        scaling, and beta's gradient is a D x D reduction instead of one over the whole activation. The product
        runs with autocast off (``stream_precision``), as the stream's own arithmetic must: under bf16 autocast
        it would otherwise round the stream to bf16; where even float32 products would round it
        (:meth:`_can_fold_skip`), the skip stays an add."""
        A, B = self.lr_A[t], self.lr_B[t]
        if not (self._dense(A) and self._can_fold_skip(x)):
            g = x + self._lowrank(x, A, B)
            return g if b is None else self.scale_channels(b, g)
        with stream_precision(x):
            A, B = A.to(x.dtype), B.to(x.dtype)
            M = torch.eye(A.shape[0], dtype=x.dtype, device=x.device) + A @ B
            if b is not None:
                M = M * b  # b: () or (D,), already in the stream's dtype (_combine), scales M's columns (output channels)
            return self._channel_map(x, M)

    def _combine(self, t: int, fx: Tensor, x: Tensor, prev: tuple[Tensor, ...], ab) -> Tensor:
        """Instance t: alpha f + beta g, with g = x [+ lr(x)] [+ sum_j gamma_j h_j(x_{t-j})]."""
        a = b = None
        if self.rw:
            a, b = ab[0][t].to(x.dtype), ab[1][t].to(x.dtype)
        if self.lr and not self.pa:
            return (fx if a is None else self.scale_channels(a, fx)) + self._scaled_skip(x, t, b)
        g = x
        if self.pa:
            gamma = self.pa_gamma[t].to(x.dtype)
            for j, h in enumerate((x,) + prev):  # prev holds at most k-1 earlier inputs, newest first
                if self.pa_map == "lowrank":
                    h = self._lowrank(h, self.pa_A[t, j], self.pa_B[t, j])
                g = g + gamma[j] * h
        if not self.rw:
            return fx + g
        return self.scale_channels(a, fx) + self.scale_channels(b, g)

    # -- the steps. state = (x: the current instance's input, h: the running stream inside a block
    #    (unit=block; kept as the pair (input, output) of the last branch until a next branch reads it, so a
    #    block's last branch pays no add that nothing uses), fx: the block's f(x) so far, prev: earlier instance
    #    inputs newest first, ab) -------------------------------------------------------------------------------
    def start(self, x0):
        return x0, x0, None, (), (self.alpha_beta() if self.rw else None)

    def branch_input(self, state, k, b):
        if self.unit == "branch":
            return state[0]
        h = state[1]
        return h[0] + h[1] if isinstance(h, tuple) else h

    def branch_output(self, state, k, b, x, out):
        x0, h, fx, prev, ab = state
        if self.unit == "branch":
            new = self._combine(k * self.branches + b, out, x0, prev, ab)
            return new, new, None, ((x0,) + prev)[: self.k - 1], ab
        # unit=block: f(x) = composite(x) - x, kept exact as the sum of the branch outputs; the running stream is
        # x + out (x: what this branch read), formed by branch_input only if a next branch of the block reads it
        return x0, (x, out), (out if fx is None else fx + out), prev, ab

    def end_block(self, state, k):
        if self.unit == "branch":
            return state
        x0, h, fx, prev, ab = state
        new = self._combine(k, torch.zeros_like(x0) if fx is None else fx, x0, prev, ab)
        return new, new, None, ((x0,) + prev)[: self.k - 1], ab

    def finish(self, state):
        return state[0]

    def map_stream(self, state, fn):
        # between blocks the current input is the stream; earlier inputs (PA's history) were mapped when current
        y = fn(state[0])
        return y, y, None, state[3], state[4]
