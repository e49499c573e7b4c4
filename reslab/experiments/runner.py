"""One declarative runner for the experiment modules.

An experiment states its preset as named fields (``train``: the TrainConfig settings every arm shares; ``seeds``;
``tune``: a grid every arm is tuned on alike; and whatever axes it sweeps), its arms as *config overrides*
(``{"connection": ..., "model_args": {...}}``), and the cells it compares them in (e.g. one per depth x optimiser).
:func:`run_cells` trains every cell through :func:`reslab.compare.run_arms` (same seeds, data order, evaluation
batches and tuning for every arm; finished runs reused when config and code match), and :func:`arm_values` turns a
cell's report into the per-seed values verdicts are computed from. Plots with error bars and the README are
written by :func:`errorbar_panels` and :func:`write_readme`, so no module re-implements them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from ..compare import PendingParts, run_arms
from ..report import mean_std
from ..train import TrainConfig
from .common import with_


def build_configs(base: TrainConfig, arms: dict[str, dict]) -> dict[str, TrainConfig]:
    """Each arm is ``base`` with its overrides (``model_args`` / ``task_args`` merged, not replaced)."""
    return {label: with_(base, **overrides) for label, overrides in arms.items()}


def run_cells(cells: dict[str, dict[str, TrainConfig]], seeds: int, out: Path, baseline: str, log,
              tune: Callable[[str], dict | None] | dict | None = None, title: Callable[[str], str] | None = None
              ) -> dict[str, dict]:
    """Train every cell's arms under ``out/<cell>/`` (``run_arms``), each cell tuned on ``tune(cell)`` (or the one
    grid ``tune``); returns each cell's per-arm values (:func:`arm_values`)."""
    values, pending = {}, PendingParts()  # a part of a split run trains its seeds of every cell before it stops
    for name in part_order(list(cells)):
        configs = cells[name]
        grid = tune(name) if callable(tune) else tune
        with pending.step(f"{name}: "):
            report = run_arms(configs, seeds, Path(out) / name, baseline, tune=grid, log=log,
                              title=title(name) if title else name)
            values[name] = arm_values(report)
    pending.raise_if_any()
    return {name: values[name] for name in cells}


def part_order(names: list[str]) -> list[str]:
    """The order a process walks the cells in: part k of n starts (k-1)/n of the way along and wraps around, so
    parts started side by side train different cells' shared tuning runs at once instead of queueing on the same
    run's lock (:func:`reslab.compare.run_lock`); every part still visits every cell. Whole runs: as given."""
    from ..compare import active_part

    part = active_part()
    if part is None or part.count <= 1:
        return names
    start = (part.index - 1) * len(names) // part.count
    return names[start:] + names[:start]


def arm_values(report: dict) -> dict[str, dict]:
    """Per arm, per seed: final validation metric and loss, status, steps done, median step time, curve; the
    arm's parameter count, its steps to the baseline's final loss (mean curve and per seed) and, when tuned, the
    chosen point and the tuning seed's loss at every grid point."""
    out = {}
    rows = {r["arm"]: r for r in report.get("rows", [])}
    for arm, runs in report["runs"].items():
        t = report.get("tuning", {}).get(arm)
        out[arm] = {"metric": [r.get("final_val_metric") for r in runs],
                    "val_loss": [r.get("final_val_loss") for r in runs],
                    "status": [r.get("status") for r in runs],
                    "steps_done": [r.get("steps") for r in runs],
                    "median_step_time": [r.get("median_step_time") for r in runs],
                    "params": runs[0].get("params") if runs else None,
                    "curve": [r.get("curve") for r in runs],
                    # first step at which the seed-mean curve (and each seed's) reaches the baseline's final loss
                    "steps_to_target": rows.get(arm, {}).get("steps_to_target"),
                    "steps_to_target_per_seed": rows.get(arm, {}).get("steps_to_target_per_seed"),
                    "tuned": t["chosen"] if t else None,
                    "tuned_at_edge": t.get("at_edge") if t else None,
                    "tune_points": t["points"] if t else None}
    return out


