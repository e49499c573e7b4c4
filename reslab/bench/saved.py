"""What autograd keeps for the backward pass, per connection: ``reslab bench saved``.

``reslab bench overhead`` says how much more peak memory a scheme's training step takes than ``residual``; this
profile says *where* it goes. One forward pass (model + loss) per arm runs under
``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor saved for the backward pass: in eager mode
the ops' own saves, under ``torch.compile`` the activations AOTAutograd's partitioner chose to keep instead of
recomputing. Each storage is counted once (views of one buffer share it), parameters are left out (every arm keeps
its own alike), and the activations are grouped by shape, so the difference to ``residual`` names the extra
tensors, e.g. "one more (32, 16, 32, 32) map per ResNet block".

Buffers that live only inside the backward pass (the gradients a stream sum sends to every one of its sources) are
not saved tensors; the second part covers them: one more training step under ``torch.profiler`` with
``profile_memory``, whose memory timeline labels every allocation (activation, gradient, autograd detail,
temporary, parameter, optimizer state, input), read at the step's peak.

    reslab bench saved --model resnet --connections ancre,denseformer              # eager, ResNet-20
    reslab bench saved --model resnet --connections ancre,denseformer --compile    # what inductor keeps
"""
from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch

from .machine import bench_command, machine_info, set_threads, write_outputs
from .overhead import MODELS, SIZES, _compiled, build, compile_choice, path_label, step_loss, train_step, unique_arms

MB = 2 ** 20


def _savers(root) -> dict[int, set[str]]:
    """Storage pointer -> the autograd nodes (``Node.saved_name``) that keep it, from a walk of the graph under
    ``root`` (grad_fn exposes what it saved as ``_saved_<name>``; a Python Function as ``saved_tensors``). In a
    compiled graph the one node is AOTAutograd's, so the names only say that it kept the tensor."""
    out: dict[int, set[str]] = {}
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        values = []
        for attr in dir(node):
            if attr.startswith("_saved_"):
                try:
                    values.append((attr[len("_saved_"):], getattr(node, attr)))
                except RuntimeError:  # already freed, or not a tensor that can be read back
                    continue
        try:
            values += [("saved", t) for t in getattr(node, "saved_tensors", ()) or ()]
        except RuntimeError:
            pass
        for attr, v in values:
            for t in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(t, torch.Tensor):
                    out.setdefault(t.untyped_storage().data_ptr(), set()).add(f"{name}.{attr}")
        stack += [f for f, _ in node.next_functions]
    return out


def saved_for_backward(net, x, y, parameters=()) -> dict:
    """One forward + loss of ``net`` (eager or its compiled wrapper) on ``(x, y)`` under saved-tensor hooks:
    ``{"total_bytes", "tensors", "by_shape": {"<shape> <- <savers>": {"count", "bytes"}}, "freed": n}`` over the
    distinct storages that the graph under the loss still keeps for the backward pass, leaving out those of
    ``parameters``; ``savers`` are the autograd nodes that keep the storage (e.g. ``MulBackward0.other``), and a
    saved view of a larger buffer is labelled ``(view)`` and counts the whole buffer. ``freed``: storages saved by
    graph parts dropped before the loss (not kept). The graph is freed afterwards (no backward)."""
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    seen: dict[int, tuple[str, torch.UntypedStorage]] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        # a view of a kept buffer costs nothing more; an empty storage costs nothing (and all share pointer 0)
        if storage.nbytes() and ptr not in skip and ptr not in seen:
            shape = "x".join(map(str, t.shape)) or "scalar"
            if t.numel() * t.element_size() != storage.nbytes():
                shape += " (view)"
            seen[ptr] = (shape, storage)  # held, so a freed save's address cannot be reused and merged
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step_loss(net, x, y)
    savers = _savers(loss.grad_fn)
    del loss
    by_shape: dict[str, dict[str, int]] = {}
    kept = {ptr: v for ptr, v in seen.items() if ptr in savers}
    for ptr, (shape, storage) in kept.items():
        key = shape + " <- " + ", ".join(sorted(savers[ptr]))
        slot = by_shape.setdefault(key, {"count": 0, "bytes": 0})
        slot["count"] += 1
        slot["bytes"] += storage.nbytes()
    return {"total_bytes": sum(s.nbytes() for _, s in kept.values()), "tensors": len(kept),
            "by_shape": dict(sorted(by_shape.items(), key=lambda kv: (-kv[1]["bytes"], kv[0]))),
            "freed": len(seen) - len(kept)}


