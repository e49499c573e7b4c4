"""``reslab bench profile``: where a connection's extra step time goes, against ``residual``.

``reslab bench overhead`` says *how much* slower a scheme's training step is; this says *where*. Each arm (the same
model, data and weights as the overhead bench builds) trains a few warm-up steps, then ``--steps`` steps under
``torch.profiler``; every event's *self* CPU time (time in the op itself, not in ops it calls, so the events partition
the step) is summed per step and grouped:

- ``matmul/conv``: the dense products (GEMMs, convolutions: oneDNN/BLAS), the work a residual net is made of;
- ``compiled kernels``: inductor's generated C++ loops (with ``--compile``; each one is an event because the bench sets
  ``torch._inductor.config.cpp.enable_kernel_profile``), i.e. the fused elementwise and reduction work;
- ``eager elementwise/reductions``: the other ATen ops (adds, muls, sums, norms, activations) run one by one;
- ``optimizer``: AdamW's update;
- ``other``: everything else (autograd bookkeeping, Python-side calls, graph launch).

The table then lists the events whose time grew most against ``residual``. The profiler adds a few microseconds per
event, so an eager step with many small ops reads slower than it runs: compare arms within one output, as the overhead
bench does, and read the *differences*, not the absolute times.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from .machine import MAX_LOAD, bench_command, machine_info, refuse_if_busy, set_threads, write_outputs
from .overhead import MODELS, SIZES, _compiled, build, compile_choice, path_label, train_step, unique_arms

MS = 1e3  # the profiler reports microseconds
CATEGORIES = ("matmul/conv", "compiled kernels", "eager elementwise/reductions", "optimizer", "other")
_DENSE_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear")  # exact ATen names of the dense products
_DENSE_PREFIXES = ("conv", "_convolution", "mkldnn", "_scaled_dot_product", "scaled_dot_product")


def category(name: str) -> str:
    """The group of one profiler event (its key in ``key_averages``)."""
    low = name.lower()
    if "cpp_fused" in low or "kernel_cpp" in low:
        return "compiled kernels"
    if low.endswith(OPTIMIZER_TAG) or low.startswith("optimizer.") or low.startswith("aten::_foreach"):
        return "optimizer"
    if low.startswith(("aten::", "mkldnn::")):
        op = low.split("::", 1)[1]
        if low.startswith("mkldnn::") or op in _DENSE_OPS or op.startswith(_DENSE_PREFIXES):
            return "matmul/conv"
        return "eager elementwise/reductions"
    return "other"


OPTIMIZER_TAG = " [optimizer]"  # an op run inside the optimizer's step (its own ATen ops, e.g. AdamW's sqrt)


def profile_step(net, opt, x, y, steps: int) -> dict[str, float]:
    """Self CPU milliseconds per step of every profiler event name over ``steps`` training steps; an op called
    inside ``Optimizer.step`` is named with :data:`OPTIMIZER_TAG`, so the optimizer's ATen ops count as its own."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(net, opt, x, y)
    out: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.self_cpu_time_total <= 0:
            continue
        parent, in_opt = e.cpu_parent, False
        while parent is not None and not in_opt:
            in_opt, parent = parent.name.startswith("Optimizer.step"), parent.cpu_parent
        out[event_name(e.name) + (OPTIMIZER_TAG if in_opt else "")] += e.self_cpu_time_total / MS / steps
    return dict(out)


def event_name(name: str) -> str:
    """An event's name without what differs between two arms' compiled graphs for the same work: the graph's index
    (``graph_3_cpp_fused_...``), the kernel's index in it (``..._16``) and the compiled graph's hash."""
    import re

    if name.startswith("## Call CompiledFxGraph"):
        return "## Call CompiledFxGraph"
    return re.sub(r"_\d+$", "", re.sub(r"^graph_\d+_", "", name))


