"""Learned topology: routing matrices, their heatmaps, effective depth, and layer-drop sensitivity.

Routing matrix conventions. A routing matrix is K x (K+1) (K = n_blocks): row j-1 belongs to step
j = 1..K, column i to the state h_i (h_0 = the stack's input). Two readings occur:

* ``shortcut`` (ancre, residual): R[j-1, i] for i < j is the weight of h_i in the shortcut sum added
  to block j's output, h_j = B_j(h_{j-1}) + sum_i R[j-1, i] h_i. Entries with i >= j are zero.
  ``residual`` is the cascaded one-hot R[j-1, j-1] = 1 read with plain blocks (ANCRe's form=theory):
  h_j = f_j(h_{j-1}) + h_{j-1}. That is the only derived matrix; schemes without a "routing"
  coefficient are left out rather than guessed (e.g. ``plain`` has no shortcut to route, and scaled
  or gated schemes weight branches, not earlier states).
* ``dwa`` (denseformer): R[j-1, i] for i <= j is alpha_{j,i}, the weight of the block output h_i in
  the stream x_j = sum_i R[j-1, i] h_i that the next block reads (x_K is the stack's output).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .record import connections_of


def _conventions(model: nn.Module) -> dict[str, tuple[str, float]]:
    """Per connection with a routing matrix: (convention, block_edge) for :func:`effective_depth`."""
    out = {}
    for name, c in connections_of(model).items():
        r = c.routing()
        if r is not None:
            out[name] = (r[1], r[2])
    return out


def routing_matrix(model: nn.Module) -> dict[str, np.ndarray]:
    """{connection name: K x (K+1) routing matrix} for every connection inside ``model`` (a model or a
    single Connection) that routes earlier states (asked through ``Connection.routing()``); see the
    module docstring for the two conventions."""
    out = {}
    for name, c in connections_of(model).items():
        r = c.routing()
        if r is not None:
            out[name] = r[0].detach().float().cpu().numpy()
    return out


def plot_routing(matrix, path, title: str = "routing") -> str:
    """Heatmap of a K x (K+1) routing matrix, written to ``path`` (PNG by extension). Uses matplotlib's
    Agg canvas directly, so it never touches the global pyplot backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[1] != m.shape[0] + 1:
        raise ValueError(f"plot_routing: expected a K x (K+1) matrix, got shape {m.shape}")
    K = m.shape[0]
    fig = Figure(figsize=(1.2 + 0.45 * (K + 1), 1.0 + 0.45 * K))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lim = float(np.abs(m).max()) or 1.0
    signed = bool((m < 0).any())
    im = ax.imshow(m, cmap="RdBu_r" if signed else "viridis", vmin=-lim if signed else 0.0, vmax=lim)
    ax.set_xticks(range(K + 1))
    ax.set_yticks(range(K), labels=[str(j) for j in range(1, K + 1)])
    ax.set_xlabel("source i (h_i; 0 = stack input)")
    ax.set_ylabel("destination j")
    ax.set_title(title)
    if K <= 12:  # values are readable only on small matrices
        for (r, c), v in np.ndenumerate(m):
            if v != 0:
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) < 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return str(path)


