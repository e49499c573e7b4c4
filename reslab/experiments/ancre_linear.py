"""ANCRe's linear-network theory (README of the official repo): on deep linear networks
with whitened inputs and a small init, the shortcut *layout* sets the convergence rate. At K=3 a
single 0:2 shortcut converges far faster than 0:1 or the standard cascaded layout; at K=4 the best
layout is 0:2+2:3; ANCRe, which learns the layout, converges like the best fixed one.

Setting (theory form): h_0 = X, h_j = W_j h_{j-1} + sum over shortcuts (i, j) of h_i, output h_K,
loss 1/2 ||h_K - Y||_F^2 with X X^T = I. Full-batch gradient descent stands in for gradient flow.
The ANCRe arm is ``reslab.connection("ancre(form=theory, tau=...)")`` with the W_j as its plain
branches, trained by the same gradient descent (logits included). Under plain GD a temperature tau
scales the step of the softmax weights p_ij by 1/tau^2 (the gradient of the coefficients c carries 1/tau,
and a change of c moves p by another 1/tau), so the GD-stable tau=1 is used here; this is our choice,
recorded in the summary.

Why not the Trainer: the theorems are about gradient flow on the whole (whitened) training set in exact
arithmetic, and the claim is read off the loss at *every* step; the Trainer is minibatch, float32, with
schedules and periodic evaluation. The loop below is that gradient descent and nothing else, but each of its
runs is recorded like a Trainer run (:func:`gd_run`): under ``runs/K{K}/{layout}/seed{seed}/lr{lr}/`` its
result and a run record (code revision, git revision, wall time), reused when settings and code match.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..compare import grid_edge_value
from ..connections import connection
from ..data import get_task
from ..report import mean_std, welch_p
from . import Experiment
from .common import plot_lines

#: the ANCRe arms: learned routing, and the control with routing frozen at the uniform average (learn=false)
ANCRE_ARMS = {"ancre": True, "ancre frozen": False}
LAYOUTS = {
    3: {"none": [], "cascaded": [(0, 1), (1, 2), (2, 3)], "0:1": [(0, 1)], "0:2": [(0, 2)],
        "0:2+2:3": [(0, 2), (2, 3)], "ancre": None, "ancre frozen": None},
    4: {"none": [], "cascaded": [(0, 1), (1, 2), (2, 3), (3, 4)], "0:1": [(0, 1)], "0:2": [(0, 2)],
        "0:2+2:3": [(0, 2), (2, 3)], "ancre": None, "ancre frozen": None},
}


class FixedLayout(nn.Module):
    """h_j = W_j h_{j-1} + sum_{(i, j) in layout} h_i  (rows of h are samples, so W acts on the right)."""

    def __init__(self, weights: list[nn.Parameter], layout):
        super().__init__()
        self.w = nn.ParameterList(weights)
        self.layout = layout

    def forward(self, x):
        hs = [x]
        for j, w in enumerate(self.w, start=1):
            h = hs[-1] @ w.T
            for i, jj in self.layout:
                if jj == j:
                    h = h + hs[i]
            hs.append(h)
        return hs[-1]


class AncreLinear(nn.Module):
    def __init__(self, weights: list[nn.Parameter], tau: float, learn: bool = True):
        super().__init__()
        self.w = nn.ParameterList(weights)
        d = weights[0].shape[0]
        spec = f"ancre(form=theory, tau={tau}{'' if learn else ', learn=false'})"
        self.conn = connection(spec, n_blocks=len(weights), dim=d).double()

    def forward(self, x):
        return self.conn(x, [[lambda h, w=w: h @ w.T] for w in self.w])


def steps_to(losses: list[float], thresh: float) -> int | None:
    return next((i for i, v in enumerate(losses) if v <= thresh), None)


def run_one(K: int, layout_name: str, seed: int, s: dict, lr: float | None = None) -> list[float]:
    task = get_task("linear", d=s["d"], seed=seed, whiten="orthogonal")
    X, Y = task.train_x.double(), task.train_y.double()
    g = torch.Generator().manual_seed(10_000 + seed)  # the same init for every layout of a seed
    weights = [nn.Parameter(s["init_scale"] * torch.randn(s["d"], s["d"], generator=g, dtype=torch.float64)
                            / math.sqrt(s["d"])) for _ in range(K)]
    layout = LAYOUTS[K][layout_name]
    model = (AncreLinear(weights, s["tau"], ANCRE_ARMS[layout_name]) if layout is None
             else FixedLayout(weights, layout))
    opt = torch.optim.SGD(model.parameters(), lr=s["lr"] if lr is None else lr)
    losses = []
    for _ in range(s["max_steps"] + 1):
        loss = 0.5 * (model(X) - Y).pow(2).sum()
        losses.append(float(loss.detach()))
        if losses[-1] <= s["target"] * 1e-2 or not math.isfinite(losses[-1]):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


#: the settings a GD run depends on (besides its depth, layout, seed and lr); a recorded run is reused only if
#: these, and the code revision of the library plus this file, match
RUN_KEYS = ("d", "init_scale", "tau", "target", "max_steps")
CURVE_POINTS = 400  # the loss trace kept per run for the plots (every len/400-th step)


def gd_run(K: int, layout_name: str, seed: int, s: dict, lr: float, root: Path | None = None, log=print) -> dict:
    """One gradient-descent run (:func:`run_one`) summarised: steps to the target (None: not within the budget),
    the final loss, the number of steps taken and the subsampled loss trace. With ``root`` the run is recorded in
    its own folder (``result.json`` and a run record as the Trainer's runs have, so the experiment's summary lists
    it) and a finished run of the same settings and code is reused instead of trained again."""
    import time

    from ..compare import CODE_PARTS, RUN_RECORD, code_revision, note_run, slug
    from ..checkpoint import atomic_write_json
    from ..train import git_revision

    config = {"K": K, "layout": layout_name, "seed": seed, "lr": lr} | {k: s[k] for k in RUN_KEYS}
    rev = code_revision(CODE_PARTS + ("experiments/ancre_linear.py",))
    folder = (Path(root) / f"K{K}" / slug(layout_name) / f"seed{seed}" / f"lr{lr:g}") if root else None
    if folder is not None:
        note_run(folder)  # the summary lists this run
    if folder is not None and (folder / "result.json").exists() and (folder / RUN_RECORD).exists():
        import json

        done, record = json.loads((folder / "result.json").read_text()), json.loads((folder / RUN_RECORD).read_text())
        if done.get("config") == config and record.get("code_revision") == rev:
            return done
    t0 = time.time()
    losses = run_one(K, layout_name, seed, s, lr)
    stride = max(1, len(losses) // CURVE_POINTS)
    final = losses[-1] if math.isfinite(losses[-1]) else None
    out = {"config": config, "steps_to_target": steps_to(losses, s["target"]), "final_loss": final,
           "steps_taken": len(losses) - 1, "curve": losses[::stride], "curve_stride": stride}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "result.json", out)
        atomic_write_json(folder / RUN_RECORD, {"code_revision": rev, "git": git_revision(),
                                                "status": "completed" if final is not None else "diverged",
                                                "wall_time_s": round(time.time() - t0, 1)})
    return out


TUNE_SEED = 1000  # the learning rate of each arm is chosen on this seed, never one of the reported seeds


def tune_lr(K: int, name: str, s: dict, root: Path | None = None) -> tuple[float, dict, bool]:
    """Every arm alike: the GD learning rate from the shared grid ``s["lrs"]`` that reaches the target in the
    fewest steps on the tuning seed (ties: the lower final loss). When an edge of the grid wins, the grid grows past
    it by the edge's own ratio (0.05 -> 0.1 -> 0.2 ...), up to ``s["lr_extend"]`` points, while each new point wins:
    a best lr at the edge of the grid is a lower bound on how fast the arm can go, not its tuned speed."""
    scores = {}

    def score(lr: float) -> None:
        r = gd_run(K, name, TUNE_SEED, s, lr, root)
        st, last = r["steps_to_target"], r["final_loss"]
        scores[lr] = (math.inf if st is None else st, math.inf if last is None else last)

    grid = sorted(s["lrs"])
    for lr in grid:
        score(lr)
    for _ in range(int(s.get("lr_extend", 0)) if len(grid) >= 2 else 0):  # a one-point grid has no ratio to grow by
        best, tried = min(scores, key=lambda lr: scores[lr]), sorted(scores)
        if best not in (tried[0], tried[-1]):
            break
        new = grid_edge_value(tried, upward=best == tried[-1])  # the Trainer's tuning grows its grids the same way
        if new is None:
            break
        score(new)
        if min(scores, key=lambda lr: scores[lr]) != new:
            break
    best = min(scores, key=lambda lr: scores[lr])
    tried = sorted(scores)
    # still at an edge after every extension: the arm's speed is a bound (an arm that never reaches the target
    # anywhere has no best lr to be at an edge of)
    at_edge = len(tried) > 1 and best in (tried[0], tried[-1]) and not math.isinf(scores[best][0])
    return best, {str(lr): (None if math.isinf(v[0]) else v[0]) for lr, v in sorted(scores.items())}, at_edge


def run(s: dict, out: Path, log) -> dict:
    import time

    t0 = time.time()
    root = out / "runs"  # every GD run recorded (and reused) like a Trainer run: the summary lists them
    res = {"settings": s, "K": {}}
    for K in s["depths"]:
        arms = {}
        for name in LAYOUTS[K]:
            lr, tuning, at_edge = tune_lr(K, name, s, root) if s.get("lrs") else (s["lr"], {}, False)
            runs = [gd_run(K, name, seed, s, lr, root) for seed in range(s["seeds"])]
            per_seed = [r["steps_to_target"] for r in runs]
            arms[name] = {"steps_to_target_per_seed": per_seed, "lr": lr, "tuning_steps": tuning, "tuned_at_edge": at_edge,
                          "curve_seed0": runs[0]["curve"], "curve_stride": runs[0]["curve_stride"]}
            log(f"K={K} {name:>12}: lr {lr:g}, steps to {s['target']:g} per seed {per_seed}")
        # statistics over seeds ("not reached" counts as the budget, a lower bound): mean ± std of the steps
        # and Welch's t-test on log10(steps) against the cascaded layout, the standard residual net
        capped = {n: [v if v is not None else s["max_steps"] + 1 for v in a["steps_to_target_per_seed"]]
                  for n, a in arms.items()}
        for n, a in arms.items():
            a["steps_mean"], a["steps_std"] = mean_std(capped[n])
            a["welch_p_vs_cascaded"] = (None if n == "cascaded" else
                                        welch_p([math.log10(v) for v in capped[n]],
                                                [math.log10(v) for v in capped["cascaded"]]))
        res["K"][str(K)] = arms
        plot_lines({n: a["curve_seed0"] for n, a in arms.items()}, out / f"loss_K{K}.png",
                   title=f"deep linear net, K={K} (seed 0)", ylabel="loss", logy=True, xlabel="step (subsampled)")
    res["training_wall_time_s"] = round(time.time() - t0, 1)  # this call's time (reused runs cost nothing)
    _plot_steps(res, out / "steps_to_target.png")
    v, why = verdict(res)
    _write_readme(out, res, v, why)
    return res


def _plot_steps(res: dict, path: Path) -> None:
    """The claim's metric with its spread: steps to the target per layout and K, mean ± std over seeds (log y)."""
    from .runner import errorbar_panels

    s = res["settings"]
    budget = s["max_steps"] + 1
    names = list(next(iter(res["K"].values())))
    panel = {}
    for n in names:
        ks = [int(K) for K in res["K"] if n in res["K"][K]]
        sts = [mean_std(_capped(res["K"][str(K)][n], budget)) for K in ks]
        panel[n] = (ks, [m for m, _ in sts], [sd for _, sd in sts],
                    [None in res["K"][str(K)][n]["steps_to_target_per_seed"] for K in ks])
    errorbar_panels({"each layout at its own tuned GD lr": panel}, path, "K (layers)",
                    f"steps to loss {s['target']:g} (mean ± std, {s['seeds']} seeds; x: not reached)",
                    title="ancre-linear: deep linear nets", logy=True)


