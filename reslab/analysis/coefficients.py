"""Learned connection coefficients over training (LAuReL's alpha/beta/gamma, ReZero/SkipInit lambdas,
ANCRe's routing), read from the ``coefficients`` field the trainer logs at every evaluation.

    reslab analyze coefficients RUN_DIR [--out PNG]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def coefficient_history(rows: list[dict]) -> dict[str, tuple[list[int], np.ndarray]]:
    """``{"<connection>/<name>": (steps, array of shape (n_evals, ...))}`` from metrics.jsonl rows."""
    series: dict[str, tuple[list[int], list]] = {}
    for r in rows:
        for conn, coefs in r.get("coefficients", {}).items():
            for name, value in coefs.items():
                steps, vals = series.setdefault(f"{conn}/{name}", ([], []))
                steps.append(r["step"])
                vals.append(value)
    return {k: (steps, np.asarray(vals, dtype=float)) for k, (steps, vals) in series.items()}


def plot_coefficients(rows: list[dict], path: str | Path, title: str = "") -> list[str]:
    """One panel per coefficient; one line per entry (block, or block x slot), up to 24 lines a panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = coefficient_history(rows)
    if not hist:
        raise ValueError("no learned coefficients in this log: the connection has none, or the run predates "
                         "coefficient logging")
    fig, axes = plt.subplots(len(hist), 1, figsize=(7, 2.6 * len(hist)), squeeze=False)
    for ax, (name, (steps, vals)) in zip(axes[:, 0], hist.items()):
        flat = vals.reshape(len(steps), -1)
        labels = ([",".join(str(int(k)) for k in np.unravel_index(i, vals.shape[1:])) for i in range(flat.shape[1])]
                  if vals.ndim > 1 else [""])
        for i in range(min(flat.shape[1], 24)):
            ax.plot(steps, flat[:, i], label=labels[i] if flat.shape[1] <= 12 else None, lw=1)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        if flat.shape[1] <= 12 and vals.ndim > 1:
            ax.legend(fontsize=6, ncol=6, title="block[,slot]", title_fontsize=6, loc="best", framealpha=0.5)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return list(hist)


def _cmd(args) -> int:
    from ..train import read_log

    run = Path(args.run_dir)
    if not (run / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{run}/metrics.jsonl not found: give the out_dir of a reslab train run")
    out = Path(args.out) if args.out else run / "coefficients.png"
    names = plot_coefficients(read_log(run), out, title=json.loads((run / "summary.json").read_text()).get(
        "connection", "") if (run / "summary.json").exists() else "")
    print(f"plotted {', '.join(names)} -> {out}")
    return 0


def cli_register(sub) -> None:
    p = sub.add_parser("coefficients", help="plot a run's learned connection coefficients over training")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/coefficients.png)")
    p.set_defaults(func=_cmd)