def effective_depth(P, convention: str = "auto", block_edge: float = 0.0) -> float:
    """Expected number of block hops on a path from h_0 to the stack's output, when each state picks
    one of its incoming edges at random in proportion to the edge weights (a random walk backwards
    from the output; nodes are visited in order, so this is exact dynamic programming).

    ``shortcut`` convention (ancre, residual): every edge i -> j (weight R[j-1, i], i < j) is one hop,
    and block j may also carry h_{j-1} itself with weight ``block_edge`` (1 for ANCRe form=repo, whose
    blocks keep their inner residual; 0 for plain blocks). With w the incoming weights of j divided by
    their sum: d_0 = 0, d_j = sum_i w_ij (d_i + 1), result d_K. Cascaded one-hot -> K; a lone 0 -> K
    skip -> 1; ANCRe repo-form one-hot cascade -> K as well.

    ``dwa`` convention (denseformer): h_j = B_j(x_{j-1}) is one hop past x_{j-1}, and x_j is a zero-hop
    mix with weights |alpha_{j,i}| / sum_i |alpha_{j,i}| (alphas may be negative): d(h_0) = 0,
    d(h_j) = 1 + D(x_{j-1}), D(x_0) = 0, D(x_j) = sum_i w_ji d(h_i), result D(x_K). Identity -> K.

    ``auto`` picks ``dwa`` when some R[j-1, j] is non-zero (only DWA rows reach column j), else
    ``shortcut``. A state with no incoming weight is unreachable; the result is NaN if the output
    depends on one.
    """
    m = np.abs(np.asarray(P, dtype=float))
    if m.ndim != 2 or m.shape[1] != m.shape[0] + 1:
        raise ValueError(f"effective_depth: expected a K x (K+1) routing matrix, got shape {m.shape}")
    K = m.shape[0]
    if convention == "auto":
        convention = "dwa" if K and np.any(m[np.arange(K), np.arange(1, K + 1)]) else "shortcut"
    if convention not in ("shortcut", "dwa"):
        raise ValueError(f"effective_depth: convention must be auto, shortcut or dwa, got {convention!r}")

    def mix(weights: np.ndarray, depth: list[float]) -> float:
        tot = weights.sum()
        if tot == 0:
            return float("nan")
        nz = np.nonzero(weights)[0]  # skip zero-weight sources, whose depth may be NaN
        return float(sum(weights[i] * depth[i] for i in nz) / tot)

    if convention == "shortcut":
        if K and np.any(np.triu(m, 1)):
            raise ValueError("effective_depth: shortcut convention needs R[j-1, i] = 0 for i >= j; "
                             "use convention='dwa' for a DenseFormer matrix")
        d = [0.0]
        for j in range(1, K + 1):
            w = m[j - 1, :j].copy()
            w[j - 1] += block_edge
            d.append(mix(w, [x + 1.0 for x in d]))
        return d[K] if K else 0.0
    dh, dx = [0.0], 0.0  # d(h_0), D(x_0)
    for j in range(1, K + 1):
        dh.append(1.0 + dx)
        dx = mix(m[j - 1, :j + 1], dh)
    return dx


@contextmanager
def lesioned(conn, blocks: Iterable[int]):
    """Temporarily delete the branches of ``blocks`` (0-based) in one connection."""
    before = conn._lesioned
    conn._lesioned = frozenset(int(b) for b in blocks)
    try:
        yield conn
    finally:
        conn._lesioned = before


def layer_drop_sensitivity(model: nn.Module, loss_fn: Callable, batches) -> dict[str, np.ndarray]:
    """{connection name: array (K,)} of loss(block j lesioned) - loss(intact) for every block j of
    every connection in ``model``, one block at a time (the "delete the residual branch" lesion of
    Veit et al. 2016, via the lesion switch that ``Connection.step`` honours). ``loss_fn(model, batch)`` returns a scalar
    loss; losses are averaged over ``batches``. Runs in eval mode under no_grad; the model's mode and
    lesions are restored afterwards."""
    batches = list(batches)
    if not batches:
        raise ValueError("layer_drop_sensitivity: no batches given; pass e.g. task.fixed_batches('val', 4, 32)")
    conns = connections_of(model)
    if not conns:
        raise ValueError("layer_drop_sensitivity: the model contains no reslab Connection")

    def mean_loss() -> float:
        return float(np.mean([float(loss_fn(model, b)) for b in batches]))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base = mean_loss()
            out = {}
            for name, c in conns.items():
                deltas = []
                for j in range(c.n_blocks):
                    with lesioned(c, [j]):
                        deltas.append(mean_loss() - base)
                out[name] = np.asarray(deltas, dtype=float)
    finally:
        model.train(was_training)
    return out


def sensitivity_summary(deltas) -> dict[str, float]:
    """Depth utilisation of a sensitivity profile (does a net use its late blocks?): ``late_share``, the share of total
    (negative deltas clipped to 0) falling on the last half of the blocks (the middle block of an odd
    K counts half), and ``entropy``, its normalised entropy in [0, 1] (1 = every block matters equally)."""
    s = np.clip(np.asarray(deltas, dtype=float), 0.0, None)
    K, tot = len(s), s.sum()
    if K == 0 or tot == 0:
        return {"late_share": float("nan"), "entropy": float("nan")}
    w = np.where(np.arange(K) >= K / 2, 1.0, 0.0)
    if K % 2:
        w[K // 2] = 0.5
    q = s / tot
    ent = -np.sum(q[q > 0] * np.log(q[q > 0])) / np.log(K) if K > 1 else 1.0
    return {"late_share": float((w * s).sum() / tot), "entropy": float(ent)}


def effective_depths(model: nn.Module) -> dict[str, float]:
    """:func:`effective_depth` of every routing matrix in ``model``, with each scheme's convention."""
    conv = _conventions(model)
    return {name: effective_depth(R, *conv.get(name, ("auto", 0.0))) for name, R in routing_matrix(model).items()}
