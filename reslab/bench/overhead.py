"""``reslab bench overhead``: what each connection costs in time, throughput, memory and parameters.

For every registered scheme (its ``example`` spec, see ``reslab connections``) plus ``laurel(rw)`` and
``laurel(rw, lr, rank=16)``, on the GPT (default d = 256, 12 layers, T = 128) and on the CIFAR ResNet-20,
one *training step* -- zero_grad, forward, loss, backward, AdamW step -- is timed, and

    time ratio   = median step time of the arm / median step time of ``residual``      (same run)
    throughput   = units per step / median step time          (tokens for the GPT, images for the ResNet)
    memory ratio = peak step memory of the arm / that of ``residual``

Timing method. Every arm's model is built from the same seed (identical branch weights), and all of
them stay alive, so after ``warmup`` interleaved steps per arm the ``repeats`` timed rounds interleave
the arms (A, B, C, ..., then again in a new shuffled order): slow drifts of a shared machine (another
job, thermal state) hit every arm alike instead of whichever arm ran during them. Reported: the median
step time, its inter-quartile range, and the *paired* ratio -- per round, arm time / residual time in
that round -- as median and IQR, which shows how much of a ratio is noise. Every step is timed on two
clocks, elapsed (``wall``, the default for the ratios) and the process's CPU time (``cpu``, all threads):
on a machine shared with other jobs the CPU clock leaves out the time a step waits for a core, which
otherwise swamps a 1% difference; ``--clock`` picks the one the ratios and targets use, the other
clock's ratio is reported beside it. ``--threads 1`` avoids a second failure mode of busy machines: an
OpenMP team of 2 threads on 2 contended cores waits at every barrier for its slower member.

Peak memory of a step, the same definition on both devices: the highest memory use during one
steady-state step (optimizer state already allocated, gradients freed by ``zero_grad(set_to_none)``)
minus the use just before it, i.e. activations + gradients + temporaries of the step.

- CUDA: ``torch.cuda.max_memory_allocated() - memory_allocated()`` around a timed step.
- CPU: the resident set size (RSS) of a separate process, one per model, that builds each arm in turn,
  runs a warm step, then resets the kernel's peak-RSS mark (``/proc/self/clear_refs`` <- 5, Linux >= 4.0)
  and reads ``VmHWM - VmRSS`` over one more step. The process is started with
  ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every block >= 64 KiB (every tensor that matters)
  with its own mmap and unmaps it on free, so RSS follows live tensor bytes instead of the memory an
  earlier step or arm freed but malloc kept -- which is what makes arms measured one after another in
  one process comparable. Where the mark cannot be reset, each arm gets its own process and the
  fallback ``ru_maxrss - RSS before the first step`` (which then also counts AdamW's state); the method
  used is recorded in the JSON.

Targets (CPU, ratio to ``residual``) are data (:data:`TARGETS`) and their pass/miss column is computed
from the measured ratios. A published unified LM benchmark measured 0.78x (DenseFormer) and 0.82x
(LAuReL RW+LR) of pre-norm throughput; the targets ask for much less overhead than that.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

# Model sizes. GPT: the issue's d = 256, 12 layers, T = 128 (4 heads of 64, char vocabulary);
# ResNet: CIFAR ResNet-20 on 32x32 RGB. "tiny" exists for the test suite.
SIZES: dict[str, dict[str, dict]] = {
    "default": {
        "gpt": dict(n_layer=12, d_model=256, n_head=4, block_size=128, vocab_size=65, batch=8),
        "resnet": dict(depth=20, width=1, image=32, channels=3, classes=10, batch=32),
    },
    "tiny": {
        "gpt": dict(n_layer=2, d_model=16, n_head=2, block_size=8, vocab_size=11, batch=2),
        "resnet": dict(depth=8, width=0.25, image=8, channels=1, classes=3, batch=2),
    },
}
MODELS = ("gpt", "resnet")
UNITS = {"gpt": "tokens", "resnet": "images"}
CLOCKS = ("wall", "cpu")
CLOCK_TEXT = {"wall": "elapsed time", "cpu": "CPU time of the process, all threads: leaves out time spent waiting "
                                           "for a core on a shared machine"}

# Arms always measured besides every scheme's example spec (deduplicated by canonical spec).
EXTRA_ARMS = ("laurel(rw)", "laurel(rw, lr, rank=16)")

# (spec as the issue writes it, metric, limit on the ratio to residual). Evaluated for every model run.
TARGETS: list[tuple[str, str, float]] = [
    ("ancre", "time", 1.03),
    ("ancre", "memory", 1.01),
    ("laurel(rw)", "time", 1.02),
    ("laurel(rw, lr, rank=16)", "time", 1.05),
    ("denseformer", "time", 1.03),
    ("scaled", "time", 1.01),
    ("rezero", "time", 1.01),
]

# Published reference for context (throughput relative to pre-norm, a unified LM benchmark).
PUBLISHED_THROUGHPUT = {"denseformer": 0.78, "laurel(rw, lr)": 0.82}

_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# ---------------------------------------------------------------------------------------------
# arms, models, one training step


def canonical_spec(spec: str) -> str:
    """``"laurel(rw, lr, rank=16)"`` -> ``"laurel(rw, lr)"`` (defaults dropped), validating the spec."""
    from ..connections import _load_all, canonical, resolve

    _load_all()
    info, opts = resolve(spec)
    return canonical(info.name, opts)


def default_arms() -> list[str]:
    """``residual`` first, then every registered scheme's example and :data:`EXTRA_ARMS`, canonical and unique."""
    from ..connections import list_connections

    return unique_arms([i.example for i in list_connections()] + list(EXTRA_ARMS))