def lr_text(train: dict, settings: dict) -> str:
    """The learning rate as a preset's runs used it, for a README's setup line: the grid when every arm was tuned
    (the chosen values are in the tuning table), else the one shared lr."""
    tune = settings.get("tune") or {}
    if tune.get("lr"):
        return f"lr tuned per arm from {tune['lr']} (+{tune.get('extend', 0)} past an edge)"
    return f"lr {train['lr']}"


def edge_note(at_edge: dict[str, bool | None]) -> str:
    """The labels whose tuned value ended at an edge of the grid after every extension it was allowed: there the
    arm's best may lie beyond the grid, so its result is a bound, not its tuned one. "" when none did."""
    edged = [label for label, edge in at_edge.items() if edge]
    return ("tuned lr at the edge of its grid after every allowed extension (its best may lie beyond): "
            + ", ".join(edged)) if edged else ""


def completed(values: dict, key: str = "metric") -> list[float]:
    """The per-seed ``key`` of the completed (not diverged) seeds of one arm's values."""
    return [x for x, s in zip(values[key], values["status"])
            if s == "completed" and x is not None and math.isfinite(x)]


def seed_stats(values: dict, key: str = "metric") -> dict:
    """Mean and std over completed seeds, how many completed and how many diverged."""
    ok = completed(values, key)
    m, sd = mean_std(ok)
    return {"mean": m, "std": sd, "n_ok": len(ok), "diverged": sum(s == "diverged" for s in values["status"]),
            "seeds": len(values["status"])}


def plot_final_metric(rows: list[dict], path: Path, ylabel: str, title: str = "", key: str = "metric_per_seed") -> None:
    """The claim's metric at the end of training, one column per arm: every seed as a dot, the mean ± std over
    seeds as a bar (rows of :func:`reslab.report.summarize_arms`; ``key``: their per-seed list, e.g. ``val_loss``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 * len(rows) + 2.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, r in enumerate(rows):
        vals = [v for v in r.get(key) or [] if v is not None and math.isfinite(v)]
        if not vals:
            continue
        mean, sd = mean_std(vals)
        ax.errorbar([i], [mean], yerr=[sd], fmt="s", capsize=6, color="black", zorder=3)
        ax.plot([i + 0.12] * len(vals), vals, "o", alpha=0.5, ms=4)
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def errorbar_panels(panels: dict[str, dict[str, tuple[list, list, list, list]]], path: Path, xlabel: str,
                    ylabel: str, title: str = "", floor: float | None = None, logy: bool = False) -> None:
    """One panel per key of ``panels``; in each, one line per label: ``(xs, means, stds, marked)`` with error bars
    (std over seeds) and an x where ``marked`` is true (e.g. a diverged seed); a NaN mean is drawn at ``floor``.
    ``logy``: a log y axis (error bars that would reach below zero are clipped to the mean's tenth)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * len(panels), 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (name, lines) in zip(axes, panels.items()):
        for label, (xs, means, stds, marked) in lines.items():
            err = [0.0 if not math.isfinite(s) else s for s in stds]
            lower = [min(e, 0.9 * m) if logy and math.isfinite(m) else e for e, m in zip(err, means)]
            line = ax.errorbar(xs, means, yerr=[lower, err], fmt="o-", capsize=3, label=label)
            for x, m, mk in zip(xs, means, marked):
                if mk:
                    ax.plot([x], [m if math.isfinite(m) else (floor if floor is not None else 0.0)], "x", ms=10,
                            color=line[0].get_color())
        if floor is not None:
            ax.axhline(floor, ls=":", color="grey")
        ax.set_xlabel(xlabel)
        ax.set_title(name, fontsize=10)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_readme(path: Path, title: str, verdict: str, why: str, sections: list[str], settings: dict,
                 images: list[tuple[str, str]]) -> None:
    """``# title``, the verdict with its explanation, the sections (markdown), the settings, the images."""
    lines = [f"# {title}", "", f"**Verdict: {verdict}** — {why}", ""]
    for s in sections:
        lines += [s, ""]
    lines += [f"Settings: `{json.dumps(settings)}`", ""]
    lines += [f"![{alt}]({src})" for alt, src in images]
    Path(path).write_text("\n".join(lines) + "\n")
