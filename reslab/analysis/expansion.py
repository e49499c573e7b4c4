"""The Residual Expansion Theorem, measured: expansion terms, path census, norm growth, complexity.

Dherin & Munn 2025, "On residual network depth" (arXiv:2510.03470). A *residual tower* of n modules

    x_0 = x,   x_k = x_{k-1} + λ g_k(x_{k-1})   (k = 1..n),   f(x) = x_n

is, by a Taylor expansion in λ around 0 (our reconstruction: the paper's readable parts state the
theorem's properties, not this formula),

    f(x) = x + λ E_1(x) + λ² E_2(x) + λ³ E_3(x) + ...
    E_1 = Σ_k g_k(x)                                   n terms: paths through one module
    E_2 = Σ_{j<k} Dg_k(x)[g_j(x)]                      C(n, 2) terms: two-module paths
    E_3 = Σ_{i<j<k} Dg_k[Dg_j[g_i]] + ½ Σ_k Σ_{i,j<k} D²g_k[g_i, g_j]   (+ curvature terms)

so the tower is a hierarchical ensemble in which the C(n, k) paths of length k enter with weight
λ^k. Truncating after order K leaves an O(λ^{K+1}) error, and the total grows like (1 + λc)^n, which
is why λ = 1 needs normalisation while λ = 1/n (each level an average) or 1/sqrt(n) (for zero-mean
branches) does not.

What this module computes, for any tower of callables ``branches`` (each ``g(h) -> h``'s shape):

* :func:`tower` -- the exact composition.
* :func:`order_terms` -- E_1 and E_2 exactly, E_2 with one Jacobian-vector product per module
  (``torch.func.jvp``): by linearity Σ_{j<k} Dg_k[g_j] = Σ_k Dg_k[Σ_{j<k} g_j].
* :func:`taylor_terms` -- every order k <= K for any tower (any scales, any branches): the k-th
  Taylor coefficient of t -> tower(x; t·λ) at t = 0, by nesting ``jvp`` in the scalar t (2^K passes).
  At t = 1 the terms sum to f(x) - x when the series converges.
* :func:`truncation_study` -- the error after order 1 and after order 2 over a λ grid, with the
  log-log slopes (2 and 3 when the theorem holds).
* :func:`path_census` and :func:`order_contributions` -- C(n, k) and the measured size of each order.
* :func:`norm_growth` -- ‖x_n‖/‖x_0‖ at init for λ ∈ {1, 1/sqrt(n), 1/n}, coherent or zero-mean branches.
* :func:`geometric_complexity` -- GC(f, D) = mean_x ‖∂f(x)/∂x‖_F² (Dherin et al. 2022,
  arXiv:2209.13083), exact or by Hutchinson probes; :func:`gc_vs_lambda` at init.

``reslab analyze expansion --out DIR`` runs all four studies and writes tables (``expansion.md``,
``expansion.json``) and plots.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jvp

Branch = Callable[[Tensor], Tensor]
Scales = float | Sequence[float] | Sequence[Tensor]

LAMBDA_RULES = ("1", "1/sqrt(n)", "1/n")


# ------------------------------------------------------------------------------------ the tower

def _scales(lam: Scales, n: int) -> list:
    """One scale per module: a number broadcast to all, or a sequence of n (floats or tensors)."""
    if isinstance(lam, (int, float)) or (isinstance(lam, Tensor) and lam.ndim == 0):
        return [lam] * n
    lam = list(lam)
    if len(lam) != n:
        raise ValueError(f"got {len(lam)} scales for a tower of {n} modules; give one λ or exactly {n}")
    return lam


def tower(x: Tensor, branches: Sequence[Branch], lam: Scales = 1.0) -> Tensor:
    """Exact composition x_k = x_{k-1} + λ_k g_k(x_{k-1}); returns x_n."""
    for g, s in zip(branches, _scales(lam, len(branches))):
        x = x + s * g(x)
    return x


def order_terms(x: Tensor, branches: Sequence[Branch]) -> tuple[Tensor, Tensor]:
    """(E_1, E_2) at x: E_1 = Σ_k g_k(x), E_2 = Σ_{j<k} Dg_k(x)[g_j(x)] (λ-free; multiply by λ, λ²).

    Every derivative is taken at the tower's *input* x. E_2 uses n JVPs instead of C(n, 2): the
    inner sum Σ_{j<k} g_j(x) is the running prefix P_{k-1}, and Dg_k[P_{k-1}] is linear in it."""
    if not branches:
        raise ValueError("order_terms: the tower has no modules; give at least one branch")
    prefix = torch.zeros_like(x)  # P_{k-1} = Σ_{j<k} g_j(x)
    e2 = torch.zeros_like(x)
    for g in branches:
        gx, dg = jvp(g, (x,), (prefix,))
        e2 = e2 + dg
        prefix = prefix + gx
    return prefix, e2


def taylor_terms(x: Tensor, branches: Sequence[Branch], lam: Scales = 1.0, max_order: int = 3) -> list[Tensor]:
    """[c_1, ..., c_K] with c_k = λ^k E_k(x): the k-th Taylor term of t -> tower(x; t λ) at t = 0,
    evaluated at t = 1, so x + Σ_k c_k -> f(x) when the series converges.

    Computed by nesting forward-mode derivatives in the scalar t: level k differentiates the list of
    all lower derivatives once more (``jvp`` of a function returning a list), 2^K tower passes in
    all. Works for any differentiable branches and any per-module scales (learned λ included);
    ReLU branches have zero curvature, so only chain terms survive."""
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"taylor_terms: max_order must be an integer >= 1, got {max_order!r}")
    scales = _scales(lam, len(branches))
    t0 = torch.zeros((), dtype=x.dtype, device=x.device)

    def level(k: int) -> Callable[[Tensor], list[Tensor]]:
        if k == 0:
            return lambda t: [tower(x, branches, [t * s for s in scales])]

        def f(t: Tensor) -> list[Tensor]:
            primal, tangent = jvp(level(k - 1), (t,), (torch.ones_like(t),))
            return list(primal) + [tangent[-1]]
        return f

    derivs = level(max_order)(t0)
    return [derivs[k] / math.factorial(k) for k in range(1, max_order + 1)]


def _rms(t: Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


# ----------------------------------------------------------------------- truncation vs λ (item 1)

class TanhBranch(nn.Module):
    """g(h) = tanh(h W1 + b1) W2, a smooth branch for expansion checks (weights N(0, 1/fan_in),
    biases N(0, 0.1²)), drawn from ``generator`` so towers are reproducible."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator, dtype=torch.float64):
        super().__init__()
        def rnd(*shape, std):
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype) * std, requires_grad=False)
        self.w1, self.b1 = rnd(dim, hidden, std=dim ** -0.5), rnd(hidden, std=0.1)
        self.w2 = rnd(hidden, dim, std=hidden ** -0.5)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(h @ self.w1 + self.b1) @ self.w2


