"""`reslab compare`: train every arm (connection) x seed on the same task, model and budget, then
print a table, write results.json/results.md and a loss-curve plot.

Fairness: every arm gets the same config except the connection -- same data order (the batch
generator is seeded by the seed alone), same evaluation batches, same steps and schedule.
Runs already completed in the output folder (same config) are reused, so an interrupted comparison
resumes where it stopped; unfinished runs resume from their checkpoint.

A comparison too long for one sitting can be split into parts by seed (:func:`seed_part`): each part trains
the tuning runs and its own slice of the seeds, reuses what the other parts finished, and raises
:class:`PartIncomplete` while any seed is still missing; the part that finds every run finished reports in full.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
from pathlib import Path

from .checkpoint import atomic_write_json
from .connections import connection, list_connections
from .connections.registry import split_top
from .report import markdown_table, plot_curves, summarize_arms
from .runtime import tune_malloc
from .train import TrainConfig, TrainingDiverged, TrainingInterrupted, git_revision, machine, train


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
            command: str = "", log=print, tune: dict[str, list] | None = None, jobs: int = 1) -> dict:
    """Every arm is ``base`` with another connection; with ``tune`` each arm first gets its own best value of
    every tuned key (:func:`tune_arms`)."""
    baseline = baseline or ("residual" if "residual" in arms else arms[0])
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not one of the arms {arms}")
    configs = {arm: dataclasses.replace(base, connection=arm) for arm in arms}
    title = f"{base.task} / {base.model}: {seeds} seed(s), {base.steps} steps"
    return run_arms(configs, seeds, out_dir, baseline, command=command, title=title, log=log, tune=tune, jobs=jobs)


def run_arms(configs: dict[str, TrainConfig], seeds: int, out_dir: str | Path, baseline: str, command: str = "",
             title: str = "", log=print, tune: dict[str, list] | None = None, jobs: int = 1) -> dict:
    """Train each labelled config for ``seeds`` seeds (seed, seed+1, ...) under ``out_dir/<label>/seed<s>``,
    then write results.json / results.md / curves.png. Arms may differ in anything (connection, depth...);
    experiments use this directly, ``compare`` for connection-only arms. ``tune`` ({key: [values]}): every
    arm, baseline included, is first tuned alike on the same grid (:func:`tune_arms`), then runs its seeds at
    its own best values. ``jobs`` > 1 trains that many runs at once in separate processes (give each run one
    thread, ``threads=1``, so the jobs share the cores instead of fighting over them)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tuning = {}
    if tune:
        configs, tuning = tune_arms(configs, tune, out, log=log)
    labels = [baseline] + [a for a in configs if a != baseline]  # the table reads against its first row
    results: dict[str, list[dict]] = {}
    missing: list[str] = []  # runs of seeds that belong to other parts and are not finished yet
    if jobs > 1:
        results = _run_parallel(labels, configs, seeds, out, jobs, log, baseline, title, command, missing)
    for arm in (labels if jobs == 1 else []):
        base = configs[arm]
        results[arm] = []
        for seed in range(seeds):
            cfg = dataclasses.replace(base, seed=base.seed + seed,
                                      out_dir=str(out / slug(arm) / f"seed{base.seed + seed}"))
            try:
                summary = part_run(arm, cfg, seed, seeds, missing, log)
            except KeyboardInterrupt as e:
                if not in_part(seed, seeds):  # reading another part's run: nothing of this arm was training
                    raise
                raise _interrupted(e, out, results, arm, cfg) from None
            if summary is None:  # another part's seed, not finished yet
                continue
            results[arm].append(summary)
            if summary.get("status") == "completed":
                log(f"[{arm} seed {cfg.seed}] val loss {summary['final_val_loss']:.4f}  "
                    f"{summary['metric']} {summary['final_val_metric']:.4f}")
        if arm != labels[-1]:  # a long comparison shows (and keeps) what it has so far
            write_partial(out, results, baseline, len(labels), title, command)
    if missing:  # this part's seeds are done; the report waits for the other parts
        write_partial(out, results, baseline, len(labels), title, command)
        raise PartIncomplete(missing)
    rows = summarize_arms(results, baseline)
    for r in rows:
        if r["arm"] in tuning:
            r["tuned"] = tuning[r["arm"]]["chosen"]
    table = markdown_table(rows, baseline)
    plot_curves(results, out / "curves.png", title=title)
    first = configs[baseline]
    report = {
        "command": command, "git": git_revision(), "machine": machine(), "task": first.task, "model": first.model,
        "seeds": seeds, "baseline": baseline, "arms": labels, "rows": rows,
        "runs": {a: [{k: v for k, v in r.items() if k != "config"} for r in rs] for a, rs in results.items()},
        "configs": {a: dataclasses.asdict(c) for a, c in configs.items()},
        "tuning": tuning,
    }
    atomic_write_json(out / "results.json", report)
    tune_md = tuning_markdown(tuning) if tuning else ""
    cmd_md = f"`{command}`\n\n" if command else ""  # experiments state their command in summary.json instead
    (out / "results.md").write_text(f"# {title}\n\n{cmd_md}{table}\n{tune_md}![curves](curves.png)\n")
    log("\n" + table)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}")
    return report