def unique_arms(specs: list[str]) -> list[str]:
    out: list[str] = ["residual"]  # every ratio needs it, measured in the same run
    for s in specs:
        c = canonical_spec(s)
        if c not in out:
            out.append(c)
    return out


def build(model: str, size: str, spec: str, device: torch.device, seed: int = 0):
    """(model, optimizer, x, y, units per step). Same seed for every arm: identical branch weights and data."""
    from ..models import GPT, GPTConfig, ResNet
    from ..train import TrainConfig, param_groups

    s = SIZES[size][model]
    torch.manual_seed(seed)
    if model == "gpt":
        net = GPT(GPTConfig(vocab_size=s["vocab_size"], block_size=s["block_size"], n_layer=s["n_layer"],
                            n_head=s["n_head"], d_model=s["d_model"], connection=spec))
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randint(s["vocab_size"], (s["batch"], s["block_size"]), generator=g)
        y = torch.randint(s["vocab_size"], (s["batch"], s["block_size"]), generator=g)
        units = s["batch"] * s["block_size"]
    else:
        net = ResNet(depth=s["depth"], width=s["width"], in_channels=s["channels"], n_classes=s["classes"],
                     connection=spec)
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(s["batch"], s["channels"], s["image"], s["image"], generator=g)
        y = torch.randint(s["classes"], (s["batch"],), generator=g)
        units = s["batch"]
    net = net.to(device).train()
    # the trainer's parameter groups (connection parameters undecayed), so the step is the real one
    opt = torch.optim.AdamW(param_groups(net, TrainConfig()), lr=1e-4)
    return net, opt, x.to(device), y.to(device), units


def train_step(net, opt, x, y) -> None:
    """zero_grad + forward + loss + backward + optimizer step; bf16 autocast on CUDA as in the trainer."""
    opt.zero_grad(set_to_none=True)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if x.device.type == "cuda" else nullcontext()
    with ctx:
        out = net(x)
    loss = F.cross_entropy(out.float().reshape(-1, out.size(-1)), y.reshape(-1))
    loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


# ---------------------------------------------------------------------------------------------
# timing (interleaved) and memory


