"""`reslab compare`: train every arm (connection) x seed on the same task, model and budget, then
print a table, write results.json/results.md and a loss-curve plot.

Fairness: every arm gets the same config except the connection -- same data order (the batch
generator is seeded by the seed alone), same evaluation batches, same steps and schedule.
Runs already completed in the output folder (same config) are reused, so an interrupted comparison
resumes where it stopped; unfinished runs resume from their checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from .connections import connection, list_connections
from .connections.registry import split_top
from .report import markdown_table, plot_curves, summarize_arms
from .train import TrainConfig, TrainingDiverged, atomic_write_json, git_revision, machine, train


def parse_arms(text: str) -> list[str]:
    """``"residual, laurel(rw,lr), ancre"`` -> three specs (commas inside parentheses stay). ``all`` expands
    to every registered scheme's example spec (its defaults; ``laurel(rw, lr)`` for LAuReL). Each spec is validated up front."""
    arms = []
    for part in split_top(text):
        arms.extend([i.example for i in list_connections()] if part == "all" else [part])
    if not arms:
        raise ValueError("no connections given; e.g. --connections residual,ancre or --connections all")
    for a in arms:  # build each once, tiny, so that any bad option fails before hours of training start
        connection(a, n_blocks=2, dim=4, branches_per_block=2)
    if len(set(arms)) != len(arms):
        raise ValueError(f"duplicate connections in {arms}")
    return arms


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec).strip("_")


def compare(base: TrainConfig, arms: list[str], seeds: int, out_dir: str | Path, baseline: str | None = None,
            command: str = "", log=print) -> dict:
    """Every arm is ``base`` with another connection."""
    baseline = baseline or ("residual" if "residual" in arms else arms[0])
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not one of the arms {arms}")
    configs = {arm: dataclasses.replace(base, connection=arm) for arm in arms}
    title = f"{base.task} / {base.model}: {seeds} seed(s), {base.steps} steps"
    return run_arms(configs, seeds, out_dir, baseline, command=command, title=title, log=log)


def run_arms(configs: dict[str, TrainConfig], seeds: int, out_dir: str | Path, baseline: str, command: str = "",
             title: str = "", log=print) -> dict:
    """Train each labelled config for ``seeds`` seeds (seed, seed+1, ...) under ``out_dir/<label>/seed<s>``,
    then write results.json / results.md / curves.png. Arms may differ in anything (connection, depth...);
    experiments use this directly, ``compare`` for connection-only arms."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [baseline] + [a for a in configs if a != baseline]  # the table reads against its first row
    results: dict[str, list[dict]] = {}
    for arm in labels:
        base = configs[arm]
        results[arm] = []
        for seed in range(seeds):
            cfg = dataclasses.replace(base, seed=base.seed + seed,
                                      out_dir=str(out / slug(arm) / f"seed{base.seed + seed}"))
            summary = train_or_reuse(cfg, log, tag=f"[{arm} seed {cfg.seed}]")
            results[arm].append(summary)
            if summary.get("status") == "completed":
                log(f"[{arm} seed {cfg.seed}] val loss {summary['final_val_loss']:.4f}  "
                    f"{summary['metric']} {summary['final_val_metric']:.4f}")
    rows = summarize_arms(results, baseline)
    table = markdown_table(rows, baseline)
    plot_curves(results, out / "curves.png", title=title)
    first = configs[baseline]
    report = {
        "command": command, "git": git_revision(), "machine": machine(), "task": first.task, "model": first.model,
        "seeds": seeds, "baseline": baseline, "arms": labels, "rows": rows,
        "runs": {a: [{k: v for k, v in r.items() if k != "config"} for r in rs] for a, rs in results.items()},
        "configs": {a: dataclasses.asdict(c) for a, c in configs.items()},
    }
    atomic_write_json(out / "results.json", report)
    (out / "results.md").write_text(f"# {title}\n\n`{command}`\n\n{table}\n![curves](curves.png)\n")
    log("\n" + table)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}")
    return report


def train_or_reuse(cfg: TrainConfig, log=print, tag: str = "") -> dict:
    """Train one run, or reuse the finished (completed or diverged) run with exactly this config in its
    folder; a diverged run returns its summary with status "diverged". A folder holding a finished run
    of *other* settings starts afresh instead of resuming that run's checkpoint; an unfinished run
    (a checkpoint, no summary) resumes."""
    path = Path(cfg.out_dir) / "summary.json"
    if path.exists():
        try:
            s = json.loads(path.read_text())
        except json.JSONDecodeError:
            s = {}
        if s.get("config") == json.loads(json.dumps(cfg.to_dict())) and s.get("status") in ("completed", "diverged"):
            log(f"{tag} reusing finished run in {cfg.out_dir} ({s['status']})")
            return s
        cfg = dataclasses.replace(cfg, resume=False)
    log(f"{tag} training {cfg.steps} steps ...")
    try:
        return train(cfg)
    except TrainingDiverged as e:
        log(f"{tag} diverged: {e}")
        return json.loads(path.read_text())