def profile_arms(model: str, size: str, arms: list[str], steps: int = 10, warmup: int = 3, rounds: int = 3,
                 compile: bool | str = False, seed: int = 0, log=print) -> dict[str, dict]:
    """Per arm: its events' self ms per step (mean over rounds), the per-category sums, the total (the profiled step
    time), and the category sums and total of every round. Every arm is built and warmed up first, then profiled
    for ``steps`` steps in each of ``rounds`` interleaved rounds, in a new shuffled order every round (as the overhead
    bench times them): a machine whose speed drifts over minutes then slows every arm alike, and no arm always runs
    first (the first arm of a fixed order read 5-15 % slower convolutions than the same convolutions in later arms)."""
    import random

    import torch._inductor.config as inductor_config
    from collections import defaultdict

    device = torch.device("cpu")
    ready = {}
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):  # each generated C++ kernel: one event
        for arm in arms:
            if log:
                log(f"[profile] {model} {arm}: build and {warmup} warm-up steps")
            net, opt, x, y, _ = build(model, size, arm, device, seed)
            step_net = _compiled(net, compile)
            for _ in range(warmup):  # compiles (if any), allocates optimizer state
                train_step(step_net, opt, x, y)
            ready[arm] = (step_net, opt, x, y)
        events = {arm: defaultdict(float) for arm in arms}
        per_round = {arm: [] for arm in arms}
        rng, order = random.Random(seed), list(arms)
        for r in range(rounds):
            rng.shuffle(order)
            if log:
                log(f"[profile] {model}: round {r + 1} of {rounds}, {steps} profiled steps per arm, order "
                    + ", ".join(order))
            for arm in order:
                got = profile_step(*ready[arm], steps)
                for name, ms in got.items():
                    events[arm][name] += ms / rounds
                per_round[arm].append(_categories(got))
    out = {}
    for arm in arms:
        cats = _categories(events[arm])
        out[arm] = {"events": dict(events[arm]), "categories": cats, "total_ms": sum(cats.values()),
                    "rounds": per_round[arm]}
    return out


def _categories(events: dict[str, float]) -> dict[str, float]:
    cats = dict.fromkeys(CATEGORIES, 0.0)
    for name, ms in events.items():
        cats[category(name)] += ms
    return cats


def differences(profiles: dict[str, dict], baseline: str = "residual", top: int = 8) -> dict[str, dict]:
    """Per arm against ``baseline``: extra ms per step overall and per category, and the ``top`` events whose time
    grew most (an event only the arm has counts in full). With per-round figures, also the smallest and largest
    *paired* difference over the rounds (arm minus baseline in the same round), total and per category: a difference
    whose range straddles zero is drift between turns, not work the arm adds."""
    base = profiles[baseline]
    out = {}
    for arm, prof in profiles.items():
        if arm == baseline:
            continue
        grew = {name: ms - base["events"].get(name, 0.0) for name, ms in prof["events"].items()}
        d = {"extra_ms": prof["total_ms"] - base["total_ms"],
             "ratio": prof["total_ms"] / base["total_ms"] if base["total_ms"] else float("nan"),
             "categories": {c: prof["categories"][c] - base["categories"][c] for c in CATEGORIES},
             "top": sorted(((n, d) for n, d in grew.items() if d > 0), key=lambda kv: -kv[1])[:top]}
        pairs = list(zip(prof.get("rounds", []), base.get("rounds", [])))
        if pairs:
            paired = {c: [a[c] - b[c] for a, b in pairs] for c in CATEGORIES}
            paired["total"] = [sum(a.values()) - sum(b.values()) for a, b in pairs]
            d["range"] = {c: [min(v), max(v)] for c, v in paired.items()}
            # the median over rounds: one stalled turn (a +600 ms round among +20 ms ones) moves a mean, not this
            d["median"] = {c: statistics.median(v) for c, v in paired.items()}
            d["median_ratio"] = statistics.median(sum(a.values()) / sum(b.values()) for a, b in pairs)
        out[arm] = d
    return out


def markdown(result: dict) -> str:
    lines = [f"# Where the step time goes ({result['path']}, size {result['size']})", ""]
    if result.get("command"):
        lines += [f"`{result['command']}`", ""]
    load = result["machine"].get("load_average")  # taken before the first arm is built
    lines += [f"{result.get('rounds', 1)} interleaved rounds of {result['steps']} profiled steps per arm after "
              f"{result['warmup']} warm-up steps, {result['threads']} "
              f"thread(s), load average before {'n/a' if load is None else f'{load:.2f}'}; self CPU ms per step (profiler events partition the step; profiling adds a few µs per "
              "event, so read differences between arms, not absolute times).", ""]
    for model, res in result["models"].items():
        profiles, diffs = res["profiles"], res["differences"]
        lines += [f"## {model}", "", "| arm | profiled ms/step | ratio | " + " | ".join(CATEGORIES) + " |",
                  "|---|---|---|" + "---|" * len(CATEGORIES)]
        for arm, prof in profiles.items():
            d = diffs.get(arm)
            cells = [f"{prof['categories'][c]:.2f}" + (f" ({_diff(d, c)})" if d else "") for c in CATEGORIES]
            ratio = (f"{d['median_ratio']:.3f}×{_span(d, 'total')}" if d and "median_ratio" in d
                     else f"{d['ratio']:.3f}×" if d else "1 (baseline)")
            lines.append(f"| `{arm}` | {prof['total_ms']:.2f} | {ratio} | " + " | ".join(cells) + " |")
        if any("range" in d for d in diffs.values()):
            lines += ["", "Per arm: the mean over rounds; in parentheses the *median* over rounds of the paired "
                      "difference against `residual` (same round), and in brackets its smallest and largest value "
                      "(ms per step; the ratio column: median of the per-round ratios of the whole step, and its "
                      "range in ms). A bracket that straddles 0 is drift between turns, not work the arm adds."]
        lines += ["", "Events whose time grew most against `residual` (ms per step):", ""]
        for arm, d in diffs.items():
            top = "; ".join(f"`{name[:70]}` +{ms:.2f}" for name, ms in d["top"]) or "—"
            lines.append(f"- `{arm}` (+{d['extra_ms']:.2f} ms): {top}")
        lines.append("")
    return "\n".join(lines)