def _run_cfg(cfg: TrainConfig, tag: str) -> dict:
    """One run in a worker process of :func:`_run_parallel` (top level, so it pickles)."""
    return train_or_reuse(cfg, print, tag=tag)


def _run_parallel(labels: list[str], configs: dict[str, TrainConfig], seeds: int, out: Path, jobs: int, log,
                  baseline: str, title: str, command: str, missing: list[str]) -> dict[str, list[dict]]:
    """Every (arm, seed) run in a pool of ``jobs`` processes; an arm's results are kept (results.md, curves.png)
    as soon as all its seeds are done, and Ctrl-C stops the pool with the same one-line message as one process.
    Under :func:`seed_part`, another part's seeds are only reused (the unfinished ones are added to ``missing``)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    slots: dict[str, list] = {arm: [None] * seeds for arm in labels}  # per arm, in seed order
    missing_of = dict.fromkeys(labels, 0)  # per arm: seeds of other parts not finished yet
    runs = []
    for arm in labels:
        for s in range(seeds):
            cfg = dataclasses.replace(configs[arm], seed=configs[arm].seed + s,
                                      out_dir=str(out / slug(arm) / f"seed{configs[arm].seed + s}"))
            if in_part(s, seeds):
                runs.append((arm, s, cfg))
                note_run(cfg.out_dir)  # trained by a worker process: noted here, where the result is read
            elif (done := other_part_run(arm, cfg, missing, log)) is not None:
                slots[arm][s] = done
            else:
                missing_of[arm] += 1

    def finished(a: str) -> list[dict]:
        return [r for r in slots[a] if r is not None]

    done_arms: set[str] = set()
    if not runs:
        return {a: finished(a) for a in labels}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=tune_malloc)  # fresh interpreters: each sets malloc as the CLI does
    futures = {pool.submit(_run_cfg, cfg, f"[{arm} seed {cfg.seed}]"): (arm, s, cfg) for arm, s, cfg in runs}
    arm, _, cfg = runs[0]
    try:
        for fut in futures:  # in submission order, so each arm's seeds come back in order
            arm, s, cfg = futures[fut]
            summary = fut.result()
            slots[arm][s] = summary
            if summary.get("status") == "completed":
                log(f"[{arm} seed {cfg.seed}] val loss {summary['final_val_loss']:.4f}  "
                    f"{summary['metric']} {summary['final_val_metric']:.4f}")
            if len(finished(arm)) + missing_of[arm] == seeds:
                done_arms.add(arm)
                if len(done_arms) < len(labels):
                    write_partial(out, {a: finished(a) for a in labels if a in done_arms}, baseline, len(labels),
                                  title, command)
    except KeyboardInterrupt as e:
        pool.shutdown(wait=True, cancel_futures=True)  # the workers got the Ctrl-C too: they checkpoint and stop
        raise _interrupted(e, out, {a: finished(a) for a in labels if a in done_arms}, arm, cfg) from None
    pool.shutdown()
    return {a: finished(a) for a in labels}


TUNE_SEED_OFFSET = 1000  # tuning runs use seed base.seed + 1000: never one of the seeds that are reported


def parse_value(text: str):
    """``"3e-3"`` -> 0.003, ``"4"`` -> 4, ``"true"`` -> True, anything else stays a string."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def parse_tune(items: list[str] | str | None) -> dict[str, list]:
    """``["lr=1e-3,3e-3,1e-2", "weight_decay=0,0.1"]`` -> {"lr": [...], "weight_decay": [...]}. A key is a
    TrainConfig field or ``model_args.NAME`` / ``task_args.NAME``; each needs at least two distinct values."""
    if isinstance(items, str):
        items = [items]
    grid: dict[str, list] = {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ValueError(f"--tune {item!r}: expected KEY=v1,v2,... (e.g. lr=1e-3,3e-3,1e-2)")
        group, dot, name = key.partition(".")
        if (dot and group not in ("model_args", "task_args")) or (not dot and key not in fields):
            raise ValueError(f"--tune key {key!r} is not a TrainConfig field nor model_args.NAME / task_args.NAME; "
                             f"fields: {', '.join(sorted(fields))}")
        if key in ("seed", "out_dir", "connection"):
            raise ValueError(f"--tune {key}: tune a hyper-parameter, not {key}")
        vals = [parse_value(v) for v in values.split(",") if v.strip()]
        if len(set(map(str, vals))) < 2:
            raise ValueError(f"--tune {key}: give at least two distinct values, got {vals}")
        if key in grid:
            raise ValueError(f"--tune {key} given twice")
        grid[key] = vals
    return grid


def with_values(cfg: TrainConfig, values: dict) -> TrainConfig:
    """``cfg`` with tuned values set (``model_args.NAME`` / ``task_args.NAME`` merge into their dict)."""
    changes: dict = {}
    for key, v in values.items():
        group, dot, name = key.partition(".")
        if dot:
            changes[group] = dict(changes.get(group, getattr(cfg, group))) | {name: v}
        else:
            changes[key] = v
    return dataclasses.replace(cfg, **changes)


EXTEND = "extend"  # reserved key of a tune grid: how many points an arm may add beyond an edge of it


def grid_edge_value(values: list, upward: bool):
    """The next point beyond the grid's top (or bottom) edge, one more step of the ratio between its last two points
    there (their difference when a point is <= 0), rounded to the fewest significant digits that still move it at
    least half that step (1e-3, 3e-3, 1e-2 -> 3e-2, not 3.33e-2). None when a step down would leave the grid's sign
    (a weight decay of 0 has nothing below it; an lr or a rank cannot reach 0)."""
    import math

    lo, hi = (values[-2], values[-1]) if upward else (values[1], values[0])
    if not upward and hi <= 0:
        return None
    if lo <= 0 or hi <= 0:  # upward through 0: one more step of the difference
        return hi + (hi - lo)
    nxt = hi * (hi / lo)
    if isinstance(lo, int) and isinstance(hi, int):  # an integer grid (a width, a rank) stays integer
        nxt = round(nxt) if round(nxt) != hi else hi + (1 if upward else -1)
        return nxt if nxt > 0 else None
    for digits in (1, 2, 6):
        cand = float(f"{nxt:.{digits - 1}e}")
        if (cand > hi if upward else cand < hi) and abs(math.log(cand / hi)) >= 0.5 * abs(math.log(nxt / hi)):
            return cand
    return nxt


def tune_arms(configs: dict[str, TrainConfig], grid: dict[str, list], out_dir: str | Path,
              seed: int | None = None, log=print) -> tuple[dict[str, TrainConfig], dict]:
    """Tune every arm alike: each arm trains once per point of the same grid (the product of ``grid``'s values) on
    one tuning seed (default: the arm's seed + TUNE_SEED_OFFSET, never a reported seed) and keeps the point with
    the lowest final validation loss (a diverged run counts as +inf). Returns the arms' configs at their own best
    point, and per arm the grid, the validation loss of every point, the chosen point and whether it lies at an
    edge of the grid (then the best value may lie beyond it).

    ``grid["extend"] = N`` (one key with increasing numeric values only): an arm whose best point is at an edge
    trains the next point beyond it (the grid's own ratio, e.g. 1e-3, 3e-3, 1e-2 -> 3e-2), up to N points, and
    stops as soon as its best point is inside; every arm follows the same rule."""
    import itertools
    import math

    grid = dict(grid)
    extend = int(grid.pop(EXTEND, 0) or 0)
    keys = list(grid)
    if extend:
        vals = grid[keys[0]] if len(keys) == 1 else []
        if (len(keys) != 1 or len(vals) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in vals) or list(vals) != sorted(set(vals))):
            raise ValueError(f"tune: extend={extend} needs one key with >= 2 increasing numbers (e.g. "
                             f"{{'lr': [1e-3, 3e-3, 1e-2], 'extend': 2}}); got {grid}")
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    tuned, report = {}, {}
    for arm, cfg in configs.items():
        tseed = cfg.seed + TUNE_SEED_OFFSET if seed is None else seed

        def score(point: dict) -> float:
            name = ",".join(f"{k}={v}" for k, v in point.items())
            run = dataclasses.replace(with_values(cfg, point), seed=tseed,
                                      out_dir=str(Path(out_dir) / "tune" / slug(arm) / slug(name)))
            s = train_or_reuse(run, log, tag=f"[tune {arm} {name}]")
            loss = s.get("final_val_loss") if s.get("status") == "completed" else None
            return loss if loss is not None and math.isfinite(loss) else math.inf

        mine = list(points)
        scores = [score(p) for p in mine]
        added = []
        while len(added) < extend:
            best = min(range(len(mine)), key=lambda i: scores[i])
            if 0 < best < len(mine) - 1:
                break
            values = [p[keys[0]] for p in mine]
            # all diverged (best = 0 by convention) or the bottom is best: go below; the top is best: go above
            up = best == len(mine) - 1 and math.isfinite(scores[best])
            beyond = grid_edge_value(values, upward=up)
            if beyond is None:  # nothing valid beyond this edge: stop, the report flags it
                break
            new = {keys[0]: beyond}
            if up:
                mine.append(new), scores.append(score(new))
            else:
                mine.insert(0, new), scores.insert(0, score(new))
            added.append(new[keys[0]])
        best = min(range(len(mine)), key=lambda i: scores[i])
        diverged = all(math.isinf(v) for v in scores)
        # at an edge: for some key with >= 2 values, the chosen value is that key's smallest or largest tried
        edge = not diverged and any(
            len({p[k] for p in mine}) > 1 and mine[best][k] in (min(p[k] for p in mine), max(p[k] for p in mine))
            for k in keys)
        tuned[arm] = with_values(cfg, mine[best])
        report[arm] = {"grid": grid | ({EXTEND: extend} if extend else {}), "seed": tseed, "metric": "final_val_loss",
                       "points": [{"values": p, "val_loss": None if math.isinf(v) else v} for p, v in zip(mine, scores)],
                       "chosen": mine[best], "at_edge": edge, "all_diverged": diverged, "extended": added}
        log(f"[tune {arm}] chose {mine[best]} (val loss "
            + ", ".join("inf" if math.isinf(v) else f"{v:.4f}" for v in scores) + ")"
            + (f"; grid extended by {added}" if added else "") + ("; AT THE EDGE of the grid" if edge else "")
            + ("; EVERY POINT DIVERGED" if diverged else ""))
    return tuned, report