def random_tower(n: int, dim: int = 16, hidden: int | None = None, seed: int = 0) -> list[TanhBranch]:
    """n independent :class:`TanhBranch` modules (float64)."""
    if n < 1 or dim < 1:
        raise ValueError(f"random_tower: need n >= 1 modules and dim >= 1, got n={n}, dim={dim}")
    g = torch.Generator().manual_seed(seed)
    return [TanhBranch(dim, hidden or dim, g) for _ in range(n)]


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (the power p in y ∝ x^p); non-positive y are dropped."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(xs, ys) if a > 0 and b > 0 and math.isfinite(b)]
    if len(pts) < 2:
        return float("nan")
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])


def truncation_study(n: int = 8, dim: int = 16, lams: Sequence[float] | None = None, batch: int = 64,
                     seed: int = 0) -> dict:
    """Relative error of the order-1 and order-2 truncations of a random smooth tower over a λ grid:

        err_K(λ) = RMS(f(x) - x - Σ_{k<=K} λ^k E_k(x)) / RMS(x),   K = 1, 2,

    and the fitted log-log slopes, which the theorem predicts to be K + 1 (2 and 3)."""
    lams = list(lams) if lams is not None else [0.2 / 2 ** i for i in range(6)]
    if not lams or any(not (v > 0) for v in lams):
        raise ValueError(f"truncation_study: lams must be positive numbers, got {lams}")
    branches = random_tower(n, dim, seed=seed)
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    e1, e2 = order_terms(x, branches)
    rows = []
    for lam in sorted(lams, reverse=True):
        f = tower(x, branches, lam)
        r1 = f - x - lam * e1
        r2 = r1 - lam ** 2 * e2
        rows.append({"lam": lam, "err_order1": _rms(r1) / _rms(x), "err_order2": _rms(r2) / _rms(x)})
    slope1 = fit_slope([r["lam"] for r in rows], [r["err_order1"] for r in rows])
    slope2 = fit_slope([r["lam"] for r in rows], [r["err_order2"] for r in rows])
    return {"n": n, "dim": dim, "batch": batch, "seed": seed, "rows": rows,
            "slope_order1": slope1, "slope_order2": slope2, "expected": [2.0, 3.0],
            "ok": bool(abs(slope1 - 2) <= 0.3 and abs(slope2 - 3) <= 0.3)}