def time_arms(model: str, size: str, arms: list[str], repeats: int, warmup: int, device: torch.device,
              seed: int = 0, log=print) -> dict[str, dict]:
    """Interleaved timing; on CUDA also the peak step memory. Returns {spec: {...}}."""
    from ..train import connection_parameters

    built = {a: build(model, size, a, device, seed) for a in arms}
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    cuda_peak: dict[str, list[int]] = {a: [] for a in arms}
    order = list(arms)
    for r in range(warmup + repeats):
        rng.shuffle(order)  # a new order every round: no arm always runs right after the same one
        for a in order:
            net, opt, x, y, _ = built[a]
            if device.type == "cuda":  # as on CPU: measured from a state without gradients
                opt.zero_grad(set_to_none=True)
                _sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(net, opt, x, y)
            _sync(device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r >= warmup:
                wall[a].append(dt)
                cpu[a].append(dc)
                if device.type == "cuda":
                    cuda_peak[a].append(torch.cuda.max_memory_allocated(device) - before)
        if r >= warmup and log:
            done = r - warmup + 1
            if done == repeats or done % max(1, repeats // 5) == 0:
                log(f"  [{model}] round {done}/{repeats}")
    out = {}
    for a in arms:
        net, _, _, _, units = built[a]
        conn_params = sum(p.numel() for p in connection_parameters(net))
        out[a] = {"wall_times_s": wall[a], "cpu_times_s": cpu[a], "units_per_step": units,
                  "params": sum(p.numel() for p in net.parameters()),
                  "connection_params": conn_params,
                  "peak_step_memory_bytes": int(statistics.median(cuda_peak[a])) if cuda_peak[a] else None}
    del built
    gc.collect()
    return out


def _proc_status(key: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def probe_memory(model: str, size: str, arms: list[str], seed: int = 0, method: str = "hwm") -> dict[str, int]:
    """Runs *inside* the probe process: peak step memory (bytes) per arm, measured in the order given.

    hwm: warm step, reset the peak-RSS mark, peak - current RSS over one more step (see module doc).
    maxrss: a fresh process per arm; ru_maxrss - RSS before the first step (includes AdamW state)."""
    import resource

    device = torch.device("cpu")
    out = {}
    for a in arms:
        net, opt, x, y, _ = build(model, size, a, device, seed)
        if method == "hwm":
            train_step(net, opt, x, y)  # allocates AdamW's state; the step below is the steady state
            opt.zero_grad(set_to_none=True)
            gc.collect()
            base = _proc_status("VmRSS")
            if not _reset_peak_rss():
                raise OSError("cannot reset the peak RSS mark (/proc/self/clear_refs)")
            train_step(net, opt, x, y)
            out[a] = _proc_status("VmHWM") - base
        else:
            gc.collect()
            base = _proc_status("VmRSS")
            for _ in range(2):
                train_step(net, opt, x, y)
            out[a] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        del net, opt, x, y
        gc.collect()
    return out


def _run_probe(model: str, size: str, arms: list[str], seed: int, method: str) -> dict[str, int]:
    job = json.dumps({"model": model, "size": size, "arms": arms, "seed": seed, "method": method})
    env = os.environ | _MMAP_ENV
    proc = subprocess.run([sys.executable, "-m", "reslab.bench.overhead", "--probe", job], capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {model} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_memory(model: str, size: str, arms: list[str], seed: int = 0) -> tuple[dict[str, int | None], str]:
    """Peak step memory per arm on CPU, and the name of the method that produced it."""
    if not Path("/proc/self/status").exists():
        return {a: None for a in arms}, "unavailable (no /proc: Linux only)"
    try:
        return _run_probe(model, size, arms, seed, "hwm"), (
            "RSS peak (VmHWM after clear_refs) minus RSS before one steady-state step, one process per model, "
            "MALLOC_MMAP_THRESHOLD_=65536")
    except RuntimeError as e:
        if "clear_refs" not in str(e):
            raise
    mem = {}
    for a in arms:  # fallback: ru_maxrss cannot be reset, so one fresh process per arm
        mem.update(_run_probe(model, size, [a], seed, "maxrss"))
    return mem, "ru_maxrss minus RSS before the first step (includes AdamW state), one process per arm"


# ---------------------------------------------------------------------------------------------
# the benchmark


def summarize(raw: dict[str, dict], baseline: str = "residual", clock: str = "wall") -> dict[str, dict]:
    """Medians, throughput and ratios to ``baseline`` (measured in the same run, paired by round) on
    ``clock``: ``wall`` (elapsed time) or ``cpu`` (CPU time of the process: on a machine shared with
    other jobs it leaves out the time spent waiting for a core). Both clocks' ratios of medians are kept."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}")
    base_t = raw[baseline][f"{clock}_times_s"]
    base_med = statistics.median(base_t)
    base_mem = raw[baseline].get("peak_step_memory_bytes")
    out = {}
    for a, r in raw.items():
        t = r[f"{clock}_times_s"]
        q1, med, q3 = _quartiles(t)
        paired = [ta / tb for ta, tb in zip(t, base_t)]
        p1, pmed, p3 = _quartiles(paired)
        mem = r.get("peak_step_memory_bytes")
        out[a] = {
            "params": r["params"], "connection_params": r["connection_params"],
            "extra_params": r["params"] - raw[baseline]["params"],
            "time_s_median": med, "time_s_q1": q1, "time_s_q3": q3, "times_s": t,
            "throughput": r["units_per_step"] / med, "units_per_step": r["units_per_step"],
            "time_ratio": med / base_med,
            **{f"time_ratio_{c}": statistics.median(r[f"{c}_times_s"]) / statistics.median(raw[baseline][f"{c}_times_s"])
               for c in CLOCKS},
            "wall_times_s": r["wall_times_s"], "cpu_times_s": r["cpu_times_s"],
            "throughput_ratio": base_med / med,
            "time_ratio_paired_median": pmed, "time_ratio_paired_q1": p1, "time_ratio_paired_q3": p3,
            "peak_step_memory_bytes": mem,
            "memory_ratio": (mem / base_mem) if (mem is not None and base_mem) else None,
        }
    return out


def evaluate_targets(models: dict[str, dict]) -> list[dict]:
    """One row per (target, model run): the measured ratio and pass/miss (None: arm or number missing)."""
    rows = []
    for spec, metric, limit in TARGETS:
        arm = canonical_spec(spec)
        for model, res in models.items():
            r = res["arms"].get(arm)
            ratio = None if r is None else r["time_ratio" if metric == "time" else "memory_ratio"]
            noise = None
            if r is not None and metric == "time":
                noise = (r["time_ratio_paired_q3"] - r["time_ratio_paired_q1"]) / 2
            rows.append({"target": spec, "arm": arm, "model": model, "metric": metric, "limit": limit,
                         "ratio": ratio, "paired_half_iqr": noise,
                         "status": None if ratio is None else ("pass" if ratio <= limit else "miss")})
    return rows


def run_overhead(models: list[str] | tuple[str, ...] = MODELS, size: str = "default", repeats: int = 10,
                 warmup: int = 2, connections: list[str] | None = None, device: str = "auto",
                 memory: bool = True, seed: int = 0, out_dir: str | Path | None = None, command: str = "",
                 clock: str = "wall", log=print) -> dict:
    """Run the benchmark; write ``overhead.json`` and ``overhead.md`` to ``out_dir`` when given."""
    from ..train import atomic_write_json, git_revision, machine

    log = log or (lambda *_: None)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    for m in models:
        if m not in MODELS:
            raise ValueError(f"unknown model {m!r}; valid: {', '.join(MODELS)} (or 'both')")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    dev = torch.device(device)
    if clock == "cpu" and dev.type != "cpu":
        raise ValueError("clock='cpu' measures CPU time, which says nothing about GPU work; use clock='wall' on "
                         f"{dev.type}")
    arms = unique_arms(list(connections)) if connections else default_arms()
    t0 = time.time()
    result: dict = {"command": command or "reslab bench overhead", "git": git_revision(), "machine": machine(),
                    "device": dev.type, "size": size, "repeats": repeats, "warmup": warmup, "seed": seed,
                    "clock": clock, "threads": torch.get_num_threads(),
                    "baseline": "residual", "arms": arms, "models": {}}
    for m in models:
        log(f"[{m}] timing {len(arms)} arms: {warmup} warm-up + {repeats} interleaved rounds on {dev.type}")
        raw = time_arms(m, size, arms, repeats, warmup, dev, seed, log)
        method = "torch.cuda.max_memory_allocated - memory_allocated around a steady-state step"
        if dev.type == "cpu":
            if memory:
                log(f"[{m}] peak step memory: probe process")
                mem, method = cpu_memory(m, size, arms, seed)
            else:
                mem, method = {a: None for a in arms}, "not measured (--no-memory)"
            for a in arms:
                raw[a]["peak_step_memory_bytes"] = mem[a]
        result["models"][m] = {"config": SIZES[size][m], "unit": UNITS[m], "memory_method": method,
                               "arms": summarize(raw, clock=clock)}
    result["targets"] = evaluate_targets(result["models"])
    result["wall_time_s"] = round(time.time() - t0, 1)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "overhead.json", result)
        (out / "overhead.md").write_text(markdown(result))
        log(f"wrote {out / 'overhead.json'} and {out / 'overhead.md'}")
    return result


# ---------------------------------------------------------------------------------------------
# report


def _f(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def target_table(result: dict) -> str:
    lines = ["| target | model | metric | limit | measured ratio | paired ½IQR | status |", "|---|---|---|---|---|---|---|"]
    for t in result["targets"]:
        status = {"pass": "pass", "miss": "**miss**", None: "—"}[t["status"]]
        lines.append(f"| `{t['target']}` | {t['model']} | {t['metric']} | ≤ {t['limit']:.2f}× | "
                     f"{_f(t['ratio'], '.3f')}× | {_f(t['paired_half_iqr'], '.3f')} | {status} |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    dev = result["device"]
    clock = result.get("clock", "wall")
    other = next(c for c in CLOCKS if c != clock)
    parts = [f"# Connection overhead ({dev}, size {result['size']})\n",
             f"`{result['command']}` — git {result['git']}, {result['machine'].get('platform', '')}, "
             f"torch {result['machine'].get('torch', '')}, {result.get('threads', '?')} thread(s); "
             f"{result['warmup']} warm-up + {result['repeats']} interleaved rounds; wall {result['wall_time_s']} s.\n",
             f"One step = zero_grad + forward + loss + backward + AdamW step, timed on the **{clock}** clock "
             f"({CLOCK_TEXT[clock]}). Ratios are to `residual` in the same run: *time ×* is the ratio of medians, "
             f"*paired* the median [IQR] of per-round ratios (a noise gauge), *{other} ×* the ratio of medians on "
             f"the other clock.\n"]
    for m, res in result["models"].items():
        unit = res["unit"]
        cfg = ", ".join(f"{k}={v}" for k, v in res["config"].items())
        parts.append(f"## {m} ({cfg})\n\nPeak step memory: {res['memory_method']}.\n")
        rows = ["| connection | params | extra | step ms (median) | " + unit + "/s | time × | paired [IQR] | "
                f"{other} × | throughput × | peak step MB | memory × |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for a, r in res["arms"].items():
            mem = r["peak_step_memory_bytes"]
            rows.append(
                f"| `{a}` | {r['params']:,} | {r['extra_params']:+,} | {1000 * r['time_s_median']:.1f} | "
                f"{r['throughput']:,.0f} | {r['time_ratio']:.3f} | {r['time_ratio_paired_median']:.3f} "
                f"[{r['time_ratio_paired_q1']:.3f}, {r['time_ratio_paired_q3']:.3f}] | {r[f'time_ratio_{other}']:.3f} | "
                f"{r['throughput_ratio']:.3f} | "
                f"{_f(None if mem is None else mem / 2**20, '.1f')} | {_f(r['memory_ratio'], '.3f')} |")
        parts.append("\n".join(rows) + "\n")
    parts.append("## Targets (CPU, ratio to `residual`)\n")
    if dev != "cpu":
        parts.append(f"(the targets are stated for CPU; these numbers are from {dev})\n")
    parts.append(target_table(result))
    ref = ", ".join(f"`{k}` {v:.2f}×" for k, v in PUBLISHED_THROUGHPUT.items())
    parts.append(f"\nFor reference, a published unified LM benchmark measured throughput relative to pre-norm of {ref}.\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# command line


def _cmd(args) -> int:
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 keeps torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)  # the probe process inherits it through OMP_NUM_THREADS below
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    models = list(MODELS) if args.model == "both" else [args.model]
    connections = None
    if args.connections:
        from ..connections.registry import split_top

        connections = split_top(args.connections)
    command = "reslab " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    result = run_overhead(models, args.size, args.repeats, args.warmup, connections, args.device,
                          memory=args.memory, seed=args.seed, out_dir=args.out, command=command, clock=args.clock)
    print()
    print(target_table(result))
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("overhead", help="time / throughput / peak memory / params of every connection "
                                               "against residual (interleaved, medians)")
    p.add_argument("--model", choices=("gpt", "resnet", "both"), default="both")
    p.add_argument("--size", choices=tuple(SIZES), default="default")
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed rounds per arm (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed interleaved rounds first (default 2)")
    p.add_argument("--out", default="results/bench-overhead", help="folder for overhead.json / overhead.md")
    p.add_argument("--connections", default=None,
                   help="comma-separated specs (default: every registered scheme's example + laurel(rw), "
                        "laurel(rw, lr, rank=16)); residual is always added")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="measure peak step memory (CPU: one probe process per model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, all cores)")
    p.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="what the ratios use: wall (elapsed) or cpu (process CPU time; robust on a shared machine)")
    p.set_defaults(func=_cmd)


def _probe_main(argv: list[str]) -> int:
    """``python -m reslab.bench.overhead --probe JSON``: the CPU memory probe process."""
    if len(argv) != 2 or argv[0] != "--probe":
        print("usage: python -m reslab.bench.overhead --probe '{\"model\": ..., \"size\": ..., \"arms\": [...]}'\n"
              "(internal; use `reslab bench overhead`)", file=sys.stderr)
        return 2
    job = json.loads(argv[1])
    try:
        mem = probe_memory(job["model"], job["size"], job["arms"], job.get("seed", 0), job.get("method", "hwm"))
    except OSError as e:
        print(f"memory probe: {e}", file=sys.stderr)
        return 1
    print(json.dumps(mem))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