def tuning_markdown(tuning: dict) -> str:
    """One line per arm: the validation loss at every grid point on the tuning seed, and the chosen point."""
    lines = ["Tuning (every arm on the same grid, tuning seed, lowest final validation loss chosen):", ""]
    for arm, t in tuning.items():
        pts = "; ".join(",".join(f"{k}={v}" for k, v in p["values"].items()) + " → "
                        + ("diverged" if p["val_loss"] is None else f"{p['val_loss']:.4f}") for p in t["points"])
        lines.append(f"- `{arm}` (seed {t['seed']}): {pts}; chosen **"
                     + ",".join(f"{k}={v}" for k, v in t["chosen"].items()) + "**"
                     + (f" (grid extended by {', '.join(map(str, t['extended']))})" if t.get("extended") else "")
                     + (" — at the edge of the grid: the best value may lie beyond it" if t.get("at_edge") else "")
                     + (" — every point diverged: no value of the grid trains this arm" if t.get("all_diverged")
                        else ""))
    return "\n".join(lines) + "\n\n"


#: what a run's result depends on besides its config: the code that builds, feeds and trains the model
CODE_PARTS = ("connections", "models", "patch", "data", "train.py", "checkpoint.py", "diffusion.py")
RUN_RECORD = "reslab_run.json"  # written beside a run's summary.json: code revision and training wall time


