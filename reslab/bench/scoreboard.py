"""``reslab bench scoreboard``: ``results/README.md`` generated from every ``results/*/summary.json``.

Each experiment of :mod:`reslab.experiments` writes a ``summary.json`` (``reslab reproduce NAME --preset
cpu|gpu``) with the claim, the paper's number, our verdict (computed by code) and its explanation with
our numbers, and the command that reproduced it. The scoreboard is one table of them:

    experiment | paper | claim | paper's number | ours | verdict | statistics | reproduce (CPU / GPU)

plus the connection-overhead targets of every committed ``reslab bench overhead`` run (each
``overhead.json`` under ``results/bench-overhead/``; a target judged by several runs of one kind is taken
from its most precise run, :func:`judged_targets`). The *statistics* column checks that a summary
carries what every comparison must report -- mean ± std over seeds, a Welch t-test p-value against the baseline, and steps to the baseline's
final loss -- by looking for key names of that kind anywhere in its results (``reslab.compare`` rows
carry ``val_loss_std``, ``welch_p_vs_baseline`` and ``steps_to_target``; see :data:`STATS`), and
names what is missing.

With ``--readme`` the headline rows (one per experiment, its verdict per preset, and the overhead
targets met) also replace the block between ``<!-- scoreboard:start -->`` and ``<!-- scoreboard:end -->``
in the top-level README.md (the folder above ``--results``); without both markers README.md is left
untouched and a message says so.
"""
from __future__ import annotations

import json
from pathlib import Path

START, END = "<!-- scoreboard:start -->", "<!-- scoreboard:end -->"
REQUIRED = ("experiment", "claim", "verdict", "command")
VERDICT_ORDER = ("reproduced", "partial", "not reproduced", "inconclusive")
PRESET_ORDER = {"cpu": 0, "gpu": 1, "quick": 2}
OVERHEAD_DIR = "bench-overhead"

# What "the statistics" means: for each, key-name fragments of which one must occur in some key anywhere
# in a summary's results (compare rows: val_loss_std, welch_p_vs_baseline, steps_to_target; experiments
# that compute their own use names like acc_std, welch_p_fd_cls, steps_to_target_per_seed).
STATS = {
    "mean ± std": ("std",),
    "Welch p": ("welch",),
    "steps-to-target": ("steps_to_target",),
}


def _cell(x) -> str:
    """Text safe inside a markdown table cell."""
    if x is None or x == "":
        return "—"
    return " ".join(str(x).split()).replace("|", "\\|")


def load_summaries(results: str | Path) -> list[dict]:
    """Every ``results/*/summary.json`` (with its folder name under ``_dir``), sorted by experiment, preset."""
    root = Path(results)
    if not root.is_dir():
        raise ValueError(f"results folder {root} does not exist; run `reslab reproduce NAME --preset cpu` first "
                         f"or pass --results PATH")
    out = []
    for path in sorted(root.glob("*/summary.json")):
        try:
            s = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); rerun its experiment or delete the file") from None
        if not isinstance(s, dict):
            raise ValueError(f"{path} holds {type(s).__name__}, not an experiment summary; delete or regenerate it")
        missing = [k for k in REQUIRED if k not in s]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: it was not written by `reslab reproduce`; "
                             f"rerun the experiment (or move the folder out of {root})")
        s["_dir"] = path.parent.name
        out.append(s)
    out.sort(key=lambda s: (s["experiment"], PRESET_ORDER.get(s.get("preset"), 9), s["_dir"]))
    return out


def load_overhead_runs(results: str | Path) -> list[dict]:
    """Every committed ``reslab bench overhead`` run: ``bench-overhead/overhead.json`` and the
    ``overhead.json`` of each folder below it (each with its folder, relative to ``results``, under ``_dir``)."""
    from .overhead_runs import load_run

    root = Path(results) / OVERHEAD_DIR
    runs = []
    for path in sorted(root.rglob("overhead.json")):
        r = load_run(path)  # with its ERRATA.json applied, if any
        r["_dir"] = path.parent.relative_to(Path(results)).as_posix()
        runs.append(r)
    return runs


