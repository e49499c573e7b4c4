"""Pieces shared by experiment modules: line plots, train-config building, and the verdict helpers
that turn seed lists into the numbers each claim is judged on."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..presets import get_preset
from ..report import finish_line_plot, mean_std
from ..train import TrainConfig


def plot_lines(series: dict[str, list[float]], path: str | Path, title: str = "", ylabel: str = "",
               xlabel: str = "step", logy: bool = False) -> None:
    import matplotlib.pyplot as plt  # report.py has selected the Agg backend

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ys in series.items():
        ys = [y if (y is not None and math.isfinite(y) and (y > 0 or not logy)) else float("nan") for y in ys]
        ax.plot(range(len(ys)), ys, label=name)
    if logy:
        ax.set_yscale("log")
    finish_line_plot(fig, ax, path, xlabel, ylabel, title)


def train_config(task: str, model: str, preset: str | None = None, **overrides) -> TrainConfig:
    """A TrainConfig from a preset plus overrides; ``model_args``/``task_args`` are merged, not replaced."""
    values = get_preset(task, model, preset) if preset else {}
    for group in ("model_args", "task_args"):
        if group in overrides:
            overrides[group] = values.get(group, {}) | overrides[group]
    values |= overrides
    # AdamW fused on CUDA only: the setting the committed runs were trained with, so they reproduce bit for bit
    # (the fused CPU kernel is faster but differs in the last bit; reslab.train.FUSED_ADAMW)
    values.setdefault("fused_adamw", "cuda")
    values.setdefault("progress", False)
    values.setdefault("tensorboard", False)
    return TrainConfig(task=task, model=model, **values)


def with_(cfg: TrainConfig, **changes) -> TrainConfig:
    for group in ("model_args", "task_args"):
        if group in changes:
            changes[group] = getattr(cfg, group) | changes[group]
    return dataclasses.replace(cfg, **changes)


def pick_arms(every: dict[str, dict], short_names: list[str], keep: list[str] | None) -> dict[str, dict]:
    """``every`` arm (label -> overrides), or those a preset keeps by short name (``short_names`` name
    ``every``'s arms in order). An unknown short name is a one-line error listing the valid ones."""
    if keep is None:
        return dict(every)
    if len(short_names) != len(every):
        raise ValueError(f"{len(short_names)} short names for {len(every)} arms: name every arm once")
    short = dict(zip(short_names, every))
    unknown = [k for k in keep if k not in short]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown} in the preset's 'arms'; valid: {list(short)}")
    return {short[k]: every[short[k]] for k in keep}


def closest_size(count, target: int, lo: int, hi: int) -> int:
    """The ``k`` in ``lo..hi`` whose ``count(k)`` is closest to ``target``, for a ``count`` that grows with ``k``
    (a model's parameters with its width): bisect for the first ``k`` reaching the target, then take it or the one
    before (the smaller on a tie). ``hi`` when nothing reaches the target."""
    a, b = lo, hi
    while a < b:
        mid = (a + b) // 2
        a, b = (mid + 1, b) if count(mid) < target else (a, mid)
    return min(dict.fromkeys((max(lo, a - 1), a)), key=lambda k: abs(count(k) - target))


def row(report: dict, arm: str) -> dict:
    found = [r for r in report["rows"] if r["arm"] == arm]
    if not found:
        raise KeyError(f"no arm {arm!r} in these results (arms: {[r['arm'] for r in report['rows']]}); "
                       "were they made with another preset?")
    return found[0]


def pooled_std(a: list[float], b: list[float]) -> float:
    sa, sb = mean_std(a)[1], mean_std(b)[1]
    return math.sqrt((sa ** 2 + sb ** 2) / 2)


def diagnose_run(run_dir: str | Path, out: Path, label: str) -> dict:
    """Look inside one trained run: learned routing (heatmap when the scheme has one), effective depth and
    the layer-drop sensitivity profile on the run's own validation batches."""
    from ..analysis.topology import (effective_depths, layer_drop_sensitivity, plot_routing, routing_matrix,
                                     sensitivity_summary)
    from ..compare import slug
    from ..train import load_trained, loss_and_metric

    model, task, cfg = load_trained(run_dir)
    batches = task.fixed_batches("val", cfg.eval_batches, cfg.batch_size)
    sens = layer_drop_sensitivity(model, lambda m, b: loss_and_metric(task.kind, m(b[0]), b[1])[0], batches)
    d = {"effective_depth": effective_depths(model),
         "layer_drop": {k: [float(x) for x in v] for k, v in sens.items()},
         "layer_drop_summary": {k: sensitivity_summary(v) for k, v in sens.items()}}
    learned = {k: P for k, P in routing_matrix(model).items() if cfg.connection != "residual"}
    for name, P in learned.items():
        plot_routing(P, out / f"routing_{slug(label)}.png", title=f"{label} (seed {cfg.seed})")
        d["routing"] = P.tolist()
    return d


# ---- verdict statistics: every rule is built from these, so every rule can fail and none passes on noise ----

ALPHA = 0.05  # two-sided Welch test level used by every verdict


def _finite(xs) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def welch(a, b) -> float | None:
    """Two-sided Welch p of a vs b; None when either side has < 2 values (significance cannot be tested). Two
    spread-free samples with different means are an exact difference (p = 0), with equal means p = 1."""
    from ..report import welch_p

    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return None
    p = welch_p(a, b)
    if p is None:  # no spread on either side
        return 0.0 if mean_std(a)[0] != mean_std(b)[0] else 1.0
    return p


