"""reslab.runtime.tune_malloc: kept freed blocks (observable as resident memory after a free), the opt-outs,
and the command line applying it. Each case runs in a fresh interpreter: mallopt is process-wide."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# allocate and touch 64 MB, free it, report (what tune_malloc did, resident MB kept after the free)
PROBE = """
import json, sys
from reslab.runtime import malloc_state, tune_malloc
tuned = tune_malloc() if sys.argv[1] == "call" else None
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import torch
before = rss_mb()
x = torch.ones(16 * 2**20)  # 64 MB, every page touched
del x
print(json.dumps({"tuned": tuned, "state": malloc_state(), "kept_mb": rss_mb() - before}))
"""

glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/status").exists(),
                                 reason="mallopt and /proc are glibc/Linux")


def _probe(call: bool, **env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("RESLAB_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", PROBE, "call" if call else "skip"], capture_output=True, text=True,
                         env=clean | env, cwd=ROOT, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_linux
def test_tuned_malloc_keeps_a_freed_block_that_the_default_returns_to_the_kernel():
    default, tuned = _probe(False), _probe(True)
    assert default["state"] == "not set" and default["kept_mb"] < 16, default  # unmapped on free
    assert tuned["tuned"] is True and tuned["state"] == "tuned"
    assert tuned["kept_mb"] > 48, tuned  # still resident: the next step reuses it without page faults


@glibc_linux
@pytest.mark.parametrize("env, why", [({"RESLAB_MALLOC": "default"}, "RESLAB_MALLOC=default"),
                                      ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_")])
def test_the_users_choice_wins(env, why):
    r = _probe(True, **env)
    assert r["tuned"] is False and why in r["state"] and r["state"].startswith("default")
    assert r["kept_mb"] < 16, r


@glibc_linux
def test_the_command_line_tunes_malloc_at_start():
    code = "import sys; from reslab import cli, runtime; cli.main(sys.argv[1:]); print(runtime.malloc_state())"
    out = subprocess.run([sys.executable, "-c", code, "connections"], capture_output=True, text=True, cwd=ROOT,
                         env={k: v for k, v in os.environ.items() if k != "RESLAB_MALLOC"})
    assert out.stdout.strip().splitlines()[-1] == "tuned", out.stdout + out.stderr