def _write_readme(out: Path, res: dict, verdict_: str, why: str) -> None:
    from .runner import write_readme

    s = res["settings"]
    budget = s["max_steps"] + 1
    sections = []
    for K, arms in res["K"].items():
        lines = [f"**K = {K}**: GD steps to loss {s['target']:g} per seed (never reached: counted as {budget}); "
                 "Welch p on log10(steps) against the cascaded layout", "",
                 "| layout | tuned lr (tuning seed's steps per lr) | steps per seed | mean ± std | Welch p vs cascaded |",
                 "|---|---|---|---|---|"]
        for n, a in arms.items():
            tuning = ", ".join(f"{lr}: {'—' if st is None else st}" for lr, st in a["tuning_steps"].items())
            p = a.get("welch_p_vs_cascaded")
            lines.append(f"| {n} | {a['lr']:g} ({tuning}) | {a['steps_to_target_per_seed']} | "
                         f"{a['steps_mean']:.0f} ± {a['steps_std']:.0f} | {'—' if p is None else f'{p:.2g}'} |")
        sections.append("\n".join(lines))
    write_readme(out / "README.md", "ancre-linear: the shortcut layout sets the convergence rate of deep linear nets",
                 verdict_, why, sections, s,
                 [("steps to target", "steps_to_target.png")] + [(f"loss K={K}", f"loss_K{K}.png") for K in res["K"]])