def significantly(a, b, direction: str, alpha: float = ALPHA) -> tuple[bool | None, float | None]:
    """Is a's mean significantly ``"lower"`` / ``"higher"`` than b's (Welch, two-sided, p < alpha)? Returns
    (True/False, p), or (None, None) when a side has fewer than 2 seeds: such a check can never pass."""
    p = welch(a, b)
    if p is None:
        return None, None
    ma, mb = mean_std(_finite(a))[0], mean_std(_finite(b))[0]
    right_way = ma < mb if direction == "lower" else ma > mb
    return bool(right_way and p < alpha), p


def resolvable_difference(a, b, direction: str, effect: float, alpha: float = ALPHA) -> tuple[bool | None, str]:
    """A significance check that knows its power: is a significantly ``direction`` than b (Welch, p < alpha)? When
    it is not, but the (1 - alpha) CI of the difference still reaches the size the claim states (``effect``, in
    the claimed direction), the data can neither show nor rule out that effect: None (untestable at this scale).
    When the CI excludes the stated effect (a is no better, or even significantly worse), the check fails."""
    ok, p = significantly(a, b, direction, alpha=alpha)
    if ok is None:
        return None, "fewer than 2 seeds"
    d, h = diff_ci(a, b, level=1 - alpha)
    gain = -d if direction == "lower" else d  # > 0: a is better in the claimed direction
    text = f"difference {d:+.4g} ± {h:.3g} ({100 * (1 - alpha):.4g}% CI), Welch p={_p(p)}, stated effect {effect:.3g}"
    if ok:
        return True, text
    if gain + h >= abs(effect):
        return None, text + " — the CI reaches the stated effect: untestable at this scale"
    return False, text + " — the CI excludes the stated effect"


def diff_ci(a, b, level: float = 0.95) -> tuple[float, float] | None:
    """mean(a) - mean(b) and the half-width of its Welch (Satterthwaite) confidence interval; None with < 2 seeds."""
    from scipy import stats

    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return ma - mb, 0.0
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0) + (vb ** 2 / (len(b) - 1) if vb else 0))
    return ma - mb, float(stats.t.ppf(0.5 + level / 2, df)) * se


def noninferior(a, b, margin: float, higher_better: bool) -> tuple[bool | None, str]:
    """Is a no worse than b by more than ``margin`` (a non-inferiority test on the 95% CI of the difference)?
    True: the whole CI is on the good side of -margin. False: the CI lies wholly beyond it, or the estimate itself
    lies beyond it and the CI is narrower than the margin (precise enough that "worse by more than the margin" is
    what the data say). None otherwise (or < 2 seeds): an estimate inside the margin whose CI still reaches past
    it, or a CI wider than the margin, cannot tell -- the check neither passes nor fails on that noise. (Until
    2026-12 a CI narrower than the margin failed whatever the estimate, so an estimate of -0.3 against a margin of 1
    with a CI of ±0.8 failed on one machine and passed on another: vit-compare's NOTES.)"""
    ci = diff_ci(a, b)
    if ci is None:
        return None, "fewer than 2 seeds"
    d, h = ci
    gain = d if higher_better else -d  # > 0: a better than b
    text = f"{'+' if gain >= 0 else ''}{gain:.4g} ± {h:.2g} (95% CI) vs margin {margin:.3g}"
    if gain - h > -margin:
        return True, text
    if gain + h < -margin or (gain < -margin and h < margin):
        return False, text
    if h < margin:  # the estimate is inside the margin, the CI's far end outside it
        return None, text + " — estimate inside the margin, CI reaching past it: untestable at this scale"
    return None, text + " — CI wider than the margin: untestable at this scale"


def depth_premise(better, worse, higher_better: bool, k_se: float = 3.0) -> tuple[bool | None, str]:
    """A premise such as 'the deeper/bigger model is better': better's mean beats worse's by more than ``k_se``
    standard errors of the difference and Welch p < ALPHA. None with fewer than 2 seeds."""
    ci = diff_ci(better, worse)
    if ci is None:
        return None, "fewer than 2 seeds"
    d = ci[0] if higher_better else -ci[0]
    a, b = _finite(better), _finite(worse)
    se = math.sqrt(mean_std(a)[1] ** 2 / len(a) + mean_std(b)[1] ** 2 / len(b))
    ok, p = significantly(better, worse, "higher" if higher_better else "lower")
    n_se = d / se if se else (math.inf if d > 0 else -math.inf)
    return bool(ok and n_se > k_se), f"gap {d:+.4g} = {n_se:.1f} SE (needs > {k_se:g}), Welch p={_p(p)}"


def _p(p) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def decide(checks: list[tuple[str, bool | None, str]], premise: tuple[str, bool | None, str] | None = None
           ) -> tuple[str, str]:
    """The verdict from named checks (name, passed, text); passed None = could not be tested (too few seeds, CI
    wider than the margin). A failed or untestable premise -> ``inconclusive``. Otherwise: every check passed ->
    ``reproduced``; some passed -> ``partial``; none passed and at least one failed -> ``not reproduced``; none
    could be tested -> ``inconclusive``."""
    def fmt(name, ok, text):
        return f"{name}: {'PASS' if ok else 'FAIL' if ok is False else 'UNTESTABLE'} ({text})"

    parts = ([fmt("premise " + premise[0], premise[1], premise[2])] if premise else []) + [fmt(*c) for c in checks]
    text = "; ".join(parts)
    if premise is not None and not premise[1]:
        return "inconclusive", text
    results = [ok for _, ok, _ in checks]
    if results and all(ok is True for ok in results):
        return "reproduced", text
    if any(ok is True for ok in results):
        return "partial", text
    if any(ok is False for ok in results):
        return "not reproduced", text
    return "inconclusive", text
