"""Where a scheme's extra step time goes: torch profiler self CPU time per op, per training step, of each given
connection minus `residual`'s, on `reslab bench overhead`'s model (same build, same step). A time profile for the
overhead misses, beside `reslab bench saved`'s memory profile.

    python scripts/profile_overhead.py ancre denseformer "laurel(rw)"              # GPT, default size
    python scripts/profile_overhead.py --size wide --steps 5 denseformer

Prints, per connection, a markdown table of the ops whose self time grew most, with their extra calls per step.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from reslab.bench.overhead import SIZES, build, train_step
from reslab.runtime import tune_malloc


def per_op(model: str, size: str, spec: str, steps: int) -> dict[str, tuple[float, float]]:
    """op -> (self CPU ms per step, calls per step), after 3 untimed steps."""
    net, opt, x, y, _ = build(model, size, spec, torch.device("cpu"))
    for _ in range(3):
        train_step(net, opt, x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(net, opt, x, y)
    return {e.key: (e.self_cpu_time_total / 1000 / steps, e.count / steps) for e in prof.key_averages()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("connections", nargs="+")
    ap.add_argument("--model", default="gpt", choices=("gpt", "resnet", "vit"))
    ap.add_argument("--size", default="default", choices=tuple(SIZES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    tune_malloc()  # as the bench runs
    base = per_op(args.model, args.size, "residual", args.steps)
    base_total = sum(t for t, _ in base.values())
    print(f"{args.model}, size {args.size}, {torch.get_num_threads()} thread(s), {args.steps} profiled steps\n")
    for spec in args.connections:
        arm = per_op(args.model, args.size, spec, args.steps)
        total = sum(t for t, _ in arm.values())
        rows = sorted(((arm.get(k, (0, 0))[0] - base.get(k, (0, 0))[0], k,
                        arm.get(k, (0, 0))[1] - base.get(k, (0, 0))[1]) for k in set(base) | set(arm)), reverse=True)
        print(f"## `{spec}`: self CPU {total:.1f} ms per step against residual's {base_total:.1f} ms "
              f"({total / base_total:.3f}x)\n")
        print("| op | extra ms per step | extra calls per step |\n|---|---|---|")
        for extra, key, calls in rows[:args.top]:
            print(f"| `{key}` | {extra:+.2f} | {calls:+.0f} |")
        print()


if __name__ == "__main__":
    main()
