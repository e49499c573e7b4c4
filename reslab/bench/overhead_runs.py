"""Committed ``reslab bench overhead`` runs as the README's table and the scoreboard read them: corrections
(``ERRATA.json``) applied, the kind of each run, and one table over many runs."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .overhead import canonical_spec, evaluate_targets

ERRATA_FILE = "ERRATA.json"


def load_run(path: str | Path) -> dict:
    """An ``overhead.json`` as the tables and the scoreboard read it: with the corrections of an ``ERRATA.json``
    beside it applied, in order. Each erratum names the run it corrects by its ``git`` revision (an erratum whose
    revision is not the run's is about an earlier run in that folder and is skipped: a new run written there is
    read as written) and gives a ``reason``; it is one of two kinds:

    - ``{"arms": [...]}``: arms that the run did not measure as it says (e.g. ran eagerly in a compiled run); they
      are dropped from every family and from the targets.
    - ``{"rename": {"old": "new", ...}}``: arms whose name now means other code, because a default changed after
      the run (mhc's Sinkhorn form: the run's ``mhc`` is now ``mhc(sinkhorn_form=matrix)``). All names are
      renamed at once (so two arms may swap); new names must be canonical specs (as runs name arms). The targets
      are judged again for the renamed arms by the current :data:`reslab.bench.overhead.TARGETS`: a renamed arm keeps a target only if
      its new name carries one.

    Every arm an erratum names must be in the run as the errata before it left it. The applied errata are kept
    under ``errata``. The bench's own output files stay as it wrote them."""
    path = Path(path)
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun `reslab bench overhead` or delete it") from None
    fix = path.parent / ERRATA_FILE
    if not fix.exists():
        return run
    errata = _read_errata(fix)
    applied = [e for e in errata if e["git"] == run.get("git")]
    for e in applied:
        named = set(e["arms"]) if "arms" in e else set(e["rename"])
        if absent := named - set(run["arms"]):
            raise ValueError(f"{fix}: {sorted(absent)} not among the arms of {path} "
                             f"({', '.join(run['arms'])}) as the errata before it leave them; fix the erratum")
        if "arms" in e:
            _drop_arms(run, named)
        else:
            _rename_arms(run, e["rename"], fix)
    if applied:
        run["errata"] = applied
    return run


