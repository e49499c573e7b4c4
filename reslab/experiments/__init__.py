"""Experiments are data, verdicts are code.

Each module in this package defines ``EXPERIMENT = Experiment(...)`` for one paper claim: the claim
and the paper's number, budgets per preset (``quick`` for tests, ``cpu`` for the committed results
on 2 cores, ``gpu`` for paper-like sizes), a ``run`` function that trains the arms and returns
plain-JSON results, and a ``verdict`` function that turns those results into ``reproduced``,
``partial`` or ``not reproduced`` with the numbers. ``reslab reproduce NAME --preset P`` runs one
and writes ``summary.json`` (command, git revision, machine, per-seed values, verdict) beside its plots.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

VERDICTS = ("reproduced", "partial", "not reproduced")


@dataclass
class Experiment:
    name: str
    paper: str  # which paper the claim is from
    claim: str  # the claim in one or two sentences
    paper_number: str  # the paper's own number(s) for it
    presets: dict[str, dict]  # preset name -> budget/arm settings passed to run()
    run: Callable[[dict, Path, Callable[[str], None]], dict]  # (settings, out_dir, log) -> results
    verdict: Callable[[dict], tuple[str, str]]  # results -> (verdict, explanation with numbers)
    notes: str = ""
    tags: list[str] = field(default_factory=list)


_REGISTRY: dict[str, Experiment] = {}


def experiments() -> dict[str, Experiment]:
    if not _REGISTRY:
        for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
            if mod.startswith("_") or mod == "common":
                continue
            exp = getattr(importlib.import_module(f"{__name__}.{mod}"), "EXPERIMENT", None)
            if exp is not None:
                _REGISTRY[exp.name] = exp
    return _REGISTRY


def get_experiment(name: str) -> Experiment:
    exps = experiments()
    if name not in exps:
        import difflib

        ranked = difflib.get_close_matches(name, list(exps), n=len(exps), cutoff=0.0)
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(ranked)}")
    return exps[name]


def default_out(name: str, preset: str) -> Path:
    """Committed results live in results/<name>/ (cpu; gpu under results/<name>-gpu/); quick runs go to runs/."""
    if preset == "cpu":
        return Path("results") / name
    if preset == "gpu":
        return Path("results") / f"{name}-gpu"
    return Path("runs") / "reproduce" / f"{name}-{preset}"


def reproduce(name: str, preset: str, out_dir: str | Path | None = None, command: str = "", log=print) -> dict:
    from ..train import atomic_write_json, git_revision, machine

    exp = get_experiment(name)
    if preset not in exp.presets:
        raise ValueError(f"experiment {name!r} has no preset {preset!r}; valid: {', '.join(exp.presets)}")
    out = Path(out_dir) if out_dir else default_out(name, preset)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = exp.run(dict(exp.presets[preset]), out, log)
    verdict, explanation = exp.verdict(results)
    if verdict not in VERDICTS:
        raise RuntimeError(f"experiment {name}: verdict {verdict!r} is not one of {VERDICTS}")
    summary = {
        "experiment": name, "paper": exp.paper, "claim": exp.claim, "paper_number": exp.paper_number,
        "preset": preset, "settings": exp.presets[preset], "command": command or f"reslab reproduce {name} --preset {preset}",
        "git": git_revision(), "machine": machine(), "wall_time_s": round(time.time() - t0, 1),
        "verdict": verdict, "explanation": explanation, "notes": exp.notes, "results": results,
    }
    atomic_write_json(out / "summary.json", summary)
    log(f"\n{name} ({preset}): {verdict.upper()} — {explanation}\nwrote {out / 'summary.json'}")
    return summary


def load_summary(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