# ------------------------------------------------------------------------- path census (item 2)

def path_census(n: int, lam: float, max_order: int | None = None) -> list[dict]:
    """Paths of length k through a tower of n modules: C(n, k) of them (subsets of active modules,
    Veit et al. 2016), total 2^n, entering with weight λ^k; ``weight`` = C(n, k) λ^k is the size of
    level k when every path has unit size (Σ_k = (1 + λ)^n)."""
    if n < 0:
        raise ValueError(f"path_census: n must be >= 0, got {n}")
    top = n if max_order is None else min(n, max_order)
    return [{"k": k, "paths": math.comb(n, k), "weight": math.comb(n, k) * lam ** k} for k in range(top + 1)]


def order_contributions(x: Tensor, branches: Sequence[Branch], lam: Scales = 1.0, max_order: int = 3) -> dict:
    """Measured size of each expansion order at x: RMS of c_k = λ^k E_k, relative to RMS(f(x) - x)
    (what all modules add together), and the remainder after orders 1..K."""
    with torch.no_grad():
        f = tower(x, branches, lam)
    terms = taylor_terms(x, branches, lam, max_order)
    total = _rms(f - x) or 1.0
    rest = f - x
    rows = []
    for k, c in enumerate(terms, 1):
        rest = rest - c
        rows.append({"k": k, "rms": _rms(c), "relative": _rms(c) / total, "remainder_after": _rms(rest) / total})
    return {"rms_f_minus_x": _rms(f - x), "rms_x": _rms(x), "orders": rows}


def scaled_branches(conn, blocks) -> list[Branch]:
    """The modules φ(h) = s · g(h) that a tower-shaped connection adds, so that ``tower(h, φ)`` equals
    ``conn(h, blocks)``; the scales come from the connection's :meth:`branch_scales` (``residual``: 1,
    ``scaled``: its λ, ``rezero``/``skipinit``: learned scalars, ``layerscale``: per-channel vectors).
    Schemes that mix earlier states are not towers h <- h + s·g(h) and are refused."""
    scales = conn.branch_scales()
    if scales is None:
        raise ValueError(f"scaled_branches: connection {conn.spec!r} is not a tower h <- h + s·g(h) (it has no "
                         "branch_scales()); towers: residual, scaled, rezero, skipinit, layerscale")
    flat = [(j, b, f) for j, block in enumerate(blocks) for b, f in enumerate(block)]
    if scales.ndim == 3 and conn.channel_dim != -1:
        raise ValueError("scaled_branches: per-channel scales are supported for channels-last streams only")
    return [(lambda h, f=f, s=scales[j, b]: s.to(h.dtype) * f(h)) for j, b, f in flat]