@functools.lru_cache(maxsize=None)
def code_revision(parts=CODE_PARTS) -> str:
    """A content hash (12 hex digits) of the source files a training run depends on: reused runs must match it,
    so a run trained by older code is never mixed with new ones (committed or not). Computed once per process:
    a running process trains with the code it imported, whatever is edited on disk meanwhile."""
    import hashlib

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for part in parts:
        path = root / part
        for f in sorted(path.rglob("*.py")) if path.is_dir() else ([path] if path.exists() else []):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


_USED: list[set[str]] = []  # open used_runs() collections: the run folders the current result reads


@contextlib.contextmanager
def used_runs():
    """Collect the folder of every run trained or reused within the block (:func:`note_run`), so a summary lists
    the runs its result was computed from -- not stale runs an older preset left in the same raw folder."""
    used: set[str] = set()
    _USED.append(used)
    try:
        yield used
    finally:
        _USED.remove(used)


def note_run(out_dir: str | Path) -> None:
    """Record that the current result reads the run in ``out_dir`` (see :func:`used_runs`)."""
    for used in _USED:
        used.add(str(Path(out_dir).resolve()))


def run_records(root: str | Path, only: set[str] | None = None) -> list[dict]:
    """The run records (path, code revision, git revision, training wall time, status) of every run under ``root``;
    with ``only`` (folders, e.g. from :func:`used_runs`) of exactly those runs, wherever they are (a shared run
    outside ``root``, such as the Fréchet feature classifier in the user's cache, is listed by its own path)."""
    root = Path(root).resolve()
    folders = (sorted(Path(f) for f in only) if only is not None
               else sorted(rec.parent for rec in root.rglob(RUN_RECORD)))
    out = []
    for folder in folders:
        rec = folder / RUN_RECORD
        if not rec.exists():  # a run another part has not finished, or one that never started
            continue
        try:
            r = json.loads(rec.read_text())
        except json.JSONDecodeError:
            continue
        folder = folder.resolve()
        where = (str(folder.relative_to(root)) if folder.is_relative_to(root)
                 else str(folder).replace(str(Path.home()), "~", 1))
        out.append({"run": where} | r)
    return out