def _kind_order(run: dict) -> tuple:
    """Headline order of the kinds: wall clock first, eager, fused, compiled; more threads first; default size first."""
    path = run.get("path") or "eager"
    return (run.get("clock", "wall") != "wall", 0 if path == "eager" else 2 if "compiled" in path else 1,
            -(run.get("threads") or 0), run.get("size", "default") != "default", run.get("device", "cpu"))


def commit_order(rev: str | None, root: Path) -> int:
    """How many commits lead to ``rev`` (later commits count more); 0 when git cannot tell."""
    import subprocess

    if not rev:
        return 0
    try:
        out = subprocess.run(["git", "rev-list", "--count", rev], cwd=root, capture_output=True, text=True,
                             timeout=10)
        return int(out.stdout.strip()) if out.returncode == 0 else 0
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def judged_targets(runs: list[dict], root: str | Path = ".") -> list[dict]:
    """One row per (kind of run, model, target, metric) over every committed run, from the most precise run that
    measured it: the one that timed the most steps per arm (``repeats * steps_per_round``: its time ratio is the
    least noisy; memory, the RSS peak, varies little between runs, so every run ties there), then the later commit (a later run measures the code as
    it is now). Which run wins never depends on the ratio or the status it found, so a refused long run is not
    replaced by a short one that happened to be judged. Statuses are read by the current rule
    (:func:`reslab.bench.overhead_runs.target_status`: a time ratio without its paired IQR, from a run older than the
    refusal rule, counts as refused). Each row carries ``kind`` and ``run`` (its folder)."""
    from .overhead_runs import run_kind, target_status, timed_steps

    best: dict[tuple, tuple] = {}
    order = {r["_dir"]: commit_order(r.get("git"), Path(root)) for r in runs}
    for r in runs:
        for t in r.get("targets", []):
            status = target_status(r, t)
            if status is None:
                continue
            rank = (timed_steps(r) if t["metric"] == "time" else 0, order[r["_dir"]])
            key = (run_kind(r), t["model"], t["target"], t["metric"])
            if key not in best or rank > best[key][0]:
                best[key] = (rank, t | {"status": status, "kind": run_kind(r), "kind_order": _kind_order(r),
                                        "run": r["_dir"]})
    return sorted((row for _, row in best.values()), key=lambda t: t["kind_order"])


