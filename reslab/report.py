"""Tables (markdown/JSON) and plots (matplotlib) from run summaries, with the statistics every
comparison reports: mean ± std over seeds, Welch's t-test against the baseline, and
steps-to-target (the first evaluation at which a run reaches the baseline's final mean loss)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value; None when either side has fewer than 2 values or no spread."""
    from scipy import stats

    a = [x for x in a if x is not None and math.isfinite(x)]
    b = [x for x in b if x is not None and math.isfinite(x)]
    if len(a) < 2 or len(b) < 2 or (statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0):
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def steps_to_target(curve: Sequence[dict], target: float, key: str = "val_loss") -> int | None:
    """First evaluated step whose ``key`` is <= target (None: never reached). A relative slack of 1e-9
    lets the baseline's own mean curve reach its own final mean despite rounding."""
    for row in curve:
        v = row.get(key)
        if v is not None and v <= target + 1e-9 * abs(target):
            return int(row["step"])
    return None


def trailing_mean_curve(rows: Sequence[dict], key: str = "loss", window: int = 5,
                        out_key: str = "train_loss") -> list[dict]:
    """A logged training-loss curve smoothed by a trailing mean over ``window`` points: single-batch losses
    are too noisy to say when a run first reaches a target. Rows without ``key`` are skipped."""
    pts = [(int(r["step"]), float(r[key])) for r in rows if key in r and r[key] is not None]
    out = []
    for i, (step, _) in enumerate(pts):
        tail = [v for _, v in pts[max(0, i + 1 - window):i + 1]]
        out.append({"step": step, out_key: statistics.fmean(tail)})
    return out


def mean_curve(runs: Sequence[dict], key: str = "val_loss") -> list[dict]:
    """Seed-averaged evaluation curve of completed runs (truncated to the shortest)."""
    curves = [r["curve"] for r in runs if r.get("curve")]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [{"step": curves[0][i]["step"], key: statistics.fmean(c[i][key] for c in curves)} for i in range(n)]


def summarize_arms(arms: dict[str, list[dict]], baseline: str) -> list[dict]:
    """One row per arm from its runs' summary dicts (train.py's summary.json)."""
    base_runs = [r for r in arms.get(baseline, []) if r.get("status") == "completed"]
    base_losses = [r["final_val_loss"] for r in base_runs]
    target = mean_std(base_losses)[0] if base_losses else None
    rows = []
    for arm, runs in arms.items():
        ok = [r for r in runs if r.get("status") == "completed"]
        losses = [r["final_val_loss"] for r in ok]
        metrics = [r["final_val_metric"] for r in ok]
        lm, ls = mean_std(losses)
        mm, ms = mean_std(metrics)
        reach = [steps_to_target(r["curve"], target) for r in ok] if target is not None else []
        times = [r["median_step_time"] for r in ok if r.get("median_step_time")]
        rows.append({
            "arm": arm,
            "seeds": len(runs), "completed": len(ok), "diverged": sum(r.get("status") == "diverged" for r in runs),
            "val_loss_mean": lm, "val_loss_std": ls, "val_loss": losses,
            "metric": runs[0].get("metric") if runs else None, "metric_mean": mm, "metric_std": ms,
            "metric_per_seed": metrics,
            "params": runs[0].get("params") if runs else None,
            "extra_params": (runs[0]["params"] - base_runs[0]["params"]) if (runs and base_runs) else None,
            "connection_params": runs[0].get("connection_params") if runs else None,
            "median_step_time": statistics.median(times) if times else None,
            # on the seed-averaged curve, so the baseline reaches its own final mean at its last eval
            "steps_to_target": steps_to_target(mean_curve(ok), target) if target is not None else None,
            "steps_to_target_per_seed": reach,
            "target_loss": target,
            "welch_p_vs_baseline": None if arm == baseline else welch_p(losses, base_losses),
        })
    return rows