def write_partial(out: Path, results: dict[str, list[dict]], baseline: str, n_arms: int, title: str,
                  command: str) -> None:
    """results.md and curves.png of the arms finished so far (the full report replaces them at the end)."""
    done = {a: rs for a, rs in results.items() if rs}
    table = markdown_table(summarize_arms(done, baseline), baseline)
    plot_curves(done, out / "curves.png", title=f"{title} — partial: {len(done)} of {n_arms} arms")
    (out / "results.md").write_text(f"# {title}\n\n**Partial: {len(done)} of {n_arms} arms finished**; run `{command}` "
                                    f"again to continue.\n\n{table}\n![curves](curves.png)\n")


def _interrupted(e: KeyboardInterrupt, out: Path, results: dict[str, list[dict]], arm: str,
                 cfg: TrainConfig) -> TrainingInterrupted:
    """One line for Ctrl-C during a comparison: what is kept and how to go on."""
    finished = [a for a, rs in results.items() if rs and a != arm]
    kept = (f"{out / 'results.md'} and curves.png hold the {len(finished)} finished arm(s)" if finished
            else "no arm had finished")
    here = (f"{arm} seed {cfg.seed} stopped at step {e.step} with a checkpoint" if isinstance(e, TrainingInterrupted)
            else f"{arm} seed {cfg.seed} resumes from its last checkpoint, if any")
    return TrainingInterrupted(f"interrupted: {kept}; {here}; run the same command again to continue "
                               f"(finished runs are reused)", str(out), getattr(e, "step", 0))


