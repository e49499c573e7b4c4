"""``reslab bench overhead``: what each connection costs in time, throughput, memory and parameters.

For every registered scheme (its ``example`` spec, see ``reslab connections``) plus ``laurel(rw)`` and
``laurel(rw, lr, rank=16)``, on the GPT (default d = 256, 12 layers, T = 128), the CIFAR ResNet-20 and a
small ViT (d = 192, 6 blocks, 8x8 patches of 32x32 images), one *training step* -- zero_grad, forward, loss,
backward, AdamW step -- is timed, and

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

Paths. ``--compile`` times ``torch.compile(model)`` (inductor by default; what GPU users run), ``--fused``
the opt-in fused autograd path of the stream sums (``with reslab.connections.fused(True):``; ignored under
compile, where inductor generates its own kernels). Without either flag: the eager plain expressions.
``--size wide`` is the same families at widths where the branches dominate the step.

Hygiene. Every run records the machine (CPU model, cores), torch's threads, the 1-minute load average before
and after, and -- over the timed rounds -- the CPU time that *other* processes took (``/proc/stat`` busy time
minus this process's own CPU time, in cores; the load average after a run includes the run itself). A target
gets pass/miss only when the machine was quiet (load before and others' CPU both <= ``max_load``, 0.5 by
default) *and* the paired IQR of its ratio (q3 - q1 of the per-round ratios) is no wider than the target's
margin (limit - 1); otherwise it is ``refused`` with the figure and "rerun on a quiet machine". The command
line refuses to start on a busy machine unless ``--busy-ok``.

Targets (ratio to ``residual``) are data (:data:`TARGETS`) and their pass/miss column is computed
from the measured ratios. A published unified LM benchmark measured 0.78x (DenseFormer) and 0.82x
(LAuReL RW+LR) of pre-norm throughput; the targets ask for much less overhead than that.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from . import machine  # its load_average is read through the module, so one patch in a test reaches every reading
from .machine import (MAX_LOAD, OthersCPU, bench_command, busy_reason, cores_text, hygiene_line, machine_info,
                      refuse_if_busy, set_threads, write_outputs)

# Model sizes. GPT: d = 256, 12 layers, T = 128 (4 heads of 64, char vocabulary);
# ResNet: CIFAR ResNet-20 on 32x32 RGB. "tiny" exists for the test suite.
# ViT: 32x32 RGB in 4x4 patches (64 tokens + [CLS]). "wide": widths where the branches dominate a step
# (GPT d = 768, ResNet-20 at 4x width, i.e. 64-256 channels, ViT d = 512). "small": the default widths at
# fewer blocks, for --compile (inductor compiles the unrolled depth loop: a 12-layer GPT step took 240 s to
# compile on this 2-core machine under load, per arm). An entry holds the task and the batch (TASK_KEYS) and
# the model's options under their ``build_model`` names.
SIZES: dict[str, dict[str, dict]] = {
    "default": {
        "gpt": dict(n_layer=12, d_model=256, n_head=4, block_size=128, vocab_size=65, batch=8),
        "resnet": dict(depth=20, width=1, image=32, channels=3, classes=10, batch=32),
        "vit": dict(n_layer=6, d_model=192, n_head=3, patch_size=4, image=32, channels=3, classes=10, batch=32),
    },
    "small": {
        "gpt": dict(n_layer=4, d_model=256, n_head=4, block_size=128, vocab_size=65, batch=8),
        "resnet": dict(depth=14, width=1, image=32, channels=3, classes=10, batch=32),
        "vit": dict(n_layer=4, d_model=192, n_head=3, patch_size=4, image=32, channels=3, classes=10, batch=32),
    },
    "wide": {
        "gpt": dict(n_layer=6, d_model=768, n_head=12, block_size=128, vocab_size=65, batch=8),
        "resnet": dict(depth=20, width=4, image=32, channels=3, classes=10, batch=16),
        "vit": dict(n_layer=6, d_model=512, n_head=8, patch_size=4, image=32, channels=3, classes=10, batch=16),
    },
    "tiny": {
        "gpt": dict(n_layer=2, d_model=16, n_head=2, block_size=8, vocab_size=11, batch=2),
        "resnet": dict(depth=8, width=0.25, image=8, channels=1, classes=3, batch=2),
        "vit": dict(n_layer=2, d_model=16, n_head=2, patch_size=4, image=8, channels=1, classes=3, batch=2),
    },
}
MODELS = tuple(SIZES["default"])
UNITS = {m: "tokens" if "vocab_size" in s else "images" for m, s in SIZES["default"].items()}
CLOCKS = ("wall", "cpu")
CLOCK_TEXT = {"wall": "elapsed time", "cpu": "CPU time of the process, all threads: leaves out time spent waiting "
                                           "for a core on a shared machine"}

# Arms always measured besides every scheme's example spec (deduplicated by canonical spec).
EXTRA_ARMS = ("laurel(rw)", "laurel(rw, lr, rank=16)")

# (spec as the issue writes it, metric, limit on the ratio to residual). Evaluated for every model run.
# hyper/mhc: the papers' memory statement is n copies of the stream, so a step may use at most n x residual's.
TARGETS: list[tuple[str, str, float]] = [
    ("ancre", "time", 1.03),
    ("ancre", "memory", 1.01),
    ("denseformer", "time", 1.03),
    ("denseformer", "memory", 1.01),
    ("laurel(rw)", "time", 1.02),
    ("laurel(rw, lr, rank=16)", "time", 1.05),
    ("scaled", "time", 1.01),
    ("rezero", "time", 1.01),
    ("skipinit", "time", 1.01),
    ("hyper", "memory", 4.0),
    ("mhc", "memory", 4.0),
]


def target_arms() -> list[str]:
    """``residual`` and every arm a target names: the default subset of a compiled run."""
    return unique_arms([spec for spec, _, _ in TARGETS])

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


def task_info(model: str, size: str) -> dict:
    """The task a size entry stands for, as ``build_model`` reads it: a language model's vocabulary and context
    (``vocab_size``, ``block_size``), or an image classifier's square images (``image``, ``channels``,
    ``classes``)."""
    s = SIZES[size][model]
    if "vocab_size" in s:
        return {"vocab_size": s["vocab_size"], "block_size": s["block_size"]}
    return {"input_shape": (s["channels"], s["image"], s["image"]), "n_classes": s["classes"]}


#: keys of a size entry that describe the task and the batch; every other key is a model option
TASK_KEYS = frozenset({"vocab_size", "block_size", "image", "channels", "classes", "batch"})


def build(model: str, size: str, spec: str, device: torch.device, seed: int = 0):
    """(model, optimizer, x, y, units per step). Same seed for every arm: identical branch weights and data.
    The model comes from the registry (``build_model``), so a family is benched by adding its entry to
    :data:`SIZES`; random token ids or Gaussian images stand in for data."""
    from ..models import build_model
    from ..train import TrainConfig, param_groups

    s = SIZES[size][model]
    info = task_info(model, size)
    torch.manual_seed(seed)
    net = build_model(model, info, spec, **{k: v for k, v in s.items() if k not in TASK_KEYS})
    g = torch.Generator().manual_seed(seed + 1)
    if "vocab_size" in info:
        x = torch.randint(s["vocab_size"], (s["batch"], s["block_size"]), generator=g)
        y = torch.randint(s["vocab_size"], (s["batch"], s["block_size"]), generator=g)
        units = x.numel()  # tokens
    else:
        x = torch.randn(s["batch"], *info["input_shape"], generator=g)
        y = torch.randint(s["classes"], (s["batch"],), generator=g)
        units = s["batch"]  # images
    net = net.to(device).train()
    # the trainer's parameter groups (connection parameters undecayed), so the step is the real one
    opt = torch.optim.AdamW(param_groups(net, TrainConfig()), lr=1e-4)
    return net, opt, x.to(device), y.to(device), units


def step_loss(net, x, y) -> torch.Tensor:
    """A training step's forward + loss; bf16 autocast on CUDA as in the trainer. ``net`` may be the
    ``torch.compile`` wrapper of the model."""
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if x.device.type == "cuda" else nullcontext()
    with ctx:
        out = net(x)
    return F.cross_entropy(out.float().reshape(-1, out.size(-1)), y.reshape(-1))


def train_step(net, opt, x, y) -> None:
    """zero_grad + :func:`step_loss` + backward + optimizer step."""
    opt.zero_grad(set_to_none=True)
    step_loss(net, x, y).backward()
    opt.step()


def compile_choice(args) -> bool | str:
    """``--compile`` [``--compile-backend``]: False, True (inductor) or another backend's name (tests)."""
    return args.compile_backend if (args.compile and args.compile_backend != "inductor") else args.compile


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


