"""Dissipating inputs: how much of the input survives each non-linear layer (PNNH paper, §3).

Zhang, Yan, Li, Chen, "Peeking Behind the Curtains of Residual Learning" (arXiv:2402.08645) argue
that a plain net loses its input layer after layer (ReLU discards every negative response), that a
residual connection keeps a better lower bound on the neurons that survive, and that what matters
is an internal path across the non-linearities. Per layer l, with x the layer's input and
y = W x (+ ...) the pre-activation of its ReLU, this module measures:

- **surviving-neuron ratio** P(y > 0): the fraction of pre-activations the ReLU keeps.
- **Theorem 3.2 statistics**: E[y] / E[x] and E[y^2] / E[x^2]. Under He init W ~ N(0, 2/fan_in) and
  x independent of W: a plain layer y = W x has E[y] = 0 and E[y^2] = fan_in (2/fan_in) E[x^2]
  = 2 E[x^2], i.e. (0, 2); the post-activation residual y = x + W x has E[y] = E[x] and
  E[y^2] = E[x^2] + 2 E[x^2] = 3 E[x^2] (the cross term has mean 0 over W), i.e. (1, 3).
- **Cantelli lower bound** (the paper's Theorem 3.3 uses the Chebyshev-Cantelli inequality; the
  form here is our reconstruction): for Y with mean mu > 0 and variance s^2,
  P(Y <= 0) <= s^2 / (s^2 + mu^2), so P(Y > 0) >= mu^2 / (mu^2 + s^2); 0 when mu <= 0. Computed
  from the measured moments of the pooled pre-activations (every unit, every sample). Cantelli
  holds for any distribution, the empirical one included, so the measured ratio is never below it.
- **input preservation**, our stand-in for the paper's DISTS (which needs pretrained VGG weights):
  (a) held-out R^2 of a ridge probe that reconstructs the network input from layer l's
  representation; (b) mean pairwise cosine between the representations of different inputs
  (-> 1 when every input maps to the same direction: the input has degenerated).

Works on any model: one that defines ``diagnostic_layers()`` (modules whose outputs are the
per-layer representations, each holding one ``nn.ReLU``; PNNH models and :class:`ProbeNet`) or,
otherwise, every ``nn.ReLU`` module in call order (representation = the ReLU's output, input of
layer l = output of layer l-1). :class:`ProbeNet` builds the four networks the claims are about
(plain, post-activation residual, scaled residual, PNNH) at He init.

CLI: ``reslab analyze dissipation --depth 50 --kinds plain,residual,scaled,pnnh [--train-steps N]``
or ``reslab analyze dissipation --run RUN_DIR`` (a finished ``reslab train`` run, after training).
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

# the four networks of the claims are a model family (model name "probe"); re-exported here, where they are used
from ..models.probe import KINDS, ProbeNet  # noqa: F401

#: Theorem 3.2 under He init: (E[y]/E[x], E[y^2]/E[x^2]) for the plain and post-activation residual layer
THEOREM_3_2 = {"plain": (0.0, 2.0), "residual": (1.0, 3.0)}


# ----------------------------------------------------------------------------------- statistics

def cantelli_bound(mean: float, var: float) -> float:
    """Lower bound on P(Y > 0) for a variable with this mean and variance: mu^2/(mu^2 + s^2) if mu > 0, else 0."""
    if not mean > 0:
        return 0.0
    return 1.0 if var <= 0 else mean * mean / (mean * mean + var)


def preactivation_stats(pre: Tensor, inp: Tensor) -> dict:
    """Survival ratio, moments, Theorem 3.2 ratios and the Cantelli bound of a layer whose ReLU input
    is ``pre`` and whose input is ``inp`` (any shapes; pooled over every element)."""
    pre, inp = pre.detach().double(), inp.detach().double()
    mean, m2 = float(pre.mean()), float(pre.pow(2).mean())
    var = max(m2 - mean * mean, 0.0)
    in_mean, in_m2 = float(inp.mean()), float(inp.pow(2).mean())
    return {"survival": float((pre > 0).double().mean()), "pre_mean": mean, "pre_m2": m2, "pre_var": var,
            "in_mean": in_mean, "in_m2": in_m2,
            "mean_ratio": mean / in_mean if in_mean != 0 else float("nan"),
            "m2_ratio": m2 / in_m2 if in_m2 > 0 else float("nan"),
            "cantelli": cantelli_bound(mean, var)}


def mean_pairwise_cosine(feats: Tensor) -> float:
    """Mean cosine over all pairs i != j of rows of ``feats`` (N, ...): (||sum_i r_i||^2 - N) / (N (N-1))
    with r_i the unit-normalised rows (all-zero rows count as cosine 0 with everything)."""
    f = feats.detach().double().flatten(1)
    n = f.shape[0]
    if n < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least 2 rows, got {n}")
    norms = f.norm(dim=1, keepdim=True)
    r = torch.where(norms > 0, f / norms.clamp_min(1e-300), torch.zeros_like(f))
    k = float((norms > 0).sum())
    return float((r.sum(0).pow(2).sum() - k) / (n * (n - 1)))


RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _ridge_predictions(ft: Tensor, yt: Tensor, fe: Tensor, alphas: Sequence[float]) -> list[Tensor]:
    """Ridge predictions on ``fe`` for each alpha, from centred features ``ft`` and centred targets ``yt``.

    lam = alpha * tr(F^T F) / min(n, p): alpha is relative to the mean non-zero eigenvalue of the
    Gram matrix, so it means the same at every layer width and feature scale. One eigendecomposition
    serves every alpha: the primal G = F^T F when p <= n, the dual K = F F^T otherwise (same solution)."""
    n, p = ft.shape
    scale = float(ft.pow(2).sum()) / min(n, p)
    if scale <= 0:  # constant features: the best prediction is the mean
        return [torch.zeros(fe.shape[0], yt.shape[1], dtype=yt.dtype) for _ in alphas]
    if p <= n:
        e, v = torch.linalg.eigh(ft.T @ ft)
        proj = v.T @ (ft.T @ yt)
        return [fe @ (v @ (proj / (e.clamp_min(0) + a * scale)[:, None])) for a in alphas]
    e, u = torch.linalg.eigh(ft @ ft.T)
    proj = u.T @ yt
    cross = fe @ ft.T
    return [cross @ (u @ (proj / (e.clamp_min(0) + a * scale)[:, None])) for a in alphas]


def ridge_probe_r2(f_train: Tensor, x_train: Tensor, f_test: Tensor, x_test: Tensor,
                   alpha: float | None = None) -> float:
    """Held-out R^2 of a ridge regression that reconstructs ``x`` from features ``f``.

    Features and targets are centred with the training split's means (not rescaled: scaling up
    near-constant units of a collapsed layer would fit noise). ``alpha`` (see
    :func:`_ridge_predictions`) is fixed when given; by default it is chosen from
    :data:`RIDGE_ALPHAS` on the last fifth of the training split, then the probe is refit on the whole
    training split. R^2 = 1 - SSE/SST pooled over the input's dimensions, SST around the training
    mean of x, on the test split: in-sample R^2 would be meaningless when features >= samples."""
    ft, fe = f_train.detach().double().flatten(1), f_test.detach().double().flatten(1)
    xt, xe = x_train.detach().double().flatten(1), x_test.detach().double().flatten(1)
    if ft.shape[0] != xt.shape[0] or fe.shape[0] != xe.shape[0]:
        raise ValueError("ridge_probe_r2: features and targets must have the same number of rows")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"ridge_probe_r2: alpha must be > 0 (or None to select it), got {alpha}")
    if alpha is None:
        n_fit = ft.shape[0] - max(1, ft.shape[0] // 5)
        if n_fit < 2:
            raise ValueError("ridge_probe_r2: alpha selection needs at least 3 training rows; pass alpha")
        f_mu, x_mu = ft[:n_fit].mean(0), xt[:n_fit].mean(0)
        preds = _ridge_predictions(ft[:n_fit] - f_mu, xt[:n_fit] - x_mu, ft[n_fit:] - f_mu, RIDGE_ALPHAS)
        errs = [float((xt[n_fit:] - x_mu - pr).pow(2).sum()) for pr in preds]
        alpha = RIDGE_ALPHAS[min(range(len(errs)), key=errs.__getitem__)]
    f_mu, x_mu = ft.mean(0), xt.mean(0)
    pred = _ridge_predictions(ft - f_mu, xt - x_mu, fe - f_mu, [alpha])[0]
    sse = float((xe - x_mu - pred).pow(2).sum())
    sst = float((xe - x_mu).pow(2).sum())
    return 1.0 - sse / sst if sst > 0 else float("nan")


# ------------------------------------------------------------------------------------ profiling

def _relu_of(module: nn.Module) -> nn.Module:
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
    if len(relus) != 1:
        raise ValueError(f"diagnostic layer {type(module).__name__} holds {len(relus)} nn.ReLU modules; each "
                         "diagnostic layer must hold exactly one (its pre-activation is that ReLU's input)")
    return relus[0]


@torch.no_grad()
def profile(model: nn.Module, x: Tensor, n_train: int | None = None, alpha: float | None = None,
            probe_target: Tensor | None = None, batch_size: int = 512, max_bytes: int = 256 * 2**20) -> list[dict]:
    """Per-layer diagnostics of ``model`` on inputs ``x`` (one row per layer, depth order).

    The first ``n_train`` rows of ``x`` (default: 2/3) fit the ridge probe, the rest evaluate it;
    the probe reconstructs ``probe_target`` (default: ``x`` itself); ``alpha`` as in
    :func:`ridge_probe_r2` (None: selected per layer). Survival, moments and the
    pairwise cosine use every row. The model runs in eval mode (restored afterwards). Layers are
    profiled in groups whose stored representations fit in ``max_bytes`` (one forward pass per
    group), so deep CNNs with large feature maps fit in memory."""
    if x.shape[0] < 4:
        raise ValueError(f"profile needs at least 4 inputs (probe train + test), got {x.shape[0]}")
    n_train = n_train if n_train is not None else (2 * x.shape[0]) // 3
    if not 2 <= n_train <= x.shape[0] - 2:
        raise ValueError(f"profile: n_train={n_train} must leave >= 2 inputs on each side of {x.shape[0]}")
    target = x if probe_target is None else probe_target
    generic = not hasattr(model, "diagnostic_layers")
    if generic:
        layers = relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    else:
        layers = list(model.diagnostic_layers())
        relus = [_relu_of(m) for m in layers]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU modules and no diagnostic_layers(); the "
                         "dissipation diagnostics measure ReLU layers")
    was_training = model.training
    model.eval()
    try:
        widths = [r["width"] for r in _collect(model, layers, relus, generic, x[:2], None, batch_size)]
        groups, cur, used = [], [], 0
        for i, w in enumerate(widths):
            size = 4 * w * x.shape[0]
            if cur and used + size > max_bytes:
                groups.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += size
        groups.append(cur)
        rows = []
        for group in groups:
            for r in _collect(model, layers, relus, generic, x, set(group), batch_size):
                f = r.pop("features")
                r["probe_r2"] = ridge_probe_r2(f[:n_train], target[:n_train], f[n_train:], target[n_train:], alpha)
                r["pairwise_cos"] = mean_pairwise_cosine(f)
                rows.append(r)
    finally:
        model.train(was_training)
    return rows


def _collect(model, layers, relus, generic: bool, x: Tensor, keep: set[int] | None, batch_size: int) -> list[dict]:
    """One pass over ``x``: moments of each kept layer's pre-activation and input, and its representations."""
    idxs = sorted(keep) if keep is not None else list(range(len(layers)))
    sums = {i: dict(n=0, pos=0.0, s1=0.0, s2=0.0, i1=0.0, i2=0.0, ni=0) for i in idxs}
    feats: dict[int, list[Tensor]] = {i: [] for i in idxs}
    state = {"pre": None, "prev": None}

    def record(idx, layer_in, pre, out):
        if idx not in sums:
            return
        s = sums[idx]
        pre = pre.detach().double()
        s["n"] += pre.numel()
        s["pos"] += float((pre > 0).sum())
        s["s1"] += float(pre.sum())
        s["s2"] += float(pre.pow(2).sum())
        li = layer_in.detach().double()
        s["ni"] += li.numel()
        s["i1"] += float(li.sum())
        s["i2"] += float(li.pow(2).sum())
        feats[idx].append(out.detach().float().flatten(1).clone())

    def relu_hook(idx):
        def hook(mod, inp, out):
            state["pre"] = inp[0]
            if generic:  # the ReLU is the layer; its input comes from the previous ReLU's output
                record(idx, state["prev"], inp[0], out)
                state["prev"] = out
        return hook

    def layer_hook(idx):
        def hook(mod, inp, out):
            record(idx, inp[0], state["pre"], out)
        return hook

    handles = [r.register_forward_hook(relu_hook(i)) for i, r in enumerate(relus)]
    if not generic:
        handles += [m.register_forward_hook(layer_hook(i)) for i, m in enumerate(layers)]
    try:
        for start in range(0, x.shape[0], batch_size):
            state["prev"] = x[start:start + batch_size]
            model(x[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
    rows = []
    for i in idxs:
        s = sums[i]
        if s["n"] == 0:
            raise ValueError(f"diagnostic layer {i + 1} never ran in the forward pass")
        mean, m2 = s["s1"] / s["n"], s["s2"] / s["n"]
        var = max(m2 - mean * mean, 0.0)
        in_mean, in_m2 = s["i1"] / s["ni"], s["i2"] / s["ni"]
        f = torch.cat(feats[i])
        rows.append({"layer": i + 1, "survival": s["pos"] / s["n"], "pre_mean": mean, "pre_m2": m2, "pre_var": var,
                     "in_mean": in_mean, "in_m2": in_m2,
                     "mean_ratio": mean / in_mean if in_mean != 0 else float("nan"),
                     "m2_ratio": m2 / in_m2 if in_m2 > 0 else float("nan"),
                     "cantelli": cantelli_bound(mean, var), "width": f.shape[1], "features": f})
    return rows


def theorem_3_2_check(rows: Sequence[dict], kind: str, tol: float = 0.1, skip_first: int = 1) -> dict:
    """Average (mean ratio, second-moment ratio) over layers ``skip_first + 1 ..`` (layer 1 reads the
    zero-mean embedding, not a ReLU output) against Theorem 3.2's (0, 2) plain / (1, 3) residual.

    Within tolerance means |measured - expected| <= tol * max(|expected|, 1) for each ratio: a
    relative ±10% for the second moment and the residual mean, and ±0.1 (10% of the input's mean)
    for the plain mean whose expectation is 0."""
    if kind not in THEOREM_3_2:
        raise ValueError(f"Theorem 3.2 covers {', '.join(THEOREM_3_2)}, not {kind!r}")
    use = [r for r in rows if r["layer"] > skip_first and math.isfinite(r["mean_ratio"])]
    if not use:
        raise ValueError("theorem_3_2_check: no layers with a defined mean ratio")
    mr = sum(r["mean_ratio"] for r in use) / len(use)
    m2 = sum(r["m2_ratio"] for r in use) / len(use)
    e_mean, e_m2 = THEOREM_3_2[kind]
    ok = abs(mr - e_mean) <= tol * max(abs(e_mean), 1) and abs(m2 - e_m2) <= tol * max(abs(e_m2), 1)
    return {"kind": kind, "mean_ratio": mr, "m2_ratio": m2, "expected": [e_mean, e_m2], "within_tol": ok,
            "tol": tol, "layers": len(use)}


# ----------------------------------------------------------------------------------- data + fit

def synthetic_inputs(n: int, dim: int, seed: int = 0) -> Tensor:
    """n standard Gaussian vectors of dimension ``dim`` drawn from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g)


DATA = ("synthetic", "fashion_mnist")


def probe_task(data: str, n: int, resize: int = 8, seed: int = 0) -> tuple[str, dict]:
    """The reslab task (name, options) behind ``data``: ``fashion_mnist`` (a seeded random subset of n training
    images at resize x resize, up to 10,000 test images) or ``synthetic`` (``gaussian_classes``: Gaussian vectors
    of dim resize^2 labelled by a random linear map, so a net can be trained on them)."""
    if data == "fashion_mnist":
        return "fashion_mnist", {"n_train": n, "n_val": min(n, 10000), "resize": resize, "subset": "random", "seed": seed}
    if data == "synthetic":
        return "gaussian_classes", {"dim": resize * resize, "n_train": n, "n_val": n, "seed": seed}
    raise ValueError(f"unknown data {data!r}; valid: {', '.join(DATA)}")


def load_inputs(data: str, n: int, resize: int = 8, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_val, y_val) of :func:`probe_task`, inputs flattened: the same tensors the trainer
    sees when :func:`fit` trains on ``data``."""
    from ..data import get_task

    name, options = probe_task(data, n, resize, seed)
    task = get_task(name, **options)
    return task.train_x.flatten(1), task.train_y, task.val_x.flatten(1), task.val_y


def fit_config(kind: str, depth: int, width: int, data: str, n: int, out_dir: str | Path, *, resize: int = 8,
               seed: int = 0, steps: int = 300, lr: float = 1e-3, batch_size: int = 128, lam: float | None = None,
               grad_clip: float = 1.0, threads: int = 0):
    """The TrainConfig that trains a :class:`ProbeNet` of ``kind`` on ``data`` (:func:`probe_task`): AdamW at a
    constant lr, no weight decay, clipping, validation accuracy once at the end on the whole held-out split, and only
    a NaN/inf loss counts as diverged (no loss-growth threshold). :func:`fit` and pnnh-dissipation's arms use it."""
    from ..train import TrainConfig

    task, task_args = probe_task(data, n, resize, seed)
    n_val = task_args["n_val"]
    model_args = {"kind": kind, "depth": depth, "width": width} | ({} if lam is None else {"lam": float(lam)})
    return TrainConfig(task=task, task_args=task_args, model="probe", model_args=model_args, steps=steps,
                       batch_size=batch_size, lr=lr, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                       grad_clip=grad_clip, eval_every=steps, eval_batches=math.ceil(n_val / batch_size), log_every=1,
                       seed=seed, out_dir=str(out_dir), threads=threads, progress=False, tensorboard=False,
                       divergence_factor=0.0,  # "finite" means what it says: only a NaN/inf loss stops a run
                       fused_adamw="cuda")  # as the committed runs were trained (reslab.train.FUSED_ADAMW)


def fit(kind: str, depth: int, width: int, data: str, n: int, out_dir: str | Path, *, resize: int = 8,
        seed: int = 0, steps: int = 300, lr: float = 1e-3, batch_size: int = 128, lam: float | None = None,
        grad_clip: float = 1.0, threads: int = 0, curve_every: int = 10, log=print) -> tuple[dict, nn.Module | None]:
    """Train a :class:`ProbeNet` with reslab's Trainer (:func:`fit_config`; the run is reused when its config and
    code match) so that the diagnostics can be repeated after training.

    Returns (result, trained model or None if it diverged). ``result``: ``final_loss`` (mean training loss of the
    last 20 steps), ``finite``, ``steps``, ``val_acc`` (exact, on the whole held-out split), ``curve`` (every
    ``curve_every`` steps and the last, the mean of the last 20 steps' losses: the same smoothing as
    ``final_loss``, so a run "reaches" another's final loss on a comparable scale) and ``run`` (the run folder)."""
    from ..compare import train_or_reuse
    from ..train import load_trained, read_log

    cfg = fit_config(kind, depth, width, data, n, out_dir, resize=resize, seed=seed, steps=steps, lr=lr,
                     batch_size=batch_size, lam=lam, grad_clip=grad_clip, threads=threads)
    summary = train_or_reuse(cfg, log, tag=f"[{data}/{kind} depth {depth} seed {seed}]")
    losses = [r["loss"] for r in read_log(out_dir) if "loss" in r]
    finite = summary.get("status") == "completed"
    curve = []
    ends = list(range(curve_every, len(losses) + 1, curve_every))
    if losses and (not ends or ends[-1] != len(losses)):
        ends.append(len(losses))  # the last step is always on the curve
    for i in ends:
        tail = losses[max(0, i - 20):i]
        curve.append({"step": i, "train_loss": sum(tail) / len(tail)})
    tail = losses[-20:]
    model, task = load_trained(out_dir)[:2] if finite else (None, None)  # the run's own task: no second load
    result = {"final_loss": sum(tail) / len(tail) if (tail and finite) else float("nan"), "finite": finite,
              "steps": len(losses), "curve": curve, "run": str(out_dir),
              # exact over the whole held-out split, computed here from the trained weights
              "val_acc": accuracy(model, task.val_x, task.val_y) if model is not None else float("nan")}
    return result, model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    was = model.training
    model.eval()
    hits = sum(int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
               for i in range(0, x.shape[0], batch_size))
    model.train(was)
    return hits / x.shape[0]


# ---------------------------------------------------------------------------------------- plots

PLOT_KEYS = (("survival", "surviving-neuron ratio P(y>0)"), ("cantelli", "Cantelli bound mu^2/(mu^2+s^2)"),
             ("mean_ratio", "E[y] / E[x]"), ("m2_ratio", "E[y^2] / E[x^2]"),
             ("probe_r2", "input probe R^2 (held out)"), ("pairwise_cos", "mean pairwise cosine"))


def plot_profiles(curves: dict[str, list[dict]], path: str | Path, title: str = "") -> None:
    """One panel per diagnostic against depth; one line per curve name (e.g. ``plain``, ``pnnh (trained)``). Rows
    that carry a metric's per-seed values (``<key>_seeds``, e.g. the probe R^2 the verdict reads) get a band of
    ± one std over seeds around the mean."""
    from ..report import plt

    # one colour per kind (the name's first word) in every panel, at init and after training; a kind's trained
    # curves differ by line style (first trained depth dashed, the next dotted, ...), so "residual" is one colour
    kinds = list(dict.fromkeys(name.split(" ")[0] for name in curves))
    color = {k: f"C{i % 10}" for i, k in enumerate(kinds)}
    style, seen = {}, {}
    for name in curves:
        k = name.split(" ")[0]
        if "trained" in name:
            seen[k] = seen.get(k, 0) + 1
            style[name] = ("--", ":", "-.")[(seen[k] - 1) % 3]
        else:
            style[name] = "-"
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, label) in zip(axes.flat, PLOT_KEYS):
        banded = False
        for name, rows in curves.items():
            xs = [r["layer"] for r in rows]
            ys = [r[key] for r in rows]
            line, = ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=name, ls=style[name],
                            color=color[name.split(" ")[0]])
            seeds = [[v for v in r.get(f"{key}_seeds") or [] if math.isfinite(v)] for r in rows]
            if seeds and all(len(v) >= 2 for v in seeds):
                sd = [statistics.stdev(v) for v in seeds]
                ax.fill_between(xs, [y - e for y, e in zip(ys, sd)], [y + e for y, e in zip(ys, sd)], alpha=0.15,
                                color=line.get_color())
                banded = True
        ax.set_xlabel("layer")
        ax.set_title(label + (" (band: ± std over seeds)" if banded else ""))
        values = [r[key] for rows in curves.values() for r in rows if math.isfinite(r[key])]
        # ratios that stay within one positive decade read best on a linear axis; wider or signed ones on symlog
        if key in ("mean_ratio", "m2_ratio") and values and not (min(values) > 0 and max(values) < 10 * min(values)):
            from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

            ax.set_yscale("symlog", linthresh=1)
            # ticks at ±1, 2, 5 x 10^k, spaced as the symlog axis draws them (a linear locator crowded the log part
            # and left the negative side unlabelled); ratios between 1 and 10 (Theorem 3.2's 2 and 3) get labels
            ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1, subs=[1.0, 2.0, 5.0]))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: Sequence[dict], layers: Sequence[int] | None = None) -> str:
    """Markdown table of selected layers."""
    keep = [r for r in rows if layers is None or r["layer"] in layers]
    head = "| layer | survival | Cantelli | E[y]/E[x] | E[y²]/E[x²] | probe R² | pairwise cos |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in keep:
        lines.append(f"| {r['layer']} | {r['survival']:.3f} | {r['cantelli']:.3f} | {r['mean_ratio']:.3f} | "
                     f"{r['m2_ratio']:.3f} | {r['probe_r2']:.3f} | {r['pairwise_cos']:.3f} |")
    return "\n".join(lines)