def _capped(arm: dict, budget: int) -> list[int]:
    return [v if v is not None else budget for v in arm["steps_to_target_per_seed"]]


def verdict(res: dict) -> tuple[str, str]:
    """Per run, as the theorems are stated: (A) at K=3, on every seed, 0:2 reaches the target >= 10x sooner than
    both 0:1 and the cascaded layout, and log-steps differ significantly (Welch); (B) at every K, on every seed,
    ANCRe reaches it within 2x of the best fixed layout's steps of that seed. Runs that never reach the target
    count as the budget (a lower bound). Fewer than 2 seeds: untestable. The frozen-routing control (learn=false)
    is reported: learning the topology matters only if learned ANCRe is significantly faster than frozen."""
    from .common import decide, significantly
    from .runner import edge_note

    s = res["settings"]
    budget = s["max_steps"] + 1
    K3 = res["K"]["3"]
    c = {n: _capped(a, budget) for n, a in K3.items()}
    n_seeds = len(c["0:2"])
    log = {n: [math.log10(v) for v in xs] for n, xs in c.items()}
    ratios = [min(a, b) / f for a, b, f in zip(c["0:1"], c["cascaded"], c["0:2"])]
    sig = [significantly(log["0:2"], log[o], "lower") for o in ("0:1", "cascaded")]
    a_ok = None if n_seeds < 2 else bool(min(ratios) >= 10 and all(ok for ok, _ in sig))
    checks = [("A 0:2 ≥ 10× faster than 0:1 and cascaded on every K=3 run", a_ok,
               f"per-seed min ratio {min(ratios):.1f}× (steps 0:2 {c['0:2']}, 0:1 {c['0:1']}, cascaded {c['cascaded']}); "
               f"Welch p on log-steps {', '.join('n/a' if p is None else f'{p:.2g}' for _, p in sig)}")]
    b_ok, b_text, control = [], [], []
    for K, arms in res["K"].items():
        cc = {n: _capped(a, budget) for n, a in arms.items()}
        fixed = [n for n in arms if n not in ANCRE_ARMS]
        best_per_seed = [min(cc[n][i] for n in fixed) for i in range(len(cc["ancre"]))]
        r = [a / b for a, b in zip(cc["ancre"], best_per_seed)]
        b_ok.append(max(r) <= 2)
        b_text.append(f"K={K}: ANCRe/best-fixed per seed {', '.join(f'{x:.2f}' for x in r)}")
        if "ancre frozen" in cc:
            ok, p = significantly([math.log10(v) for v in cc["ancre"]], [math.log10(v) for v in cc["ancre frozen"]],
                                  "lower")
            control.append(f"K={K}: learned {cc['ancre']} vs frozen uniform {cc['ancre frozen']} steps "
                           f"(Welch p on log-steps {'n/a' if p is None else f'{p:.2g}'}: learning the topology "
                           f"{'matters' if ok else 'does not matter significantly'})")
    checks.append(("B ANCRe within 2× of the best fixed layout on every run", None if n_seeds < 2 else all(b_ok),
                   "; ".join(b_text)))
    v, text = decide(checks)
    lrs = {f"K={K} {n}": a.get("lr", s.get("lr")) for K, arms in res["K"].items() for n, a in arms.items()}
    if s.get("lrs"):
        grown = f" (grown past a winning edge by up to {s['lr_extend']} points)" if s.get("lr_extend") else ""
        text += (f". GD lr tuned per arm on seed {TUNE_SEED} from {s['lrs']}{grown}: "
                 + ", ".join(f"{k} {v:g}" for k, v in lrs.items()))
        edges = edge_note({f"K={K} {n}": a.get("tuned_at_edge") for K, arms in res["K"].items() for n, a in arms.items()})
        text += f"; {edges}" if edges else ""
    else:
        text += f". Every arm at lr {s['lr']} (not tuned)"
    if control:
        text += ". Control (learn=false): " + "; ".join(control)
    return v, text