def _keys(obj, acc: set[str]) -> set[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            acc.add(k)
            _keys(v, acc)
    elif isinstance(obj, list):
        for v in obj:
            _keys(v, acc)
    return acc


def missing_stats(summary: dict) -> list[str]:
    """Which of the required statistics the summary's results lack (empty: all present)."""
    keys = [k.lower() for k in _keys(summary.get("results"), set())]
    return [name for name, frags in STATS.items() if not any(f in k for k in keys for f in frags)]


def _gpu_presets() -> dict[str, bool] | None:
    """{experiment: has a gpu preset}; None when the experiment registry cannot be imported."""
    try:
        from ..experiments import experiments

        return {name: "gpu" in exp.presets for name, exp in experiments().items()}
    except Exception:  # a half-written experiment elsewhere must not break the scoreboard
        return None


def _counts(summaries: list[dict]) -> str:
    parts = [f"{sum(s['verdict'] == v for s in summaries)} {v}" for v in VERDICT_ORDER]
    other = [s for s in summaries if s["verdict"] not in VERDICT_ORDER]
    if other:
        parts.append(f"{len(other)} other")
    return ", ".join(parts)


def _verdict(v: str, summary: dict | None = None) -> str:
    text = f"**{v}**" if v == "not reproduced" else v
    if summary and summary.get("resummarized"):  # the rule was re-applied to runs made before it (no re-run yet)
        text += " (re-summarised: runs predate this rule)"
    return text


def overhead_line(rows: list[dict], link: str) -> str:
    """The headline: per kind of run that judged at least one target, how many were met, missed and refused
    (``rows``: see :func:`judged_targets`); kinds that judged none are counted, not listed; the misses themselves are
    in the scoreboard's table."""
    rows = [t for t in rows if t.get("status") is not None]
    if not rows:
        return ""
    kinds: list[str] = []
    for t in rows:
        if t.get("kind", "") not in kinds:
            kinds.append(t.get("kind", ""))
    parts, unjudged = [], []
    for k in kinds:
        ks = [t for t in rows if t.get("kind", "") == k]
        met = sum(t["status"] == "pass" for t in ks)
        missed = sum(t["status"] == "miss" for t in ks)
        refused = sum(t["status"] == "refused" for t in ks)
        if not met and not missed:
            unjudged.append(k)
            continue
        part = f"{k}: {met} of {len(ks)} met, {missed} missed"
        if refused:  # neither met nor missed: the bench would not judge them (busy machine or too noisy a ratio)
            part += f", {refused} refused"
        parts.append(part)
    if unjudged:
        parts.append(f"{len(unjudged)} other kind(s) of run judged none ({', '.join(unjudged)})")
    return ("Connection overhead targets (CPU unless a kind names its device) over every committed `reslab bench "
            "overhead` run, each target from its most precise run, the one that timed the most steps (" + "; ".join(parts)
            + "; *refused*: not judged, the run was on a busy machine or its paired IQR was wider than the target's "
            f"margin) ([targets and misses]({link})).")


def scoreboard_markdown(summaries: list[dict], overhead: list[dict] | None, gpu: dict[str, bool] | None = None,
                        overhead_notes: bool = False) -> str:
    lines = ["# Scoreboard", "",
             "Generated by `reslab bench scoreboard` from every `results/*/summary.json` and "
             "every `results/bench-overhead/**/overhead.json`; do not edit by hand. Each verdict is computed by code from "
             "the paper's stated threshold (see the experiment module); *statistics* checks that the summary "
             "reports mean ± std over seeds, Welch p-values against the baseline and steps to the baseline's "
             "final loss.", ""]
    if summaries:
        lines += [f"**{len(summaries)} result(s): {_counts(summaries)}.**", "",
                  "| experiment | preset | paper | claim | paper's number | ours | verdict | statistics | reproduce |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in summaries:
            miss = missing_stats(s)
            stats = "✓" if not miss else "missing: " + ", ".join(miss)
            cmd = f"`{_cell(s['command'])}`"
            name = s["experiment"]
            if gpu is not None and s.get("preset") != "gpu":
                cmd += (f"<br>GPU: `reslab reproduce {name} --preset gpu`" if gpu.get(name)
                        else "<br>GPU: no gpu preset")
            ours = s.get("ours") or s.get("explanation")
            lines.append(f"| [{_cell(name)}]({s['_dir']}/) | {_cell(s.get('preset'))} | {_cell(s.get('paper'))} | "
                         f"{_cell(s['claim'])} | {_cell(s.get('paper_number'))} | {_cell(ours)} | "
                         f"{_verdict(_cell(s['verdict']), s)} | {stats} | {cmd} |")
    else:
        lines.append("No experiment summaries yet: run `reslab reproduce NAME --preset cpu`.")
    lines.append("")
    if overhead:
        lines += ["## Connection overhead", "", overhead_line(overhead, "#connection-overhead"), "",
                  "Every `overhead.json` under `bench-overhead/`; each run's command is in its `overhead.md`"
                  + (f", profiles and what was changed in [{OVERHEAD_DIR}/NOTES.md]({OVERHEAD_DIR}/NOTES.md)"
                     if overhead_notes else "") + ". A row per kind of run, model, target and metric, from the "
                  "run that timed the most steps (then the later commit), whatever it found.", "",
                  "| kind of run | target | model | metric | limit | measured ratio | status | run |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in overhead:
            ratio = "—" if t.get("ratio") is None or t["status"] == "refused" else f"{t['ratio']:.3f}×"
            status = {"pass": "pass", "miss": "**miss**", "refused": "refused"}.get(t.get("status"), "—")
            lines.append(f"| {t['kind']} | `{_cell(t['target'])}` | {t['model']} | {t['metric']} | "
                         f"≤ {t['limit']:.2f}× | {ratio} | {status} | [{t['run']}]({t['run']}/overhead.md) |")
        lines.append("")
    return "\n".join(lines)


def headline_markdown(summaries: list[dict], overhead: list[dict] | None,
                      results_link: str = "results/README.md") -> str:
    """The short block for the top-level README: one row per experiment with its verdict per preset."""
    by_exp: dict[str, list[dict]] = {}
    for s in summaries:
        by_exp.setdefault(s["experiment"], []).append(s)
    lines = []
    if by_exp:
        lines += ["| experiment | claim | verdict | re-run with |", "|---|---|---|---|"]
        for name, ss in by_exp.items():
            verdicts = "; ".join(f"{_verdict(s['verdict'], s)} ({s.get('preset', '?')})" for s in ss)
            # the command that produced each verdict, as its summary recorded it (a split preset: one per part)
            commands = "<br>".join(f"`{_cell(s['command'])}`" for s in ss if s.get("command"))
            first = ss[0]
            lines.append(f"| [{_cell(name)}](results/{first['_dir']}/) | {_cell(first['claim'])} | {verdicts} | "
                         f"{commands or '—'} |")
        lines.append("")
    else:
        lines += ["No experiment results yet.", ""]
    line = overhead_line(overhead or [], f"{results_link}#connection-overhead")
    if line:
        lines += [line, ""]
    lines.append(f"Full scoreboard (paper numbers, ours, commands): [{results_link}]({results_link}).")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str | None:
    """``text`` with the part between the markers replaced by ``block``; None if the markers are not
    both there, once each, start before end."""
    if text.count(START) != 1 or text.count(END) != 1:
        return None
    i, j = text.index(START), text.index(END)
    if j < i:
        return None
    return text[: i + len(START)] + "\n" + block.rstrip("\n") + "\n" + text[j:]


def write_scoreboard(results: str | Path = "results", readme: bool = False, log=print) -> Path:
    """Regenerate ``results/README.md``; with ``readme`` also the marked block of ``../README.md``."""
    root = Path(results)
    summaries = load_summaries(root)
    overhead = judged_targets(load_overhead_runs(root), root)
    out = root / "README.md"
    notes = (root / OVERHEAD_DIR / "NOTES.md").exists()
    out.write_text(scoreboard_markdown(summaries, overhead, _gpu_presets(), overhead_notes=notes))
    log(f"wrote {out} ({len(summaries)} experiment summaries{', overhead targets' if overhead else ''})")
    lacking = [f"{s['_dir']} ({', '.join(missing_stats(s))})" for s in summaries if missing_stats(s)]
    if lacking:
        log("summaries without the required statistics: " + "; ".join(lacking))
    if readme:
        top = root.resolve().parent / "README.md"
        if not top.exists():
            log(f"{top} does not exist; nothing to update")
            return out
        new = replace_block(top.read_text(), headline_markdown(summaries, overhead))
        if new is None:
            log(f"{top} has no '{START}' ... '{END}' block (each marker once, in that order); "
                f"README.md left unchanged — add the markers where the headline rows belong")
        else:
            top.write_text(new)
            log(f"updated the scoreboard block of {top}")
    return out


def _cmd(args) -> int:
    write_scoreboard(args.results, args.readme)
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("scoreboard", help="regenerate results/README.md from every results/*/summary.json "
                                                 "and the overhead benchmark")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--readme", action="store_true",
                   help=f"also rewrite the {START} ... {END} block of the README.md next to the results folder")
    p.set_defaults(func=_cmd)
