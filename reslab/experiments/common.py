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
    values.setdefault("progress", False)
    values.setdefault("tensorboard", False)
    return TrainConfig(task=task, model=model, **values)


def with_(cfg: TrainConfig, **changes) -> TrainConfig:
    for group in ("model_args", "task_args"):
        if group in changes:
            changes[group] = getattr(cfg, group) | changes[group]
    return dataclasses.replace(cfg, **changes)


def row(report: dict, arm: str) -> dict:
    return next(r for r in report["rows"] if r["arm"] == arm)


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