def mlp_tower(model) -> tuple[Callable[[Tensor], Tensor], list[Branch], Callable[[Tensor], Tensor]]:
    """(embed, modules, readout) of a :class:`reslab.models.ResidualMLP`, with
    model(x) == readout(tower(embed(x), modules)) (see :func:`scaled_branches`)."""
    for attr in ("stem", "blocks", "connection", "head"):
        if not hasattr(model, attr):
            raise ValueError(f"mlp_tower: expected a ResidualMLP (stem, blocks, connection, head); {type(model).__name__} "
                             f"lacks {attr!r}")

    def embed(x: Tensor) -> Tensor:
        return model.stem(x.flatten(1) if model.flatten_input else x)

    return embed, scaled_branches(model.connection, model.blocks), model.head


def load_run(run_dir: str | Path, which: str = "final"):
    """(model, task, config) of a finished ``reslab train`` run in ``run_dir``: ``which="final"`` loads
    its checkpoint, ``"init"`` rebuilds the same model at initialisation (the trainer seeds torch with
    ``cfg.seed`` right before building it). The model is returned in eval mode."""
    from ..data import get_task
    from ..models import build_model
    from ..checkpoint import load_checkpoint
    from ..train import TrainConfig

    run = Path(run_dir)
    if which not in ("final", "init"):
        raise ValueError(f"load_run: which must be 'final' or 'init', got {which!r}")
    if not (run / "summary.json").exists():
        raise FileNotFoundError(f"load_run: {run} has no summary.json; train the run first (reslab train ... --out-dir {run})")
    cfg = TrainConfig(**json.loads((run / "summary.json").read_text())["config"])
    task = get_task(cfg.task, **cfg.task_args)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, task.info, cfg.connection, **cfg.model_args)
    if which == "final":
        model.load_state_dict(load_checkpoint(run / "checkpoint.pt", cfg)["model"])
    return model.eval(), task, cfg


# ------------------------------------------------------------------------- norm growth (item 3)

def parse_rule(rule: str, n: int) -> float:
    """λ of the rules ``1``, ``1/sqrt(n)``, ``1/n`` (or any number) for a tower of n modules."""
    if rule == "1/n":
        return 1.0 / n
    if rule == "1/sqrt(n)":
        return n ** -0.5
    try:
        return float(rule)
    except ValueError:
        raise ValueError(f"unknown λ rule {rule!r}; valid: 1/n, 1/sqrt(n) or a number") from None


def norm_growth(depths: Sequence[int] = (4, 16, 64, 256, 1024), rules: Sequence[str] = LAMBDA_RULES,
                branch: str = "zero_mean", dim: int = 128, batch: int = 64, seed: int = 0) -> list[dict]:
    """‖x_n‖/‖x_0‖ at init of an unnormalised tower x <- x + λ g_k(x), per depth n and λ rule.

    ``zero_mean``: g(h) = W2 ReLU(W1 h), W1 ~ N(0, 2/d) (He), W2 ~ N(0, 1/d): branch outputs are
    zero-mean and independent across modules, so E‖x_n‖² ≈ (1 + λ²c)^n ‖x‖², bounded at 1/sqrt(n).
    ``coherent``: g(h) = ReLU(W1 h): every branch adds a non-negative vector, the terms of each level
    add up coherently and ‖x_n‖ ~ (1 + λc)^n: only 1/n stays bounded.

    Both branches are positively homogeneous (g(a h) = a g(h), a > 0), so the tower is too and the
    stream can be renormalised after every module while the log of the norm is accumulated: exact,
    and free of overflow at λ = 1, n = 1024. Module k's weights are the same for every λ and n, so
    the rules are compared on the same random towers. Reports the geometric mean over ``batch``
    Gaussian inputs (``log10_ratio``) and the ratio itself (inf when it exceeds float64)."""
    if branch not in ("zero_mean", "coherent"):
        raise ValueError(f"norm_growth: branch must be 'zero_mean' or 'coherent', got {branch!r}")
    x0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = []
    for rule in rules:
        for n in depths:
            lam = parse_rule(rule, n)
            g = torch.Generator().manual_seed(seed + 1)  # module k gets the same weights in every run
            nrm0 = x0.norm(dim=1, keepdim=True)
            h, log_norm = x0 / nrm0, torch.zeros(batch, dtype=torch.float64)
            for _ in range(n):
                w1 = torch.randn(dim, dim, generator=g, dtype=torch.float64) * math.sqrt(2.0 / dim)
                w2 = torch.randn(dim, dim, generator=g, dtype=torch.float64) * math.sqrt(1.0 / dim)
                a = torch.relu(h @ w1)
                h = h + lam * (a @ w2 if branch == "zero_mean" else a)
                s = h.norm(dim=1, keepdim=True)
                log_norm += s.squeeze(1).log()
                h = h / s
            log10 = float(log_norm.mean()) / math.log(10)
            rows.append({"branch": branch, "rule": rule, "n": n, "lam": lam, "log10_ratio": log10,
                         "ratio": 10 ** log10 if log10 < 300 else float("inf")})
    return rows