def _show_layers(depth: int) -> list[int]:
    return sorted({l for l in (1, 2, 3, 5, 10, 20, 30, 50, 100, depth) if l <= depth})


# ------------------------------------------------------------------------------------------ CLI

def _cmd(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.run:
        return _cmd_run(args, out)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"--kinds: {k!r} is not one of {', '.join(KINDS)}")
    xt, yt, xv, yv = load_inputs(args.data, args.n, args.resize, args.seed)
    probe_x = torch.cat([xt[: args.n_probe], xv[: args.n_probe // 2]])
    curves, report = {}, {}
    for kind in kinds:
        torch.manual_seed(args.seed)
        net = ProbeNet(kind, args.depth, args.width, xt.shape[1], lam=args.lam)
        rows = profile(net, probe_x, n_train=min(args.n_probe, xt.shape[0]))
        curves[f"{kind} (init)"] = rows
        report[kind] = {"init": rows}
        print(f"\n## {kind}, depth {args.depth}, at init\n\n{table(rows, _show_layers(args.depth))}")
        if kind in THEOREM_3_2:
            chk = theorem_3_2_check(rows, kind)
            report[kind]["theorem_3_2"] = chk
            print(f"\nTheorem 3.2: measured ({chk['mean_ratio']:.3f}, {chk['m2_ratio']:.3f}) vs expected "
                  f"{tuple(chk['expected'])}: {'within' if chk['within_tol'] else 'OUTSIDE'} ±10%")
        if args.train_steps:  # the Trainer's own net of this kind (seeded by --seed), trained, then profiled again
            fitres, trained = fit(kind, args.depth, args.width, args.data, args.n, out / "train" / kind,
                                  resize=args.resize, seed=args.seed, steps=args.train_steps, lr=args.lr, lam=args.lam)
            report[kind] |= {"fit": fitres, "val_acc": fitres["val_acc"]}
            if trained is None:
                print(f"\n## {kind} after {args.train_steps} steps: diverged ({fitres['run']})")
                continue
            rows = profile(trained, probe_x, n_train=min(args.n_probe, xt.shape[0]))
            curves[f"{kind} (trained)"] = rows
            report[kind]["trained"] = rows
            print(f"\n## {kind} after {args.train_steps} steps (loss {fitres['final_loss']:.3f}, val acc "
                  f"{fitres['val_acc']:.3f})\n\n{table(rows, _show_layers(args.depth))}")
    (out / "dissipation.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    plot_profiles(curves, out / "dissipation.png", title=f"{args.data}, width {args.width}, depth {args.depth}")
    print(f"\nwrote {out / 'dissipation.json'} and {out / 'dissipation.png'}")
    return 0


def _cmd_run(args, out: Path) -> int:
    """Diagnostics of a finished ``reslab train`` run (its config and checkpoint) on validation inputs."""
    from ..train import load_trained

    model, task, cfg = load_trained(args.run)
    if task.kind == "lm":
        raise ValueError("--run: the input probe reconstructs real-valued inputs; language-model runs have token "
                         "inputs and are not supported")
    x = task.val_x[: args.n_probe + args.n_probe // 2]
    rows = profile(model, x, n_train=min(args.n_probe, (2 * x.shape[0]) // 3))
    wiring = "plain by construction" if cfg.model.startswith("pnnh") else cfg.connection
    print(f"\n## {cfg.model} / {wiring} after {cfg.steps} steps ({args.run})\n\n{table(rows)}")
    (out / "dissipation.json").write_text(json.dumps({"run": str(args.run), "trained": rows}, indent=1) + "\n")
    plot_profiles({f"{cfg.model} (trained)": rows}, out / "dissipation.png", title=str(args.run))
    print(f"\nwrote {out / 'dissipation.json'} and {out / 'dissipation.png'}")
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser(
        "dissipation", help="surviving neurons, Theorem 3.2 moments, Cantelli bound, input probe R^2 per layer",
        description="Dissipating-input diagnostics (PNNH paper): per layer, at init and optionally after "
                    "training, for plain / post-activation residual / scaled residual / PNNH MLPs, or for a "
                    "finished `reslab train` run (--run).")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--lam", type=float, default=None, help="scale of the scaled residual (default 1/sqrt(depth))")
    p.add_argument("--data", default="synthetic", choices=DATA)
    p.add_argument("--resize", type=int, default=8, help="images resized to r x r (synthetic: dim r^2)")
    p.add_argument("--n", type=int, default=3000, help="training inputs loaded")
    p.add_argument("--n-probe", dest="n_probe", type=int, default=1000, help="probe fit size (held out: half that)")
    p.add_argument("--train-steps", dest="train_steps", type=int, default=0, help="also train each net N AdamW steps with the Trainer (run folders under OUT/train) and profile it again")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default=None, help="profile a finished `reslab train` run folder instead")
    p.add_argument("--out", default="runs/analyze/dissipation")
    p.set_defaults(func=_cmd)


__all__ = ["KINDS", "RIDGE_ALPHAS", "THEOREM_3_2", "ProbeNet", "accuracy", "cantelli_bound", "fit", "load_inputs",
           "mean_pairwise_cosine", "plot_profiles", "preactivation_stats", "profile", "ridge_probe_r2",
           "synthetic_inputs", "table", "theorem_3_2_check"]
