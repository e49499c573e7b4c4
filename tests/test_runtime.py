"""reslab.runtime.tune_malloc: kept freed blocks (observable as resident memory after a free), the opt-outs,
and the command line applying it. Each case runs in a fresh interpreter: mallopt is process-wide."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


# Nine GPTs of nine schemes compiled in one process (dynamo's default limit is 8 compiled entries per function:
# every scheme is a new entry of GPT.forward). Prints the models whose forward dynamo gave up on (it logs
# "recompile_limit" once, then runs that function eagerly) and how many graphs the backend was handed.
COMPILE_PROBE = """
import json, logging, sys, torch
from reslab.models import build_model
from reslab.runtime import compile_model
hits = []
class Catch(logging.Handler):
    def emit(self, record):
        if "recompile_limit" in record.getMessage() or "cache_size_limit" in record.getMessage():
            hits.append(current)
logging.getLogger("torch._dynamo").addHandler(Catch())
graphs = []
def counting(gm, example_inputs):
    graphs.append(current)
    return gm.forward
schemes = ["residual", "plain", "scaled", "rezero", "skipinit", "layerscale", "laurel(rw)", "ancre", "denseformer"]
info = {"vocab_size": 11, "block_size": 8}
for current in schemes:
    torch.manual_seed(0)
    net = build_model("gpt", info, connection=current, n_layer=2, d_model=16, n_head=2)
    wrapped = compile_model(net, backend=counting) if sys.argv[1] == "reslab" else torch.compile(net, backend=counting)
    wrapped(torch.randint(0, 11, (2, 8)))
print(json.dumps({"gave_up": hits, "compiled": sorted(set(graphs), key=schemes.index)}))
"""


def _compile_probe(how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", COMPILE_PROBE, how], capture_output=True, text=True, cwd=ROOT,
                         timeout=600, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compile_model_compiles_every_scheme_of_a_family_in_one_process():
    """compile_model leaves room for every scheme: all nine models' forwards reach the backend and dynamo never
    gives up. The control, plain torch.compile, shows the failure it prevents (the ninth runs eager)."""
    ours = _compile_probe("reslab")
    assert ours["gave_up"] == [], ours
    assert len(ours["compiled"]) == 9, ours
    plain = _compile_probe("torch")
    assert plain["gave_up"] == ["denseformer"], plain  # the 9th entry of GPT.forward: over the default limit of 8


def test_trainer_and_bench_compile_through_compile_model(tmp_path, monkeypatch):
    """compile=true in the Trainer and --compile in the overhead bench go through runtime.compile_model (a plain
    torch.compile there would bring back the silent eager fallback past dynamo's limit)."""
    import reslab.runtime as runtime
    from reslab.bench.overhead import _compiled
    from reslab.train import TrainConfig, train

    calls = []
    monkeypatch.setattr(runtime, "compile_model", lambda model, backend="inductor": calls.append(backend) or model)
    cfg = TrainConfig(task="teacher", task_args={"in_dim": 4, "out_dim": 1, "n_train": 64, "n_val": 32, "width": 8},
                      model="mlp", model_args={"width": 8, "n_blocks": 1}, steps=2,
                      batch_size=4, eval_every=2, eval_batches=1, compile=True, out_dir=str(tmp_path / "run"),
                      progress=False, tensorboard=False)
    assert train(cfg)["status"] == "completed"
    net = torch.nn.Linear(2, 2)
    assert _compiled(net, False) is net and _compiled(net, "aot_eager") is net
    assert calls == ["inductor", "aot_eager"]


def test_compile_on_cpu_without_a_cpp_compiler_says_so_in_one_line(monkeypatch):
    """Inductor needs a C++ compiler for CPU kernels; without one compile_model refuses up front with the fix,
    instead of a dynamo traceback at the first forward pass. Other backends and a found compiler pass."""
    import torch._inductor.cpp_builder as cpp_builder

    from reslab.runtime import compile_model

    def missing():
        raise torch._inductor.exc.InvalidCxxCompiler()

    net = torch.nn.Linear(2, 2)
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(ValueError, match=r"compile=true on CPU needs a C\+\+ compiler .*apt install g\+\+"):
        compile_model(net)
    compile_model(net, backend="aot_eager")  # needs no compiler
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "g++")
    compile_model(net)  # found: torch.compile wraps it (compiles lazily)