def _fmt(x, spec=".4f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def markdown_table(rows: list[dict], baseline: str) -> str:
    metric = next((r["metric"] for r in rows if r["metric"]), "metric")
    tuned = any(r.get("tuned") for r in rows)  # `compare --tune`: the value each arm chose for itself
    arrow = "↑" if metric in HIGHER_IS_BETTER else "↓"
    head = (f"| connection |{' tuned |' if tuned else ''} val loss ↓ | {metric} {arrow} | params | "
            f"extra params vs {baseline} | median step (ms) | steps to {baseline}'s loss | Welch p | seeds ok |\n"
            f"|---|{'---|' if tuned else ''}---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        extra = r["extra_params"]
        chosen = ", ".join(f"{k}={v}" for k, v in (r.get("tuned") or {}).items()) or "—"
        lines.append(
            f"| `{r['arm']}` |{f' {chosen} |' if tuned else ''} {_pm(r['val_loss_mean'], r['val_loss_std'], r['completed'])} | "
            f"{_pm(r['metric_mean'], r['metric_std'], r['completed'])} | {r['params'] if r['params'] is not None else '—'} | "
            f"{'—' if extra is None else f'{extra:+d}'} | "
            f"{_fmt(None if r['median_step_time'] is None else 1000 * r['median_step_time'], '.1f')} | "
            f"{'—' if r['steps_to_target'] is None else int(r['steps_to_target'])} | {_fmt(r['welch_p_vs_baseline'], '.3g')} | "
            f"{r['completed']}/{r['seeds']}{' (' + str(r['diverged']) + ' diverged)' if r['diverged'] else ''} |")
    return head + "\n".join(lines) + "\n\n" + table_key(metric, baseline) + "\n"


#: metrics where a larger value is better; every other metric (losses, bits/char, MSE) is better lower
HIGHER_IS_BETTER = ("accuracy", "val_accuracy")


def _pm(mean, std, n: int) -> str:
    """``mean ± std`` over seeds; with one seed there is no spread to show."""
    if n <= 1:
        return f"{_fmt(mean)} (n/a: 1 seed)" if n == 1 else "—"
    return f"{_fmt(mean)} ± {_fmt(std)}"


def table_key(metric: str, baseline: str) -> str:
    """What each column of :func:`markdown_table` means."""
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    return (f"Key: ↓ lower is better, ↑ higher is better. *val loss*: final validation loss, mean ± std over seeds "
            f"(n/a with one seed). *{metric}*: the task's second metric at the end ({better} is better). *params*: "
            f"all parameters; *extra params*: more than `{baseline}`. *median step*: wall time of one training step. "
            f"*steps to {baseline}'s loss*: first evaluation at which the arm's mean curve reaches `{baseline}`'s final "
            f"mean validation loss (fewer is faster; — never). *Welch p*: two-sided Welch t-test of the arm's final "
            f"losses against `{baseline}`'s (needs ≥ 2 seeds; small p: the difference is unlikely to be seed noise). "
            f"*seeds ok*: runs that completed without diverging.\n")


def plot_curves(arms: dict[str, list[dict]], path: str | Path, title: str = "", key: str = "val_loss") -> None:
    """Mean validation curve per arm (shaded: min–max over seeds). With several arms a second panel shows each
    arm's curve minus the first arm's (the baseline) on a zoomed axis, so arms far apart (``plain``) do not
    squeeze the others into a sliver; arms that leave that axis are named in its legend with their final gap.
    A ``key`` holding "accuracy" is higher-is-better, every other (losses) lower-is-better: the axis labels say so."""
    better = "higher" if "accuracy" in key else "lower"
    base = next(iter(arms), None)
    styles = arm_styles(list(arms))
    two = len([a for a, rs in arms.items() if any(r.get("curve") for r in rs)]) > 1 and bool(mean_curve(arms[base], key))
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(13 if two else 7, 4.5))
    ax = axes[0] if two else axes
    if two:
        _plot_relative(axes[1], arms, base, key, styles)
        label_axes(axes[1], "step", f"{key.replace('_', ' ')} minus {base}'s ({better} is better)",
                   f"relative to {base} (zoomed)")
    for arm, runs in arms.items():
        curves = [r["curve"] for r in runs if r.get("curve")]
        if not curves:
            continue
        mean = mean_curve(runs, key)
        steps = [row["step"] for row in mean]
        line, = ax.plot(steps, [row[key] for row in mean], label=arm, **styles[arm])
        if len(curves) > 1:
            vals = [[c[i][key] for c in curves] for i in range(len(mean))]
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.15,
                            color=line.get_color())
    finish_line_plot(fig, ax, path, "step", key.replace("_", " ") + f" ({better} is better)", title)


def arm_styles(names: list[str]) -> dict[str, dict]:
    """One (colour, line style) per arm, the same in every panel: matplotlib's cycle repeats its 10 colours, so
    with 14 schemes `plain` and `residual` were both blue; past 10 arms the colours come round with dashes."""
    colours = plt.get_cmap("tab10").colors
    dashes = ("-", "--", ":", "-.")
    return {n: {"color": colours[i % 10], "linestyle": dashes[(i // 10) % 4]} for i, n in enumerate(names)}


#: an arm leaves the zoomed panel when its final gap is this many times the median absolute final gap
OFF_SCALE = 10


def _plot_relative(ax, arms: dict[str, list[dict]], base: str, key: str, styles: dict | None = None) -> None:
    """Each arm's mean curve minus ``base``'s at the same steps; the y-range covers the arms whose final gap is
    within OFF_SCALE x the median absolute final gap (at least the baseline's zero line), the others are
    clipped and named with their gap. (4x clipped real differences of 0.02 beside a median of 0.005.)"""
    styles = styles or arm_styles(list(arms))
    ref = {row["step"]: row[key] for row in mean_curve(arms[base], key)}
    diffs = {}
    for arm, runs in arms.items():
        pts = [(row["step"], row[key] - ref[row["step"]]) for row in mean_curve(runs, key) if row["step"] in ref]
        pts = [(s, d) for s, d in pts if math.isfinite(d)]
        if pts:
            diffs[arm] = pts
    finals = [abs(p[-1][1]) for a, p in diffs.items() if a != base]
    scale = OFF_SCALE * statistics.median(finals) if finals and statistics.median(finals) > 0 else None
    ax.axhline(0.0, color="0.5", lw=0.8)
    inside = []
    for arm, pts in diffs.items():
        final = pts[-1][1]
        off = scale is not None and abs(final) > scale
        ax.plot([s for s, _ in pts], [d for _, d in pts], label=f"{arm} (off scale: {final:+.3f})" if off else arm,
                **styles[arm])
        if not off:  # the range follows the arms that stay in view, over their second half (early evals differ most)
            inside.extend(d for _, d in pts[len(pts) // 2:])
    if inside and scale is not None:
        lo, hi = min(inside + [0.0]), max(inside + [0.0])
        pad = 0.15 * (hi - lo or scale)
        ax.set_ylim(lo - pad, hi + pad)


def label_axes(ax, xlabel: str, ylabel: str, title: str, legend_size: int = 8) -> None:
    """Labels, title, a light grid and a legend: the look of every line plot here."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def save_figure(fig, path, dpi: int = 120) -> None:
    """Tight layout, save, free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def finish_line_plot(fig, ax, path, xlabel: str, ylabel: str, title: str, dpi: int = 120) -> None:
    """The common ending of every single-axes line plot."""
    label_axes(ax, xlabel, ylabel, title)
    save_figure(fig, path, dpi)