def path_label(compile: bool | str) -> str:
    """How a bench ran the step: "eager", or "compiled (<backend>)" (``compile`` True: inductor)."""
    return ("compiled (" + ("inductor" if compile is True else str(compile)) + ")") if compile else "eager"


def _compiled(net, compile: bool | str):
    """The module a step calls: ``net`` itself, or its compiled wrapper (:func:`reslab.runtime.compile_model`;
    ``compile`` True: inductor, or a backend name such as ``aot_eager`` for tests)."""
    from ..runtime import compile_model

    if not compile:
        return net
    return compile_model(net, backend="inductor" if compile is True else compile)  # every arm compiled, not 8


def time_arms(model: str, size: str, arms: list[str], repeats: int, warmup: int, device: torch.device,
              seed: int = 0, log=print, compile: bool | str = False, fused: bool = False,
              watch: dict | None = None, steps_per_round: int = 1) -> dict[str, dict]:
    """Interleaved timing; on CUDA also the peak step memory. Returns {spec: {...}}. ``watch`` (a dict)
    receives ``others_cpu``: other processes' CPU use during the timed rounds (see :class:`OthersCPU`).
    ``steps_per_round``: each arm runs that many consecutive steps per round and the round's sample is their
    mean -- the per-step jitter of a shared VM (or kernel-launch jitter on a GPU) averages out of each paired
    ratio, while slow drifts still hit every arm alike (the arms still interleave round by round)."""
    from ..connections import fused as fused_path
    from ..train import connection_parameters

    built = {a: build(model, size, a, device, seed) for a in arms}
    step_net = {a: _compiled(built[a][0], compile) for a in arms}
    others = OthersCPU()
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    cuda_peak: dict[str, list[int]] = {a: [] for a in arms}
    order = list(arms)
    if warmup == 0:
        others.start()
    for r in range(warmup + repeats):
        if r == warmup and warmup:
            others.start()
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
            with fused_path(fused):
                for _ in range(steps_per_round):
                    train_step(step_net[a], opt, x, y)
            _sync(device)
            dt = (time.perf_counter() - t0) / steps_per_round
            dc = (time.process_time() - c0) / steps_per_round
            if r >= warmup:
                wall[a].append(dt)
                cpu[a].append(dc)
                if device.type == "cuda":
                    cuda_peak[a].append(torch.cuda.max_memory_allocated(device) - before)
        if r >= warmup and log:
            done = r - warmup + 1
            if done == repeats or done % max(1, repeats // 5) == 0:
                log(f"  [{model}] round {done}/{repeats}")
    if watch is not None:
        watch["others_cpu"] = others.stop()
    out = {}
    for a in arms:
        net, _, _, _, units = built[a]
        conn_params = sum(p.numel() for p in connection_parameters(net))
        out[a] = {"wall_times_s": wall[a], "cpu_times_s": cpu[a], "units_per_step": units,
                  "params": sum(p.numel() for p in net.parameters()),
                  "connection_params": conn_params,
                  "peak_step_memory_bytes": int(statistics.median(cuda_peak[a])) if cuda_peak[a] else None}
    del built, step_net
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


def probe_memory(model: str, size: str, arms: list[str], seed: int = 0, method: str = "hwm",
                 compile: bool | str = False, fused: bool = False) -> dict[str, int]:
    """Runs *inside* the probe process: peak step memory (bytes) per arm, measured in the order given.

    hwm: warm step, reset the peak-RSS mark, peak - current RSS over one more step (see module doc).
    maxrss: a fresh process per arm; ru_maxrss - RSS before the first step (includes AdamW state)."""
    import resource

    from ..connections import fused as fused_path

    device = torch.device("cpu")
    out = {}
    for a in arms:
        net, opt, x, y, _ = build(model, size, a, device, seed)
        step_net = _compiled(net, compile)

        def step() -> None:  # the arm's path: compiled or eager, fused or plain
            with fused_path(fused):
                train_step(step_net, opt, x, y)

        if method == "hwm":
            step()  # allocates AdamW's state (and compiles); the step below is the steady state
            opt.zero_grad(set_to_none=True)
            gc.collect()
            base = _proc_status("VmRSS")
            if not _reset_peak_rss():
                raise OSError("cannot reset the peak RSS mark (/proc/self/clear_refs)")
            step()
            out[a] = _proc_status("VmHWM") - base
        else:
            gc.collect()
            base = _proc_status("VmRSS")
            for _ in range(2):
                step()
            out[a] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        del net, opt, x, y, step_net
        gc.collect()
    return out


def _run_probe(model: str, size: str, arms: list[str], seed: int, method: str, compile: bool | str = False,
               fused: bool = False) -> dict[str, int]:
    job = json.dumps({"model": model, "size": size, "arms": arms, "seed": seed, "method": method,
                      "compile": compile, "fused": fused})
    env = os.environ | _MMAP_ENV
    proc = subprocess.run([sys.executable, "-m", "reslab.bench.overhead", "--probe", job], capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {model} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_memory(model: str, size: str, arms: list[str], seed: int = 0, compile: bool | str = False,
               fused: bool = False) -> tuple[dict[str, int | None], str]:
    """Peak step memory per arm on CPU, and the name of the method that produced it."""
    if not Path("/proc/self/status").exists():
        return {a: None for a in arms}, "unavailable (no /proc: Linux only)"
    try:
        return _run_probe(model, size, arms, seed, "hwm", compile, fused), (
            "RSS peak (VmHWM after clear_refs) minus RSS before one steady-state step, one process per model, "
            "MALLOC_MMAP_THRESHOLD_=65536")
    except RuntimeError as e:
        if "clear_refs" not in str(e):
            raise
    mem = {}
    for a in arms:  # fallback: ru_maxrss cannot be reset, so one fresh process per arm
        mem.update(_run_probe(model, size, [a], seed, "maxrss", compile, fused))
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


def refusal(ratio_iqr: float, limit: float, busy: str | None = None) -> str | None:
    """Why a time ratio cannot be reported against ``limit`` (None: it can): the machine was busy, or the
    paired IQR (q3 - q1 of the per-round ratios) is wider than the target's margin ``limit - 1``."""
    if busy:
        return f"{busy}: rerun on a quiet machine"
    margin = limit - 1
    if ratio_iqr > margin:
        return f"paired IQR {ratio_iqr:.3f} is wider than the target's margin {margin:.3f}: rerun on a quiet machine"
    return None


def evaluate_targets(models: dict[str, dict], busy: str | None = None) -> list[dict]:
    """One row per (target, model run): the measured ratio and pass/miss (None: arm or number missing), or
    ``refused`` with the reason (time ratios only: a busy machine, or a paired IQR wider than the margin;
    peak memory does not depend on the load)."""
    rows = []
    for spec, metric, limit in TARGETS:
        arm = canonical_spec(spec)
        for model, res in models.items():
            r = res["arms"].get(arm)
            ratio = None if r is None else r["time_ratio" if metric == "time" else "memory_ratio"]
            noise = iqr = why = None
            if r is not None and metric == "time" and r.get("time_ratio_paired_q3") is None:
                why = "no paired IQR recorded (a run older than the refusal rule): rerun"  # cf. target_status
            elif r is not None and metric == "time":
                iqr = r["time_ratio_paired_q3"] - r["time_ratio_paired_q1"]
                noise = iqr / 2
                why = refusal(iqr, limit, busy)
            status = None if ratio is None else "refused" if why else ("pass" if ratio <= limit else "miss")
            rows.append({"target": spec, "arm": arm, "model": model, "metric": metric, "limit": limit,
                         "ratio": ratio, "paired_iqr": iqr, "paired_half_iqr": noise, "status": status,
                         "refused": why})
    return rows


def run_overhead(models: list[str] | tuple[str, ...] = MODELS, size: str = "default", repeats: int = 10,
                 warmup: int = 2, connections: list[str] | None = None, device: str = "auto",
                 memory: bool = True, seed: int = 0, out_dir: str | Path | None = None, command: str = "",
                 clock: str = "wall", log=print, compile: bool | str = False, fused: bool = False,
                 max_load: float | None = MAX_LOAD, steps_per_round: int = 1) -> dict:
    """Run the benchmark; write ``overhead.json`` and ``overhead.md`` to ``out_dir`` when given.

    ``compile``: time ``torch.compile(model)`` (True: inductor; a string names another backend) -- the default
    arms are then only those the targets name. ``fused``: the opt-in fused stream sums. ``max_load``: above
    it (load average before, or others' CPU during the timed rounds) every time target is refused; None:
    no check."""
    from ..train import git_revision

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
    if steps_per_round < 1:
        raise ValueError(f"need steps_per_round >= 1, got {steps_per_round}")
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
    if compile and warmup < 1:
        raise ValueError("a compiled run needs warmup >= 1 (the first step compiles)")
    if compile and fused:
        log("note: --fused has no effect under --compile (inductor generates its own fused kernels)")
    arms = unique_arms(list(connections)) if connections else (target_arms() if compile else default_arms())
    t0 = time.time()
    mach = machine_info()
    load_before = mach["load_average"]
    path = path_label(compile) if compile or not fused else "eager, fused stream sums"
    result: dict = {"command": command or "reslab bench overhead", "git": git_revision(), "machine": mach,
                    "device": dev.type, "size": size, "repeats": repeats, "warmup": warmup, "seed": seed,
                    "steps_per_round": steps_per_round,
                    "clock": clock, "threads": torch.get_num_threads(), "compile": compile, "fused": fused,
                    "path": path, "max_load": max_load, "load_before": load_before,
                    "baseline": "residual", "arms": arms, "models": {}}
    log(f"machine: {mach['cpu_model']}, {mach['cpus']} cores, torch {mach['torch']}, {mach['threads']} thread(s); "
        f"load average before: {load_before}; path: {path}")
    others: list[float | None] = []
    for m in models:
        log(f"[{m}] timing {len(arms)} arms: {warmup} warm-up + {repeats} interleaved rounds on {dev.type}")
        watch: dict = {}
        raw = time_arms(m, size, arms, repeats, warmup, dev, seed, log, compile=compile, fused=fused, watch=watch,
                        steps_per_round=steps_per_round)
        others.append(watch.get("others_cpu"))
        method = "torch.cuda.max_memory_allocated - memory_allocated around a steady-state step"
        if dev.type == "cpu":
            if memory:
                log(f"[{m}] peak step memory: probe process")
                mem, method = cpu_memory(m, size, arms, seed, compile, fused)
            else:
                mem, method = {a: None for a in arms}, "not measured (--no-memory)"
            for a in arms:
                raw[a]["peak_step_memory_bytes"] = mem[a]
        result["models"][m] = {"config": SIZES[size][m], "unit": UNITS[m], "memory_method": method,
                               "others_cpu": others[-1], "arms": summarize(raw, clock=clock)}
    result["load_after"] = machine.load_average()
    result["others_cpu"] = others
    result["busy"] = busy_reason(load_before, others, max_load)
    result["targets"] = evaluate_targets(result["models"], result["busy"])
    result["wall_time_s"] = round(time.time() - t0, 1)
    log(f"load average after: {result['load_after']} (includes this run); other processes' CPU during the timed "
        f"rounds: {cores_text(others)} cores")
    if result["busy"]:
        log(f"NOT A VALID TIMING: {result['busy']}; every time ratio is refused -- rerun on a quiet machine")
    if out_dir is not None:
        write_outputs(out_dir, "overhead", result, markdown(result), log)
    return result


# ---------------------------------------------------------------------------------------------
# report


def _f(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def target_table(result: dict) -> str:
    lines = ["| target | model | metric | limit | measured ratio | paired IQR | status |", "|---|---|---|---|---|---|---|"]
    for t in result["targets"]:
        if t["status"] == "refused":  # the ratio is not reported, only why
            lines.append(f"| `{t['target']}` | {t['model']} | {t['metric']} | ≤ {t['limit']:.2f}× | — | "
                         f"{_f(t.get('paired_iqr'), '.3f')} | refused: {t['refused']} |")
            continue
        status = {"pass": "pass", "miss": "**miss**", None: "—"}[t["status"]]
        ratio = "—" if t["ratio"] is None else f"{t['ratio']:.3f}×"
        lines.append(f"| `{t['target']}` | {t['model']} | {t['metric']} | ≤ {t['limit']:.2f}× | "
                     f"{ratio} | {_f(t.get('paired_iqr'), '.3f')} | {status} |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    dev = result["device"]
    clock = result.get("clock", "wall")
    other = next(c for c in CLOCKS if c != clock)
    parts = [f"# Connection overhead ({dev}, size {result['size']}, {result.get('path', 'eager')})\n",
             f"`{result['command']}` — git {result['git']}, {result['machine'].get('platform', '')}, "
             f"torch {result['machine'].get('torch', '')}, {result.get('threads', '?')} thread(s); "
             f"{result['warmup']} warm-up + {result['repeats']} interleaved rounds of "
             f"{result.get('steps_per_round', 1)} step(s) per arm; wall {result['wall_time_s']} s.\n",
             f"One step = zero_grad + forward + loss + backward + AdamW step, timed on the **{clock}** clock "
             f"({CLOCK_TEXT[clock]}). Ratios are to `residual` in the same run: *time ×* is the ratio of medians, "
             f"*paired* the median [IQR] of per-round ratios (a noise gauge), *{other} ×* the ratio of medians on "
             f"the other clock.\n",
             f"Machine: {hygiene_line(result)}\n"]
    if result.get("busy"):
        parts.append(f"**Not a valid timing: {result['busy']}.** Every time target is refused; rerun on a quiet "
                     f"machine.\n")
    for m, res in result["models"].items():
        unit = res["unit"]
        cfg = ", ".join(f"{k}={v}" for k, v in res["config"].items())
        parts.append(f"## {m} ({cfg})\n\nPeak step memory: {res['memory_method']}.\n")
        rows = ["| connection | params | extra | step ms (median) | " + unit + "/s | time × | paired [IQR] | "
                f"{other} × | throughput × | peak step MB | memory × |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        refused = {t["arm"] for t in result["targets"] if t["model"] == m and t["status"] == "refused"}
        for a, r in res["arms"].items():
            mem = r["peak_step_memory_bytes"]
            ratio = "refused" if a in refused else f"{r['time_ratio']:.3f}"  # its target's row says why
            rows.append(
                f"| `{a}` | {r['params']:,} | {r['extra_params']:+,} | {1000 * r['time_s_median']:.1f} | "
                f"{r['throughput']:,.0f} | {ratio} | {r['time_ratio_paired_median']:.3f} "
                f"[{r['time_ratio_paired_q1']:.3f}, {r['time_ratio_paired_q3']:.3f}] | {r[f'time_ratio_{other}']:.3f} | "
                f"{r['throughput_ratio']:.3f} | "
                f"{_f(None if mem is None else mem / 2**20, '.1f')} | {_f(r['memory_ratio'], '.3f')} |")
        parts.append("\n".join(rows) + "\n")
    parts.append("## Targets (ratio to `residual`)\n")
    if dev != "cpu":
        parts.append(f"(the targets are stated for CPU; these numbers are from {dev})\n")
    parts.append(target_table(result))
    ref = ", ".join(f"`{k}` {v:.2f}×" for k, v in PUBLISHED_THROUGHPUT.items())
    parts.append(f"\nFor reference, a published unified LM benchmark measured throughput relative to pre-norm of {ref}.\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# command line


def _cmd(args) -> int:
    if args.table_from:
        from .overhead_runs import combined_table, load_run
        from .scoreboard import commit_order

        root = Path.cwd()  # git history of the checkout the command runs in; 0 (order given) outside one
        print(combined_table([load_run(f) for f in args.table_from], lambda r: commit_order(r.get("git"), root)))
        return 0
    set_threads(args.threads)  # the memory probe process inherits it through OMP_NUM_THREADS
    models = list(MODELS) if args.model in ("both", "all") else [args.model]
    connections = None
    if args.connections:
        from ..connections.registry import split_top

        connections = split_top(args.connections)
    if refuse_if_busy(args.max_load, args.busy_ok, "every time ratio is then refused"):
        return 3
    max_load = None if args.max_load < 0 else args.max_load
    result = run_overhead(models, args.size, args.repeats, args.warmup, connections, args.device,
                          memory=args.memory, seed=args.seed, out_dir=args.out, command=bench_command(),
                          clock=args.clock, compile=compile_choice(args), fused=args.fused, max_load=max_load,
                          steps_per_round=args.steps_per_round)
    print()
    print("Machine: " + hygiene_line(result))
    print(target_table(result))
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("overhead", help="time / throughput / peak memory / params of every connection "
                                               "against residual (interleaved, medians)")
    p.add_argument("--model", choices=(*MODELS, "both", "all"), default="all",
                   help="one family, or all of them (both: an old spelling of all)")
    p.add_argument("--size", choices=tuple(SIZES), default="default")
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed rounds per arm (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed interleaved rounds first (default 2)")
    p.add_argument("--steps-per-round", type=int, default=1,
                   help="consecutive steps per arm in each round, timed as one sample (their mean): narrows the "
                        "paired IQR where single steps jitter (default 1)")
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
    p.add_argument("--compile", action="store_true",
                   help="time torch.compile(model) (default arms: residual + the targets' arms; inductor on CPU "
                        "compiles for minutes)")
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # aot_eager: fast, for tests
    p.add_argument("--fused", action="store_true",
                   help="the opt-in fused stream sums (reslab.connections.fused(True)) instead of the plain expressions")
    p.add_argument("--max-load", type=float, default=MAX_LOAD,
                   help=f"refuse timings above this load average / others' CPU in cores (default {MAX_LOAD}; "
                        "negative: no check)")
    p.add_argument("--table-from", nargs="+", metavar="OVERHEAD_JSON", default=None,
                   help="measure nothing: print one table (a row per scheme, a column per family and run) from "
                        "the given overhead.json files, e.g. the eager and the compiled run, for the README")
    p.add_argument("--busy-ok", action="store_true",
                   help="measure on a busy machine anyway (the time ratios are then refused, memory still reported)")
    p.set_defaults(func=_cmd)


def _probe_main(argv: list[str]) -> int:
    """``python -m reslab.bench.overhead --probe JSON``: the CPU memory probe process."""
    if len(argv) != 2 or argv[0] != "--probe":
        print("usage: python -m reslab.bench.overhead --probe '{\"model\": ..., \"size\": ..., \"arms\": [...]}'\n"
              "(internal; use `reslab bench overhead`)", file=sys.stderr)
        return 2
    job = json.loads(argv[1])
    try:
        mem = probe_memory(job["model"], job["size"], job["arms"], job.get("seed", 0), job.get("method", "hwm"),
                           job.get("compile", False), job.get("fused", False))
    except OSError as e:
        print(f"memory probe: {e}", file=sys.stderr)
        return 1
    print(json.dumps(mem))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
