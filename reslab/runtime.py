"""Process-wide settings for CPU training that change how fast a run goes, never what it computes.

glibc's malloc returns large freed blocks to the kernel: a block above the mmap threshold (128 KiB at start,
raised up to 32 MiB as blocks are freed) gets its own mapping and is unmapped on free, and the top of the heap is
trimmed once more than the trim threshold is free. A training step frees and reallocates the same
activation-sized blocks every step, so each step faults their pages in again. On this project's VM a fresh
8 MB tensor costs ~1.3 ms against ~0.27 ms when the blocks are kept, and a whole ResNet-20 step took 0.22 s
instead of 0.15 s (results/bench-overhead/NOTES.md, "malloc and page faults"). :func:`tune_malloc` keeps them:
mmap and trim thresholds of 1 GiB, so blocks below that come from the heap and freed memory stays there for the
next step. The cost: the process holds on to its peak heap instead of returning it between steps.

The command line calls it once at start (``reslab train``, ``compare``, ``reproduce``, ``bench``, ...), and
``reslab compare --jobs`` in each worker. Library users who run their own loop can call it themselves. It
changes nothing when the user already chose (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the
environment, e.g. the memory probe of ``reslab bench overhead``, which needs the opposite), when
``RESLAB_MALLOC=default``, or off glibc.

:func:`compile_model` is ``torch.compile`` with room for many models in one process. Dynamo caches compiled code
per Python function, and every model of one family shares its class's ``forward``: each scheme (a different
connection type in the same ``GPT.forward``) adds an entry, and past ``torch._dynamo.config.recompile_limit``
(8) dynamo warns once and runs every *new* guard set of that function eagerly (the entries compiled before stay in
use). ``reslab compare --connections all compile=true`` (14 schemes) and ``reslab bench overhead --compile``
(10 arms) passed it silently: on an H200 some arms ran eager (by their step times: rezero and mhc at 1.7x and 16x
compiled residual's step, results/gpu-smoke/NOTES.md). The raised limit holds for the rest of the process.
"""
from __future__ import annotations

import ctypes
import os
import sys

MALLOC_SWITCH = "RESLAB_MALLOC"  # "default": leave malloc as it is
KEEP_BELOW = 1 << 30  # bytes: blocks below this come from the heap, and the heap keeps this much free memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_state: str | None = None  # what tune_malloc did in this process: "tuned", or why not


def tune_malloc() -> bool:
    """Keep freed blocks below 1 GiB in the heap for reuse (glibc only; see the module docstring). Returns
    whether this process now runs with those settings; safe to call more than once."""
    global _state
    if _state is None:
        _state = _tune()
    return _state == "tuned"


def malloc_state() -> str:
    """``"tuned"``, or why malloc was left as it is (for benchmark reports); ``"not set"`` before any call."""
    return _state or "not set"


def _tune() -> str:
    if os.environ.get(MALLOC_SWITCH, "").strip().lower() == "default":
        return f"default ({MALLOC_SWITCH}=default)"
    chosen = [k for k in _USER_SETTINGS if k in os.environ]
    if chosen:
        return f"default (the environment sets {chosen[0]})"
    if not sys.platform.startswith("linux"):
        return "default (not Linux)"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default (not glibc)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_TRIM_THRESHOLD, KEEP_BELOW) == 1 and mallopt(_M_MMAP_THRESHOLD, KEEP_BELOW) == 1
    return "tuned" if ok else "default (mallopt refused)"


RECOMPILE_LIMIT = 64  # compiled entries per function: room for every registered scheme, each at a few shapes


def compile_model(model, backend="inductor"):
    """``torch.compile(model, backend=backend)`` after raising dynamo's per-function recompile limit to
    :data:`RECOMPILE_LIMIT` (never lowering a larger one the user set), so that the N-th model of a family
    compiled in this process is compiled too instead of silently running eager (see the module docstring)."""
    import torch
    import torch._dynamo.config as dynamo_config

    _check_cpu_compiler(model, backend)
    # recompile_limit since torch 2.6; cache_size_limit before (and still an alias of it)
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))
    if hasattr(dynamo_config, "accumulated_recompile_limit"):  # the limit over all functions (256)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit,
                                                        8 * RECOMPILE_LIMIT)
    return torch.compile(model, backend=backend)


def _check_cpu_compiler(model, backend: str) -> None:
    """Inductor builds C++ kernels for CPU tensors. Without a C++ compiler it fails at the first forward pass,
    deep inside dynamo, after the data and model are built; say so before, in one line, with the fix."""
    import os

    import torch._dynamo.config as dynamo_config

    if backend != "inductor" or os.environ.get("TORCHDYNAMO_DISABLE") == "1" or dynamo_config.disable:
        return  # torch's own switches make torch.compile a no-op: nothing is built
    first = next(iter(model.parameters()), None)
    if first is None or first.device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: let inductor report it
        return
    try:
        get_cpp_compiler()
    except RuntimeError as e:  # torch._inductor.exc.InvalidCxxCompiler
        raise ValueError(f"compile=true on CPU needs a C++ compiler for torch.compile's inductor backend ({e}); "
                         "install one (e.g. `apt install g++`, or set CXX) or drop compile=true") from None