def _read_errata(fix: Path) -> list[dict]:
    """The errata of an ERRATA.json, checked for shape (one clear error naming the file if not)."""
    shape = ('a list of {"git": revision, "reason": ..., and "arms": [...] or "rename": {old: new}} errata; fix or '
             'delete it')
    try:
        errata = json.loads(fix.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{fix} is not valid JSON ({e}): it should be {shape}") from None
    ok = isinstance(errata, list) and all(
        isinstance(e, dict) and isinstance(e.get("reason"), str) and isinstance(e.get("git"), str)
        and len(e.keys() & {"arms", "rename"}) == 1
        and (isinstance(e.get("arms"), list) and all(isinstance(a, str) for a in e["arms"])
             or isinstance(e.get("rename"), dict) and all(isinstance(a, str) and isinstance(b, str)
                                                          for a, b in e["rename"].items()))
        for e in errata)
    if not ok:
        raise ValueError(f"{fix} is not {shape}")
    return errata


def _drop_arms(run: dict, wrong: set[str]) -> None:
    for m in run["models"].values():
        m["arms"] = {a: v for a, v in m["arms"].items() if a not in wrong}
    run["arms"] = [a for a in run["arms"] if a not in wrong]
    run["targets"] = [t for t in run["targets"] if t["arm"] not in wrong]


def _rename_arms(run: dict, renames: dict[str, str], fix: Path) -> None:
    for new in renames.values():
        if canonical_spec(new) != new:  # runs name arms canonically; another spelling would never meet a new run's
            raise ValueError(f"{fix}: rename target {new!r} is not canonical; write {canonical_spec(new)!r}")
    arms = [renames.get(a, a) for a in run["arms"]]
    if len(set(arms)) != len(arms):
        raise ValueError(f"{fix}: renaming {renames} makes two arms of the run one; fix the erratum")
    run["arms"] = arms
    for m in run["models"].values():
        m["arms"] = {renames.get(a, a): v for a, v in m["arms"].items()}
    # the rows of renamed arms go (their targets were judged for the old names); the new names are judged again
    new_names = set(renames.values())
    kept = [t for t in run["targets"] if t["arm"] not in renames.keys() | new_names]
    judged = [t for t in evaluate_targets(run["models"], run.get("busy"))
              if t["arm"] in new_names and t["ratio"] is not None]
    run["targets"] = kept + judged


def run_kind(run: dict, threads: bool = True) -> str:
    """What kind of measurement a run is: device (when not the CPU), path (eager / fused / compiled), threads, size
    (when not the default) and clock (when not wall). Ratios of different kinds are different claims (a ratio
    compiled is not one eager, nor one on the CPU clock one on the wall clock)."""
    device = run.get("device", "cpu")
    kind = ("" if device == "cpu" else f"{device}, ") + (run.get("path") or "eager")
    if threads:
        kind += f", {run.get('threads', '?')} thr"
    if run.get("size", "default") != "default":
        kind += f", size {run['size']}"
    if run.get("clock", "wall") != "wall":
        kind += f", {run['clock']} clock"
    return kind


def timed_steps(run: dict) -> int:
    """Steps timed per arm: how precise a run's time ratios are (``repeats * steps_per_round``)."""
    return (run.get("repeats") or 1) * (run.get("steps_per_round") or 1)


def target_status(run: dict, t: dict) -> str | None:
    """A target row's status as the current rule reads it: a time ratio from a busy run, or one recorded without
    its paired IQR (runs older than the refusal rule), counts as refused, whatever the run wrote."""
    if t.get("metric") == "time" and t.get("status") in ("pass", "miss") and (
            run.get("busy") or t.get("paired_iqr") is None):
        return "refused"
    return t.get("status")


def combined_table(results: list[dict], commit_order: Callable[[dict], int] | None = None) -> str:
    """One markdown table over several runs (eager, fused, compiled, 1/2 threads, sizes): a row per scheme, a
    column per (family, kind of run) with the time ratio and the memory ratio to ``residual``. For the
    README's overhead table.

    A kind of run is its device, path (eager, fused, compiled), size and clock (:func:`run_kind` without threads);
    runs of one kind share their columns, so a later run that measured other schemes (``--connections``) fills
    their rows. A cell's time comes from the run of the column's kind that timed the most steps per arm
    (:func:`timed_steps`; the first in the order given on a tie), whatever ratio it found: ``refused`` if that run
    refused it (a busy machine, or a paired IQR wider than the scheme's target margin; the latter with the paired
    [q1, q3] that was too wide, so a reader can tell a cost most rounds show from noise). The header names the
    threads of the column's first run; a time measured at other threads says so in its cell (``1.501× (1 thr)``).
    The memory comes from the run of the kind that measured it at the latest commit (``commit_order``: a run's
    rank in git history, later higher; the first in the order given on a tie or without it), the scoreboard's
    rule (:func:`reslab.bench.scoreboard.judged_targets`): peak step memory does not depend on threads and varies
    little between runs (the RSS peak: ~2.5 % seen), so the later run, which measures the code as it is now, wins
    (time runs often skip it, ``--no-memory``). ``—`` where no run measured it. Every ratio is to the ``residual``
    of the run that measured it (every run has its own)."""
    def label(r: dict) -> str:
        return run_kind(r, threads=False)

    # one rank per run (commit_order may ask git), not one per cell; keyed by identity, since runs are dicts
    rank = {id(r): (commit_order(r) if commit_order else 0) for r in results}
    cols: list[tuple[str, str, dict]] = []  # (family, kind of run, the kind's first run)
    for r in results:
        for m in r["models"]:
            if not any((m, label(r)) == (c[0], c[1]) for c in cols):
                cols.append((m, label(r), r))
    arms: list[str] = []
    for r in results:
        for a in r["arms"]:
            if a not in arms:
                arms.append(a)

    def time_refused(r: dict, m: str, a: str) -> bool:
        return bool(r.get("busy")) or any(t["arm"] == a and t["model"] == m and target_status(r, t) == "refused"
                                          for t in r["targets"])

    def cell(m: str, kind: str, first: dict, a: str) -> str:
        runs = [r for r in results if label(r) == kind and a in r["models"].get(m, {}).get("arms", {})]
        if not runs:
            t = "—"
        else:
            best = max(runs, key=timed_steps)  # max keeps the first of equals
            arm = best["models"][m]["arms"][a]
            if time_refused(best, m, a):
                t = "refused"
                if not best.get("busy") and arm.get("time_ratio_paired_q1") is not None:
                    # the spread that refused it: q1 above the limit means at least three rounds in four were
                    # above it, an IQR across the limit is noise -- the reader sees which; the verdict stays withheld
                    t += f" [{arm['time_ratio_paired_q1']:.3f}, {arm['time_ratio_paired_q3']:.3f}]"
            else:
                t = f"{arm['time_ratio']:.3f}×"
                if best.get("threads") != first.get("threads"):
                    t += f" ({best.get('threads', '?')} thr)"
        measured = [r for r in runs if r["models"][m]["arms"][a].get("memory_ratio") is not None]
        mem = (max(measured, key=lambda r: rank[id(r)])["models"][m]["arms"][a]["memory_ratio"]
               if measured else None)  # max keeps the first of equals
        return f"{t} / {'—' if mem is None else f'{mem:.3f}×'}"

    head = ("| connection | " + " | ".join(f"{m} ({kind}, {r.get('threads', '?')} thr)" for m, kind, r in cols)
            + " |")
    lines = [head, "|---|" + "---|" * len(cols)]
    for a in arms:
        lines.append(f"| `{a}` | " + " | ".join(cell(m, kind, r, a) for m, kind, r in cols) + " |")
    return ("Each cell: step time × / peak step memory × against `residual` in the same run.\n\n"
            + "\n".join(lines) + "\n")
