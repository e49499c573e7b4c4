"""Experiments are data, verdicts are code.

Each module in this package defines ``EXPERIMENT = Experiment(...)`` for one paper claim: the claim
and the paper's number, budgets per preset (``quick`` for tests, ``cpu`` for the committed results
on 2 cores, ``gpu`` for paper-like sizes), a ``run`` function that trains the arms and returns
plain-JSON results, and a ``verdict`` function that turns those results into ``reproduced``,
``partial`` or ``not reproduced`` with the numbers -- or ``inconclusive`` when the claim's premise does not
hold at this scale, or when significance cannot be tested (fewer than 2 seeds).

``reslab reproduce NAME --preset P`` trains under ``runs/reproduce/NAME-P/`` (raw runs, checkpoints; ignored
by git) and publishes only what a reader needs to ``results/NAME/`` (cpu) or ``results/NAME-gpu/`` (gpu):
``summary.json`` (command, git revision, machine, per-seed values, the code revision and training wall time
of every run, the verdict), the markdown tables and the plots.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

VERDICTS = ("reproduced", "partial", "not reproduced", "inconclusive")


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
    # whether a preset may be split into parts by seed (``parts=N``): true when every reported run goes through
    # compare.run_arms (directly or via runner.run_cells); an experiment with its own loop trains all of it anyway
    splittable: bool = True
    # the claim's plots drawn from the results alone (no training): (results, folder) -> [(alt text, file name)].
    # ``reproduce`` draws them beside the tables; ``--resummarize`` redraws them from a committed summary, so a plot
    # added or fixed later needs no retraining
    plots: Callable[[dict, Path], list[tuple[str, str]]] | None = None


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
        from ..connections.registry import ranked

        raise ValueError(f"unknown experiment {name!r}; valid: {ranked(name, list(exps))}")
    return exps[name]


def default_out(name: str, preset: str) -> Path:
    """Where a preset's published outputs go: results/<name>/ (cpu), results/<name>-gpu/ (gpu); quick and other
    presets are never published, so they go to runs/."""
    if preset == "cpu":
        return Path("results") / name
    if preset == "gpu":
        return Path("results") / f"{name}-gpu"
    return Path("runs") / "reproduce" / f"{name}-{preset}"


def default_runs(name: str, preset: str) -> Path:
    """Where the raw runs of a preset live (ignored by git): reused by the next reproduce when their config and
    code revision match, never committed."""
    return Path("runs") / "reproduce" / f"{name}-{preset}"


#: top-level files of a run folder that a reader needs; everything else (runs, checkpoints, logs) stays in runs/
PUBLISHED = ("*.png", "*.md")


def publish(raw: Path, out: Path) -> list[str]:
    """Copy the tables and plots an experiment wrote at the top of ``raw`` into ``out``; returns their names."""
    import shutil

    names = []
    if raw.resolve() == out.resolve():
        return sorted(p.name for pat in PUBLISHED for p in raw.glob(pat))
    for pat in PUBLISHED:
        for p in sorted(raw.glob(pat)):
            shutil.copy2(p, out / p.name)
            names.append(p.name)
    return sorted(names)


def draw_plots(exp: Experiment, results: dict, folder: Path) -> list[str]:
    """Draw ``exp.plots`` into ``folder`` and link every image its page (README.md, else results.md) lacks; returns
    the files drawn ([] for an experiment without the hook)."""
    if exp.plots is None:
        return []
    images = exp.plots(results, Path(folder))
    page = next((folder / n for n in ("README.md", "results.md") if (folder / n).exists()), folder / "README.md")
    text = page.read_text() if page.exists() else f"# {exp.name}\n"
    missing = [f"![{alt}]({src})" for alt, src in images if f"]({src})" not in text]
    if missing:
        page.write_text(text.rstrip("\n") + "\n\n" + "\n".join(missing) + "\n")
    return [src for _, src in images]


REPRODUCE_LINE = "Reproduce: "


def stamp_command(folder: Path, command: str) -> None:
    """Put the command that produced a published page's numbers on the page itself (README.md and results.md), under
    its title: a reader of any table sees how to re-run it without opening summary.json. Rewritten, not added
    twice, when the page already has one."""
    line = (f"{REPRODUCE_LINE}`{command}` (every number on this page; `summary.json` holds the per-seed values, "
            "each run's code revision and wall time)")
    for name in ("README.md", "results.md"):
        page = Path(folder) / name
        if not page.exists():
            continue
        lines = page.read_text().split("\n")
        at = next((i for i, x in enumerate(lines) if x.startswith(REPRODUCE_LINE + "`")), None)
        if at is not None:
            lines[at] = line
        else:
            head = 1 if lines and lines[0].startswith("#") else 0  # under the title
            lines[head:head] = (["", line] if head else [line, ""])
        page.write_text("\n".join(lines))


def part_commands(name: str, preset: str, parts: int) -> str:
    """The command line(s) that run a preset: one, or one per part when the preset is split."""
    base = f"reslab reproduce {name} --preset {preset}"
    return base if parts <= 1 else " && ".join(f"{base} --part {k}" for k in range(1, parts + 1))


def reproduce(name: str, preset: str, out_dir: str | Path | None = None, command: str = "", log=print,
              runs_dir: str | Path | None = None, part: int | None = None) -> dict | None:
    """Run one experiment's preset: raw runs under ``runs_dir`` (default runs/reproduce/NAME-PRESET, or
    OUT/runs when ``out_dir`` is given), published summary/tables/plots under ``out_dir``.

    A preset with ``parts=N`` is too long for one sitting (each part fits the hour): ``part=k`` trains the
    tuning runs and the k-th slice of every arm's seeds (:func:`reslab.compare.seed_part`) and reuses whatever
    the other parts finished. While runs of other parts are missing it publishes nothing and returns None;
    the part that finds every run finished writes the summary (with each part's wall time). Without ``part``
    a split preset runs whole."""
    from ..compare import PartIncomplete, SeedPart, run_records, seed_part, used_runs
    from ..checkpoint import atomic_write_json
    from ..train import git_revision, machine

    exp = get_experiment(name)
    if preset not in exp.presets:
        raise ValueError(f"experiment {name!r} has no preset {preset!r}; valid: {', '.join(exp.presets)}")
    parts = int(exp.presets[preset].get("parts", 1))
    if parts > 1 and not exp.splittable:
        raise ValueError(f"experiment {name!r} preset {preset!r} sets parts={parts}, but {name} trains its runs in "
                         f"its own loop, which cannot be split by seed: remove 'parts' from the preset")
    if part is not None and parts <= 1:
        raise ValueError(f"experiment {name!r} preset {preset!r} is not split into parts: drop --part "
                         f"(`reslab reproduce {name} --preset {preset}`)")
    this_part = SeedPart(part, parts) if part is not None else None  # checks 1 <= part <= parts
    out = Path(out_dir) if out_dir else default_out(name, preset)
    raw = Path(runs_dir) if runs_dir else (out / "runs" if out_dir else default_runs(name, preset))
    out.mkdir(parents=True, exist_ok=True)
    raw.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    part_times = raw / "parts.json"  # wall time of each part (all its invocations), kept in the part's summary
    try:
        with seed_part(this_part), used_runs() as used:
            results = exp.run(dict(exp.presets[preset]), raw, log)
    except PartIncomplete as e:
        times = load_summary(part_times) if part_times.exists() else {}
        # a part invoked again (to collect parts that ran side by side) adds its time: each part's total is kept
        times[str(part)] = round(times.get(str(part), 0.0) + time.time() - t0, 1)
        atomic_write_json(part_times, times)
        others = [k for k in range(1, parts + 1) if k != part]
        log(f"\n{name} ({preset}): part {part} of {parts} done in {times[str(part)] / 60:.1f} min; {e}. Run "
            + " and ".join(f"`reslab reproduce {name} --preset {preset} --part {k}`" for k in others)
            + f" (any order; finished runs are reused): the part that finds every run finished writes the summary "
              f"to {out}. Nothing was published.")
        return None
    verdict, explanation = exp.verdict(results)
    if verdict not in VERDICTS:
        raise RuntimeError(f"experiment {name}: verdict {verdict!r} is not one of {VERDICTS}")
    draw_plots(exp, results, raw)  # published with the other plots and tables below
    runs = run_records(raw, only=used)  # the runs this result read, not stale ones of an older preset in raw
    wall = round(time.time() - t0, 1)
    summary = {
        "experiment": name, "paper": exp.paper, "claim": exp.claim, "paper_number": exp.paper_number,
        "preset": preset, "settings": exp.presets[preset],
        "command": part_commands(name, preset, parts) if part is not None else (
            command or f"reslab reproduce {name} --preset {preset}"),
        "git": git_revision(), "machine": machine(), "wall_time_s": wall,
        # summed over the Trainer runs trained by this call or an earlier one; an experiment with its own loop
        # times it itself (results["training_wall_time_s"]), else None
        "training_wall_time_s": (round(sum(r.get("wall_time_s") or 0.0 for r in runs), 1) if runs else
                                 results.get("training_wall_time_s") if isinstance(results, dict) else None),
        "verdict": verdict, "explanation": explanation, "notes": exp.notes, "results": results,
        "runs": runs, "published": publish(raw, out),
    }
    if part is not None:  # wall_time_s is this part's; each part's own is kept beside it
        times = load_summary(part_times) if part_times.exists() else {}
        summary["part_wall_time_s"] = times | {str(part): round(times.get(str(part), 0.0) + wall, 1)}
    stamp_command(out, summary["command"])
    atomic_write_json(out / "summary.json", summary)
    part_times.unlink(missing_ok=True)  # only once the summary holds the parts' times
    log(f"\n{name} ({preset}): {verdict.upper()} — {explanation}\nwrote {out / 'summary.json'} (raw runs in {raw})")
    return summary


def resummarize(path: str | Path, log=print) -> dict:
    """Re-apply the experiment's *current* verdict rule to a committed summary's results (the per-seed values it
    holds); nothing is trained and no number changes. The summary records that it was re-summarised, by which
    git revision, and the verdict it had before."""
    from ..checkpoint import atomic_write_json

    path = Path(path)
    s = load_summary(path)
    exp = get_experiment(s["experiment"])
    drawn = draw_plots(exp, s["results"], path.parent)  # from the per-seed values it holds: nothing trained
    if set(drawn) - set(s.get("published", [])):
        s["published"] = sorted(set(s.get("published", [])) | set(drawn))
        atomic_write_json(path, s)
        log(f"{path.parent}: drew {', '.join(drawn)} from the summary")
    stamp_command(path.parent, s["command"])  # the pages of summaries published before pages carried it
    verdict, explanation = exp.verdict(s["results"])
    if verdict not in VERDICTS:
        raise RuntimeError(f"experiment {exp.name}: verdict {verdict!r} is not one of {VERDICTS}")
    if (verdict, explanation, exp.claim, exp.paper_number) != (s["verdict"], s["explanation"], s["claim"], s.get("paper_number")):
        s.setdefault("resummarized", []).append({"git": _rule_revision(), "previous_verdict": s["verdict"],
                                                 "command": f"reslab reproduce {exp.name} --preset {s.get('preset', 'cpu')} --resummarize"})
        s["verdict"], s["explanation"] = verdict, explanation
        s["claim"], s["paper_number"] = exp.claim, exp.paper_number  # the claim as the current rule tests it
        atomic_write_json(path, s)
        _rewrite_readme_verdict(path.parent / "README.md", verdict, explanation, s["resummarized"][-1])
        log(f"{path}: {s['resummarized'][-1]['previous_verdict']} -> {verdict}")
    else:
        log(f"{path}: unchanged ({verdict})")
    return s


def _rewrite_readme_verdict(readme: Path, verdict: str, explanation: str, record: dict) -> None:
    """The published README's verdict line (``runner.write_readme``'s ``**Verdict: ...**``) follows a re-summarised
    summary, so the folder never shows two verdicts; the line says it was re-judged, by which revision."""
    if not readme.exists():
        return
    lines = readme.read_text().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("**Verdict: "):
            lines[i] = (f"**Verdict: {verdict}** — {explanation} (re-summarised at {record['git']}: the current rule "
                        f"applied to these runs' per-seed values; `{record['command']}`)")
            readme.write_text("\n".join(lines))
            return


def _rule_revision() -> str:
    """The commit whose rules re-judged a summary; ``+uncommitted`` when reslab/ has changes not in it (the rule
    applied is then not the one that commit holds)."""
    import subprocess

    from ..train import git_revision

    rev = git_revision()
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return rev + ("+uncommitted" if dirty else "")


def load_summary(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