@dataclasses.dataclass(frozen=True)
class SeedPart:
    """Part ``index`` (1-based) of ``count``: a contiguous slice of the seeds, the parts together cover each once."""
    index: int
    count: int

    def __post_init__(self):
        if not (isinstance(self.count, int) and self.count >= 1 and isinstance(self.index, int)
                and 1 <= self.index <= self.count):
            raise ValueError(f"part {self.index} of {self.count} does not exist: parts are numbered 1 to "
                             f"{self.count}")

    def slice(self, seeds: int) -> slice:
        return slice((self.index - 1) * seeds // self.count, self.index * seeds // self.count)


class PartIncomplete(Exception):
    """A part trained its seeds, but runs of other parts are not finished yet (``missing``: "arm seed N")."""

    def __init__(self, missing: list[str]):
        self.missing = list(missing)
        super().__init__(f"{len(self.missing)} run(s) of other parts not finished yet: "
                         + ", ".join(self.missing[:4]) + (" ..." if len(self.missing) > 4 else ""))


class PendingParts:
    """Collects :class:`PartIncomplete` over independent steps of one experiment (cells, depths, optimisers), so a
    part trains its slice of every step before it stops: ``with pending.step("cell: "): ...`` per step, then
    ``pending.raise_if_any()``. (Raising at the first step would leave the later steps untrained in every part.)"""

    def __init__(self):
        self.missing: list[str] = []

    @contextlib.contextmanager
    def step(self, prefix: str = ""):
        try:
            yield
        except PartIncomplete as e:
            self.missing += [prefix + m for m in e.missing]

    def raise_if_any(self) -> None:
        if self.missing:
            raise PartIncomplete(self.missing)


_PART: SeedPart | None = None  # set by seed_part(): which seeds this process trains


@contextlib.contextmanager
def seed_part(part: SeedPart | None):
    """Within the block, :func:`run_arms` trains only ``part``'s slice of every arm's seeds (tuning runs are
    always trained or reused: every part needs the chosen values) and reuses the other slices' finished runs;
    when some are missing it raises :class:`PartIncomplete` after training its own. ``None``: every seed."""
    global _PART
    before, _PART = _PART, part
    try:
        yield part
    finally:
        _PART = before


def active_part() -> SeedPart | None:
    """The part this process trains (:func:`seed_part`), or None for every seed."""
    return _PART


def in_part(seed_index: int, seeds: int) -> bool:
    """Does this process train seed ``seed_index`` of ``seeds`` (every seed outside :func:`seed_part`)?"""
    return _PART is None or seed_index in range(seeds)[_PART.slice(seeds)]


def other_part_run(arm: str, cfg: TrainConfig, missing: list[str], log) -> dict | None:
    """Another part's seed: its finished run, or None after adding it to ``missing`` (never trained here)."""
    summary = finished_run(cfg)
    note_run(cfg.out_dir)
    if summary is None:
        missing.append(f"{arm} seed {cfg.seed}")
    else:
        log(f"[{arm} seed {cfg.seed}] reusing the run another part finished")
    return summary


def part_run(label: str, cfg: TrainConfig, seed_index: int, seeds: int, missing: list[str], log,
             tag: str | None = None) -> dict | None:
    """Seed ``seed_index`` of ``seeds`` of one arm: trained (or reused, :func:`train_or_reuse`) when this process's
    part holds it, else another part's finished run, or None after noting it in ``missing``. ``tag`` prefixes the
    training log (default ``[label seed N]``)."""
    if not in_part(seed_index, seeds):
        return other_part_run(label, cfg, missing, log)
    return train_or_reuse(cfg, log, tag=f"[{label} seed {cfg.seed}]" if tag is None else tag)


def finished_run(cfg: TrainConfig) -> dict | None:
    """The summary of the finished (completed or diverged) run in ``cfg.out_dir`` when its config and the code
    revision it was trained by (:func:`code_revision`) both match ``cfg`` and this code; else None."""
    path, record = Path(cfg.out_dir) / "summary.json", Path(cfg.out_dir) / RUN_RECORD
    if not path.exists():
        return None
    try:
        s = json.loads(path.read_text())
        r = json.loads(record.read_text()) if record.exists() else {}
    except json.JSONDecodeError:
        return None
    # ``resume`` says how a run starts, not what it trains: a run retrained over a stale one (resume=false) is
    # the same run as the one asked for with the default resume=true, and is reused as such
    def what(config: dict) -> dict:
        return {k: v for k, v in config.items() if k != "resume"}

    same_config = what(s.get("config") or {}) == what(json.loads(json.dumps(cfg.to_dict())))
    if same_config and r.get("code_revision") == code_revision() and s.get("status") in ("completed", "diverged"):
        return s
    return None


def train_or_reuse(cfg: TrainConfig, log=print, tag: str = "") -> dict:
    """Train one run, or reuse the finished (completed or diverged) run in its folder when both its config and
    the code revision it was trained by (:func:`code_revision`) match; a diverged run returns its summary with
    status "diverged". A folder holding a finished run of *other* settings or code starts afresh instead of
    resuming that run's checkpoint; an unfinished run (a checkpoint, no summary) resumes."""
    note_run(cfg.out_dir)
    with run_lock(cfg.out_dir, log, tag):
        return _train_or_reuse(cfg, log, tag)


LOCK_FILE = ".reslab.lock"


@contextlib.contextmanager
def run_lock(out_dir: str | Path, log=print, tag: str = ""):
    """Hold an exclusive lock on one run folder while it is trained or read for reuse. Two processes that need the
    same run -- the parts of a split preset started side by side both train the shared tuning runs -- then never
    train it twice into one folder: the second waits, then finds the first one's finished run and reuses it.
    (An OS file lock: released when its process ends, however it ends, so a killed run never leaves it held.)"""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): one process per output folder, as before
        yield
        return
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{tag} waiting: another process is training {folder}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _train_or_reuse(cfg: TrainConfig, log, tag: str) -> dict:
    import time

    path = Path(cfg.out_dir) / "summary.json"
    record = Path(cfg.out_dir) / RUN_RECORD
    rev = code_revision()
    if (s := finished_run(cfg)) is not None:
        log(f"{tag} reusing finished run in {cfg.out_dir} ({s['status']}, code {rev})")
        return s
    if path.exists():  # a finished run of other settings or code: start afresh, never resume its checkpoint
        cfg = dataclasses.replace(cfg, resume=False)
    log(f"{tag} training {cfg.steps} steps ...")
    t0 = time.time()
    try:
        s = train(cfg)
    except TrainingDiverged as e:
        log(f"{tag} diverged: {e}")
        s = json.loads(path.read_text())
    atomic_write_json(record, {"code_revision": rev, "git": git_revision(), "status": s.get("status"),
                               "wall_time_s": round(time.time() - t0, 1)})
    return s