def peak_by_category(step) -> dict:
    """Run ``step()`` once under ``torch.profiler`` (CPU, profile_memory) and read its memory timeline at the peak:
    ``{"peak_bytes", "step_peak_bytes", "by_category": {category: bytes}}``: the total at the peak, the peak above
    what was allocated before the step (parameters, optimizer state, inputs: the timeline's first row, its
    pre-existing allocations), which is what ``bench overhead``'s peak step memory measures, and the categories at
    the peak. Categories are the profiler's own labels."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX  # the timeline's column order (private)

    names = {i + 1: (c.name.lower() if c is not None else "unlabelled") for c, i in _CATEGORY_TO_INDEX.items()}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of CUDA snapshots; it is the CPU path there is
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    if not sizes:
        raise RuntimeError("the profiler recorded no CPU allocations for this step")
    at_peak = max(sizes, key=sum)
    return {"peak_bytes": sum(at_peak), "step_peak_bytes": sum(at_peak) - sum(sizes[0]),
            "by_category": {names.get(i, f"column {i}"): v for i, v in enumerate(at_peak) if i in names or v}}


def profile_arms(model: str, size: str, arms: list[str], compile: bool | str = False, fused: bool = False,
                 seed: int = 0) -> dict[str, dict]:
    """:func:`saved_for_backward` per arm, on the CPU, after one full training step (compiles, allocates state)."""
    from ..connections import fused as fused_path

    device = torch.device("cpu")
    out = {}
    for arm in arms:
        net, opt, x, y, _ = build(model, size, arm, device, seed)
        step_net = _compiled(net, compile)
        with fused_path(fused):
            train_step(step_net, opt, x, y)  # compile (if any) and warm up outside the hooks
            out[arm] = saved_for_backward(step_net, x, y, parameters=list(net.parameters()))
            out[arm]["peak"] = peak_by_category(lambda: train_step(step_net, opt, x, y))
        out[arm]["params"] = net.num_parameters()
    return out


def differences(profiles: dict[str, dict], baseline: str = "residual") -> dict[str, dict]:
    """Per arm against ``baseline``: the ratio of saved bytes, of the step's peak (above what the step started
    with) and, per shape, the extra count and bytes (the shapes where the arm keeps more or fewer tensors, largest
    first, with the savers the arm has there that the baseline has not: who keeps the extra ones)."""
    def per_shape(prof: dict) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for key, v in prof["by_shape"].items():
            shape, savers = key.split(" <- ", 1)
            slot = out.setdefault(shape, {"count": 0, "bytes": 0, "savers": Counter()})
            slot["count"] += v["count"]
            slot["bytes"] += v["bytes"]
            slot["savers"][savers] += v["count"]
        return out

    base, base_shapes = profiles[baseline], per_shape(profiles[baseline])
    empty = {"count": 0, "bytes": 0, "savers": Counter()}
    out = {}
    for arm, prof in profiles.items():
        mine = per_shape(prof)
        rows = []
        for s in sorted(set(mine) | set(base_shapes)):
            a, b = mine.get(s, empty), base_shapes.get(s, empty)
            if a["count"] != b["count"] or a["bytes"] != b["bytes"]:
                rows.append({"shape": s, "count": a["count"], "baseline_count": b["count"],
                             "extra_bytes": a["bytes"] - b["bytes"],
                             "new_savers": sorted((a["savers"] - b["savers"]).keys())})
        rows.sort(key=lambda r: (-abs(r["extra_bytes"]), r["shape"]))
        peak, base_peak = prof["peak"], base["peak"]
        cats = dict.fromkeys([*peak["by_category"], *base_peak["by_category"]])
        out[arm] = {"saved_ratio": prof["total_bytes"] / base["total_bytes"] if base["total_bytes"] else None,
                    "extra_bytes": prof["total_bytes"] - base["total_bytes"], "by_shape": rows,
                    "peak_ratio": (peak["step_peak_bytes"] / base_peak["step_peak_bytes"]
                                   if base_peak["step_peak_bytes"] > 0 else None),
                    "peak_extra_by_category": {c: peak["by_category"].get(c, 0) - base_peak["by_category"].get(c, 0)
                                               for c in cats}}
    return out


def _ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.3f}×"


def markdown(result: dict, top: int = 6) -> str:
    lines = [f"# Saved for backward: {result['path']}, size {result['size']}", "",
             f"`{result['command']}`" if result.get("command") else "", "",
             "Distinct storages autograd keeps from the forward pass to the backward pass (parameters left out), per "
             "arm against `residual`; the shapes where an arm keeps more (or fewer) tensors, largest first, with the "
             "autograd nodes that keep them in this arm and not in `residual`. The peak table: the step's peak above "
             "the memory it started with (parameters, optimizer state, inputs), the measure of `bench overhead`.",
             ""]
    for model, res in result["models"].items():
        lines += [f"## {model}", "", "Saved for backward:", "",
                  "| arm | saved MB | × residual | where the difference is (shape: count vs residual's, extra MB "
                  "[kept by]) |",
                  "|---|---|---|---|"]
        for arm, prof in res["profiles"].items():
            d = res["differences"][arm]
            where = "; ".join(f"{r['shape']}: {r['count']} vs {r['baseline_count']}, {r['extra_bytes'] / MB:+.2f}"
                              + (f" [{', '.join(r['new_savers'])}]" if r["new_savers"] else "")
                              for r in d["by_shape"][:top]) or "—"
            more = len(d["by_shape"]) - top
            lines.append(f"| `{arm}` | {prof['total_bytes'] / MB:.2f} | {_ratio(d['saved_ratio'])} | {where}"
                         + (f"; {more} more shapes" if more > 0 else "") + " |")
        lines += ["", "At the training step's peak (profiler memory timeline; extra MB against `residual` by "
                      "category, where it differs by more than 0.05 MB):", "",
                  "| arm | step peak MB | × residual | extra at the peak |", "|---|---|---|---|"]
        for arm, prof in res["profiles"].items():
            d = res["differences"][arm]
            extra = "; ".join(f"{c} {v / MB:+.2f}" for c, v in sorted(d["peak_extra_by_category"].items(),
                                                                        key=lambda kv: -abs(kv[1]))
                              if abs(v) > 0.05 * MB) or "—"
            lines.append(f"| `{arm}` | {prof['peak']['step_peak_bytes'] / MB:.2f} | {_ratio(d['peak_ratio'])} | "
                         f"{extra} |")
        lines.append("")
    return "\n".join(lines)


def run_saved(models: list[str], size: str, arms: list[str], compile: bool | str = False, fused: bool = False,
              out_dir: str | Path | None = None, command: str = "", log=print) -> dict:
    path = path_label(compile) + (", fused" if fused else "")
    result = {"path": path, "size": size, "command": command, "machine": machine_info(), "torch": torch.__version__,
              "models": {}}
    for model in models:
        if log:
            log(f"[saved] {model}: {', '.join(arms)} ({path})")
        profiles = profile_arms(model, size, arms, compile=compile, fused=fused)
        result["models"][model] = {"sizes": SIZES[size][model], "profiles": profiles,
                                   "differences": differences(profiles)}
    if out_dir is not None:
        write_outputs(out_dir, "saved", result, markdown(result), log=log or (lambda *_: None))
    return result


def _cmd(args) -> int:
    from ..connections.registry import split_top

    set_threads(args.threads)
    models = list(MODELS) if args.model == "all" else [args.model]
    # residual first (every difference is against it), then the given specs, deduplicated
    arms = unique_arms(split_top(args.connections) if args.connections else ["ancre", "denseformer"])
    result = run_saved(models, args.size, arms, compile=compile_choice(args), fused=args.fused, out_dir=args.out,
                       command=bench_command())
    print(markdown(result))
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("saved", help="what autograd keeps for the backward pass per connection, against "
                                            "residual, grouped by shape (where a scheme's extra memory goes)")
    p.add_argument("--model", choices=(*MODELS, "all"), default="all")
    p.add_argument("--size", choices=tuple(SIZES), default="default")
    p.add_argument("--connections", default=None, help="comma-separated specs (default: ancre, denseformer); "
                                                       "residual is always added")
    p.add_argument("--compile", action="store_true", help="profile torch.compile(model) (inductor)")
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # aot_eager: fast, for tests
    p.add_argument("--fused", action="store_true", help="the opt-in fused stream sums")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="results/bench-overhead/saved", help="folder for saved.json / saved.md")
    p.set_defaults(func=_cmd)

