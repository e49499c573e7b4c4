"""What every ``reslab bench`` records about the machine and refuses on: CPU, cores, threads, load, others' CPU.

A timing is worth reporting only from a quiet machine, so every bench prints the machine and the load average
before and after, measures the CPU time *other* processes took while it timed (:class:`OthersCPU`), and refuses a
ratio when either is above :data:`MAX_LOAD` (:func:`busy_reason`, :func:`refuse_if_busy`).
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import torch

MAX_LOAD = 0.5  # load average (and others' CPU, in cores) above which timings are refused


def bench_command() -> str:
    """The ``reslab bench ...`` command line that started this process ("" when called from Python)."""
    return "reslab " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""


def set_threads(threads: int) -> None:
    """``--threads``: 0 keeps torch's default; otherwise torch's and OMP_NUM_THREADS (child processes inherit it)."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 keeps torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores_text(others) -> str:
    """Other processes' CPU per measurement, in cores ('—' where it could not be read)."""
    return ", ".join("—" if o is None else f"{o:.2f}" for o in others)


def refuse_if_busy(max_load: float, busy_ok: bool, consequence: str) -> bool:
    """The bench CLIs' gate: True (after saying why on stderr) when the load average is above ``max_load``
    (negative: no gate) and ``busy_ok`` was not given; ``consequence`` says what --busy-ok would mean."""
    load = load_average()
    if max_load < 0 or load is None or load <= max_load or busy_ok:
        return False
    print(f"load average {load:.2f} > {max_load}: this machine is busy, timings would not be valid. Rerun on a "
          f"quiet machine (or pass --busy-ok to measure anyway: {consequence})", file=sys.stderr)
    return True


def write_outputs(out_dir, stem: str, result: dict, markdown_text: str, log=print) -> None:
    """``<stem>.json`` (atomically) and ``<stem>.md`` in ``out_dir``."""
    from ..checkpoint import atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", result)
    (out / f"{stem}.md").write_text(markdown_text)
    log(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine_info() -> dict:
    """Machine, cores, torch's threads and the load average now: printed and recorded by every bench."""
    from ..runtime import malloc_state
    from ..train import machine

    return machine() | {"cpu_model": cpu_model(), "threads": torch.get_num_threads(), "load_average": load_average(),
                        "malloc": malloc_state()}  # the timed process's; the memory probe's is always mmap-per-block


def busy_seconds() -> float | None:
    """CPU time (s) all processes spent busy since boot: /proc/stat's first line without idle and iowait."""
    try:
        with open("/proc/stat") as fh:
            f = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (sum(f[:8]) - f[3] - f[4]) / hz  # user nice system idle iowait irq softirq steal


class OthersCPU:
    """Cores' worth of CPU that *other* processes used between ``start()`` and ``stop()``: the machine's busy
    time minus this process's own CPU time (all its threads), over the elapsed time. None without /proc/stat."""

    def start(self) -> "OthersCPU":
        self.t0, self.own0, self.busy0 = time.perf_counter(), time.process_time(), busy_seconds()
        return self

    def stop(self) -> float | None:
        busy = busy_seconds()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        own = time.process_time() - self.own0
        return round(max(0.0, (busy - self.busy0) - own) / max(wall, 1e-9), 3)


def busy_reason(load_before: float | None, others: list[float | None], max_load: float | None) -> str | None:
    """Why the machine does not count as quiet (None: quiet, or no limit asked for)."""
    if max_load is None:
        return None
    if load_before is not None and load_before > max_load:
        return f"load average {load_before:.2f} > {max_load} before the run"
    worst = max((o for o in others if o is not None), default=None)
    if worst is not None and worst > max_load:
        return f"other processes used {worst:.2f} cores during the timed rounds (> {max_load})"
    return None


def hygiene_line(result: dict) -> str:
    """Machine, threads, load before/after, others' CPU: the line every bench report starts with."""
    m = result["machine"]
    others = cores_text(result.get("others_cpu", []))
    return (f"{m.get('cpu_model', '?')}, {m.get('cpus', '?')} cores, {result.get('threads', '?')} torch thread(s); "
            f"load average {result.get('load_before')} before, {result.get('load_after')} after (the latter "
            f"includes this run); other processes' CPU during the timed rounds: {others or '—'} cores"
            + (f"; malloc {m['malloc']} (reslab/runtime.py)." if m.get("malloc") else "."))