# ------------------------------------------------------------------- geometric complexity (item 4)

def geometric_complexity(fn: Callable[[Tensor], Tensor], x: Tensor, probes: int = 0,
                         generator: torch.Generator | None = None, chunk: int = 256) -> float:
    """GC(f, D) = (1/|D|) Σ_{x∈D} ‖∂f(x)/∂x‖_F² (Dherin et al. 2022, arXiv:2209.13083), for an
    ``fn`` that treats samples independently (a model in eval mode).

    ``probes=0``: exact, one backward pass per output coordinate: ‖J‖_F² = Σ_c ‖∇_x f_c‖².
    ``probes=p``: Hutchinson's estimate E_v ‖Jᵀv‖², v ~ N(0, I), averaged over p probes."""
    if x.shape[0] == 0:
        raise ValueError("geometric_complexity: no inputs given")
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk].detach().clone().requires_grad_(True)
        out = fn(xb).reshape(xb.shape[0], -1)
        if probes:
            for _ in range(probes):
                v = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
                (gx,) = torch.autograd.grad(out, xb, v, retain_graph=True)
                total += float(gx.double().pow(2).sum()) / probes
        else:
            for c in range(out.shape[1]):
                (gx,) = torch.autograd.grad(out[:, c].sum(), xb, retain_graph=c + 1 < out.shape[1])
                total += float(gx.double().pow(2).sum())
    return total / x.shape[0]


def gc_vs_lambda(lams: Sequence[float], n_blocks: int = 16, width: int = 64, in_dim: int = 16, out_dim: int = 10,
                 activation: str = "relu", batch: int = 256, seeds: int = 3) -> list[dict]:
    """GC of an unnormalised ResidualMLP with ``scaled(lam=λ)`` at initialisation, per λ (the same
    weights for every λ of a seed), averaged over seeds. Inputs x ~ N(0, I)."""
    from ..models import ResidualMLP

    rows = []
    for lam in lams:
        vals = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = ResidualMLP(in_dim, out_dim, width=width, n_blocks=n_blocks, layernorm=False,
                                activation=activation, connection=f"scaled(lam={lam!r})").eval()
            x = torch.randn(batch, in_dim, generator=torch.Generator().manual_seed(1000 + seed))
            vals.append(geometric_complexity(model, x))
        rows.append({"lam": lam, "gc_mean": float(np.mean(vals)), "gc_std": float(np.std(vals)), "gc": vals})
    return rows


# ------------------------------------------------------------------------------------ reporting