# lr_extend 5: with 3, 0:2 and 0:2+2:3 at K=3 still won at the last point (0.8)
_BASE = dict(d=8, init_scale=1e-2, lr=0.05, lrs=[0.02, 0.05, 0.1], lr_extend=5, tau=1.0, target=1e-8)
EXPERIMENT = Experiment(
    splittable=False,  # its own training loop: parts by seed would not apply
    name="ancre-linear",
    paper="ANCRe (Zhang et al. 2026, arXiv:2602.09009), Theorems 3.2/3.3 and the linear-network figures",
    claim="On deep linear nets (whitened inputs, small init) a 0:2 shortcut reaches loss 1e-8 ≥10× faster than 0:1 "
          "and the cascaded layout at K=3, and ANCRe gets within 2× of the best fixed layout (K=3, 4) unaided — "
          "on every run (seed), each arm at its own tuned GD learning rate.",
    paper_number="0:1 is Ω(1/t²) (sublinear), 0:2 converges linearly; ANCRe 'converges like the best fixed topology'",
    presets={"quick": _BASE | dict(depths=[3], seeds=2, max_steps=3000, lrs=[0.05, 0.1]),
             "cpu": _BASE | dict(depths=[3, 4], seeds=5, max_steps=20000),
             "gpu": _BASE | dict(depths=[3, 4], seeds=5, max_steps=50000, d=32)},
    run=run, verdict=verdict,
    notes="Full-batch GD as a proxy for gradient flow, lr tuned per arm on seed 1000 from the same grid {0.02, 0.05, "
          "0.1}, grown past an edge that wins by the edge's ratio (up to 5 points, while each wins; the paper's setup uses 0.05 for all); a frozen-routing ANCRe (learn=false, uniform average) is the "
          "control for 'learning the topology matters'. The theorems compare rates, not a factor: '≥ 10×' at 1e-8 is "
          "our reading of the 'exponential gap' at CPU scale, checked per run; float64, d=8, X random orthogonal (X X^T = I), "
          "Y ~ N(0, 1/d), W ~ 0.01·N(0, 1/d); identical init per seed across layouts. ANCRe logits use tau=1 under GD "
          "(tau=0.01 would multiply their step by 1e4). Steps not reached within max_steps count as max_steps+1.",
)