def _diff(d: dict, key: str) -> str:
    """An arm's difference against the baseline in one category: the median paired one with its range when the
    profile has rounds, else the difference of the means."""
    if "median" in d:
        return f"{d['median'][key]:+.2f}{_span(d, key)}"
    return f"{d['categories'][key]:+.2f}"


def _span(d: dict, key: str) -> str:
    lo_hi = d.get("range", {}).get(key)
    return f" [{lo_hi[0]:+.1f}, {lo_hi[1]:+.1f}]" if lo_hi else ""


def run_profile(models: list[str], size: str, arms: list[str], steps: int = 10, warmup: int = 3, rounds: int = 3,
                compile: bool | str = False, out_dir: str | Path | None = None, command: str = "", log=print) -> dict:
    result = {"path": path_label(compile), "size": size, "steps": steps, "warmup": warmup, "rounds": rounds,
              "threads": torch.get_num_threads(), "command": command, "machine": machine_info(), "torch": torch.__version__, "models": {}}
    for model in models:
        profiles = profile_arms(model, size, arms, steps=steps, warmup=warmup, rounds=rounds, compile=compile, log=log)
        result["models"][model] = {"sizes": SIZES[size][model], "profiles": profiles,
                                   "differences": differences(profiles)}
    if out_dir is not None:
        write_outputs(out_dir, "profile", result, markdown(result), log=log or (lambda *_: None))
    return result


def _cmd(args) -> int:
    from ..connections.registry import split_top

    set_threads(args.threads)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        raise ValueError(f"--steps and --rounds must be >= 1 and --warmup >= 0, got {args.steps}, {args.rounds} and "
                         f"{args.warmup}")
    # under load, OpenMP threads wait on each other at every parallel region and small ops read many times slower:
    # the same gate as the overhead bench
    if refuse_if_busy(args.max_load, args.busy_ok, "the output records the load it was taken at"):
        return 3  # as the overhead bench
    models = list(MODELS) if args.model == "all" else [args.model]
    arms = unique_arms(split_top(args.connections) if args.connections else ["ancre", "denseformer"])
    result = run_profile(models, args.size, arms, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                         compile=compile_choice(args),
                         out_dir=args.out, command=bench_command())
    print(markdown(result))
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="where each connection's extra step time goes against residual "
                                              "(torch.profiler self times by kind of work)")
    p.add_argument("--model", choices=(*MODELS, "all"), default="resnet")
    p.add_argument("--size", choices=tuple(SIZES), default="default")
    p.add_argument("--connections", default=None, help="comma-separated specs (default: ancre, denseformer); "
                                                       "residual is always added")
    p.add_argument("--steps", type=int, default=10, help="profiled training steps per arm and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (every arm profiled in each)")
    p.add_argument("--warmup", type=int, default=3, help="steps before profiling (compilation, optimizer state)")
    p.add_argument("--compile", action="store_true", help="profile torch.compile(model) (inductor)")
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # aot_eager: fast, for tests
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-load", type=float, default=MAX_LOAD,
                   help=f"refuse to start above this load average (default {MAX_LOAD}; negative: never refuse)")
    p.add_argument("--busy-ok", action="store_true", help="profile on a busy machine anyway (recorded in the output)")
    p.add_argument("--out", default="results/bench-overhead/profile", help="folder for profile.json / profile.md")
    p.set_defaults(func=_cmd)