def _figure(w: float = 6.5, h: float = 4.2, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h))
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def plot_truncation(study: dict, path: str | Path) -> None:
    fig, (ax,) = _figure()
    lams = [r["lam"] for r in study["rows"]]
    for key, slope, p in (("err_order1", study["slope_order1"], 2), ("err_order2", study["slope_order2"], 3)):
        ys = [r[key] for r in study["rows"]]
        line, = ax.loglog(lams, ys, "o-", label=f"after order {p - 1}: slope {slope:.2f} (theory {p})")
        ref = [ys[0] * (lam / lams[0]) ** p for lam in lams]
        ax.loglog(lams, ref, ":", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("λ")
    ax.set_ylabel("RMS truncation error / RMS(x)")
    ax.set_title(f"Residual expansion, random tanh tower (n={study['n']}, d={study['dim']})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_norm_growth(rows: list[dict], path: str | Path) -> None:
    kinds = sorted({r["branch"] for r in rows}, reverse=True)
    fig, axes = _figure(ncols=len(kinds))
    for ax, kind in zip(axes, kinds):
        for rule in dict.fromkeys(r["rule"] for r in rows):
            pts = [(r["n"], r["log10_ratio"]) for r in rows if r["branch"] == kind and r["rule"] == rule]
            ax.plot(*zip(*pts), "o-", label=f"λ = {rule}")
        ax.set_xscale("log")
        ax.set_xlabel("modules n")
        ax.set_ylabel("log10 ‖x_n‖ / ‖x_0‖")
        ax.set_title(f"{kind.replace('_', '-')} branches, init, no normalisation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_census(census: dict, path: str | Path) -> None:
    arms = list(census)
    fig, axes = _figure(ncols=len(arms), w=4.5)
    for ax, arm in zip(axes, arms):
        for state, offset in (("init", -0.2), ("trained", 0.2)):
            orders = census[arm][state]["orders"]
            ax.bar([o["k"] + offset for o in orders], [o["relative"] for o in orders], width=0.4, label=state)
        ax.set_yscale("log")
        ax.set_xlabel("order k")
        ax.set_ylabel("RMS(λ^k E_k) / RMS(f(x) − x)")
        ax.set_title(arm, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_gc(rows: list[dict], path: str | Path, n: int) -> None:
    fig, (ax,) = _figure()
    lams = [r["lam"] for r in rows]
    ax.errorbar(lams, [r["gc_mean"] for r in rows], yerr=[r["gc_std"] for r in rows], fmt="o-")
    for v, lbl in ((1 / n, "1/n"), (n ** -0.5, "1/√n"), (1.0, "1")):
        ax.axvline(v, ls=":", color="grey")
        ax.text(v, ax.get_ylim()[1], lbl, ha="center", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel("geometric complexity  E‖∂f/∂x‖_F²")
    ax.set_title(f"GC at init, ResidualMLP without normalisation (n={n})")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _fmt(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.3g}"


def report_markdown(res: dict) -> str:
    """The tables of :func:`run_all`'s result as markdown."""
    out = ["# Residual expansion analysis (Dherin & Munn 2025, arXiv:2510.03470)\n"]
    if "truncation" in res:
        t = res["truncation"]
        out += [f"## 1. Truncation error vs λ (random tanh tower, n={t['n']}, d={t['dim']}, float64)\n",
                "| λ | error after order 1 | error after order 2 |", "|---|---|---|"]
        out += [f"| {r['lam']:.4g} | {r['err_order1']:.3e} | {r['err_order2']:.3e} |" for r in t["rows"]]
        out += ["", f"Fitted log-log slopes: order 1 **{t['slope_order1']:.2f}** (theory 2), order 2 "
                    f"**{t['slope_order2']:.2f}** (theory 3): {'consistent' if t['ok'] else 'NOT consistent'} "
                    "with the theorem (tolerance ±0.3). ![truncation](truncation.png)\n"]
    if "census" in res:
        c = res["census"]
        out += [f"## 2. Path census and measured order contributions (ResidualMLP, n={c['n']} modules, "
                f"{c['task']}, {c['steps']} training steps)\n",
                "Paths of length k: C(n, k) (total 2^n). Contribution of order k: RMS(λ^k E_k) / RMS(f(x) − x) "
                "on the stream, on validation inputs; the last column is what orders 1..K leave: "
                "RMS(f(x) − x − Σ_k λ^k E_k) / RMS(f(x) − x).\n"]
        arms = list(c["arms"])
        K = len(c["census"]) - 1
        out += ["| | " + " | ".join(f"order {k}" for k in range(1, K + 1)) + f" | remainder after {K} |",
                "|---|" + "---|" * (K + 1),
                "| paths C(n, k) | " + " | ".join(str(r["paths"]) for r in c["census"][1:]) + " | |"]
        for a in arms:
            for s in ("init", "trained"):
                orders = c["arms"][a][s]["orders"]
                out.append(f"| `{a}` {s} | " + " | ".join(_fmt(o["relative"]) for o in orders)
                           + f" | {_fmt(orders[-1]['remainder_after'])} |")
        if arms:
            out += ["", "Final validation MSE after training: "
                    + ", ".join(f"`{a}` {c['arms'][a]['final_val_loss']:.4g}" for a in arms) + "."]
        out += ["", "![census](census.png)\n"]
    if "growth" in res:
        g = res["growth"]
        depths = sorted({r["n"] for r in g})
        out += ["## 3. Output-norm growth at init, no normalisation: ‖x_n‖/‖x_0‖ (geometric mean over inputs)\n"]
        for kind in ("zero_mean", "coherent"):
            rows = [r for r in g if r["branch"] == kind]
            if not rows:
                continue
            out += [f"**{kind.replace('_', '-')} branches**\n", "| n | " + " | ".join(f"λ = {q}" for q in LAMBDA_RULES) + " |",
                    "|---|" + "---|" * len(LAMBDA_RULES)]
            for n in depths:
                cells = [next((_fmt(r["ratio"]) if r["ratio"] != float("inf") else f"1e{r['log10_ratio']:.0f}"
                               for r in rows if r["n"] == n and r["rule"] == q), "—") for q in LAMBDA_RULES]
                out.append(f"| {n} | " + " | ".join(cells) + " |")
            out.append("")
        out.append("![norm growth](norm_growth.png)\n")
    if "gc" in res:
        gc = res["gc"]
        out += [f"## 4. Geometric complexity vs λ at init (ResidualMLP, n={gc['n_blocks']}, width {gc['width']}, "
                f"{gc['activation']}, no normalisation, {gc['seeds']} seeds)\n", "| λ | GC mean ± std |", "|---|---|"]
        out += [f"| {r['lam']:.4g} | {r['gc_mean']:.4g} ± {r['gc_std']:.2g} |" for r in gc["rows"]]
        out += ["", "![gc](gc_lambda.png)\n"]
    return "\n".join(out)


def census_study(out_dir: Path, connections: Sequence[str], n_blocks: int = 8, width: int = 64, steps: int = 300,
                 max_order: int = 4, seed: int = 0, log=print) -> dict:
    """Train a tanh ResidualMLP without normalisation on the synthetic ``teacher`` task with each
    connection, then measure the order contributions of its stream tower at init and after training."""
    from ..compare import slug
    from ..train import TrainConfig, TrainingDiverged, train

    arms = {}
    for spec in connections:
        run = out_dir / "census_runs" / slug(spec)
        cfg = TrainConfig(task="teacher", task_args={"in_dim": 16, "n_train": 2048, "n_val": 512}, model="mlp",
                          model_args={"width": width, "n_blocks": n_blocks, "layernorm": False, "activation": "tanh"},
                          connection=spec, steps=steps, batch_size=64, lr=1e-3, warmup_steps=min(20, steps // 5),
                          weight_decay=0.0, eval_every=steps, eval_batches=4, seed=seed, out_dir=str(run),
                          resume=False, progress=False, tensorboard=False)
        log(f"[census] training {spec} for {steps} steps ...")
        try:
            summary = train(cfg)
        except TrainingDiverged as e:
            log(f"[census] {spec} diverged ({e}); skipped")
            continue
        arms[spec] = {"final_val_loss": summary["final_val_loss"]}
        for which, state in (("init", "init"), ("final", "trained")):
            model, task, _ = load_run(run, which)
            embed, modules, _ = mlp_tower(model)
            with torch.no_grad():
                h = embed(task.val_x[:256])
            arms[spec][state] = order_contributions(h, modules, 1.0, max_order)
    return {"n": n_blocks, "task": "teacher (16-d Gaussian inputs, tanh teacher)", "steps": steps,
            "census": path_census(n_blocks, 1.0 / n_blocks, max_order), "arms": arms}


PARTS = ("truncation", "census", "growth", "gc")


def run_all(out_dir: str | Path, parts: Sequence[str] = PARTS, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Run the chosen studies, write ``expansion.json``, ``expansion.md`` and plots into ``out_dir``."""
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"unknown part(s) {bad}; valid: {', '.join(PARTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    if "truncation" in parts:
        res["truncation"] = truncation_study(n=8, dim=16, seed=seed)
        plot_truncation(res["truncation"], out / "truncation.png")
        log(f"truncation slopes: {res['truncation']['slope_order1']:.2f} (2), {res['truncation']['slope_order2']:.2f} (3)")
    if "census" in parts:
        conns = ["scaled(lam=1/n)", "scaled(lam=1/sqrt(n))", "residual"]
        census = census_study(out, conns, steps=40 if quick else 300, max_order=3 if quick else 4, seed=seed, log=log)
        res["census"] = census
        if census["arms"]:
            plot_census(census["arms"], out / "census.png")
    if "growth" in parts:
        depths = (4, 16, 64) if quick else (4, 16, 64, 256, 1024)
        dim = 32 if quick else 128
        res["growth"] = [r for kind in ("zero_mean", "coherent")
                         for r in norm_growth(depths, branch=kind, dim=dim, seed=seed)]
        plot_norm_growth(res["growth"], out / "norm_growth.png")
    if "gc" in parts:
        n = 16
        lams = [n ** (-1 + i / 4) for i in range(7)]  # 1/n ... 1/sqrt(n) (i=2) ... 1 (i=4) ... sqrt(n)
        seeds = 1 if quick else 3
        res["gc"] = {"n_blocks": n, "width": 64, "activation": "relu", "seeds": seeds,
                     "rows": gc_vs_lambda(lams, n_blocks=n, seeds=seeds, batch=64 if quick else 256)}
        plot_gc(res["gc"]["rows"], out / "gc_lambda.png", n)
    from ..checkpoint import atomic_write_json

    atomic_write_json(out / "expansion.json", res)
    (out / "expansion.md").write_text(report_markdown(res))
    log(f"wrote {out / 'expansion.md'}, {out / 'expansion.json'} and plots")
    return res


def _cmd(args: argparse.Namespace) -> int:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts != "all" else list(PARTS)
    run_all(args.out, parts, seed=args.seed, quick=args.quick)
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser(
        "expansion", help="Residual Expansion Theorem: truncation error vs λ, path census, norm growth, GC vs λ",
        description="Measure the residual expansion of Dherin & Munn 2025 (arXiv:2510.03470) and write "
                    "tables (expansion.md/.json) and plots to --out.")
    p.add_argument("--out", default="runs/analyze/expansion", help="output folder")
    p.add_argument("--parts", default="all", help=f"comma-separated subset of {', '.join(PARTS)} (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for a smoke test")
    p.set_defaults(func=_cmd)


__all__ = ["LAMBDA_RULES", "PARTS", "TanhBranch", "census_study", "cli_register", "fit_slope", "gc_vs_lambda",
           "geometric_complexity", "load_run", "mlp_tower", "norm_growth", "order_contributions", "order_terms",
           "parse_rule", "path_census", "random_tower", "report_markdown", "run_all", "scaled_branches",
           "taylor_terms", "tower", "truncation_study"]
