"""Patched Hugging Face models under the engines users scale with: the HF Trainer with DDP, and FSDP2.
Two gloo processes on CPU (tests/distributed/patched_hf.py does the training)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
SCRIPT = Path(__file__).parent / "distributed" / "patched_hf.py"
pytestmark = pytest.mark.slow


def torchrun(mode: str, spec: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           mode, spec, str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_hf_trainer_ddp_keeps_connection_parameters_identical_across_ranks(tmp_path):
    torchrun("trainer", "ancre(tau=0.1)", tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys() and "logits" in r0
    assert r0["logits"].abs().sum() > 0  # it trained: the logits left their zero init
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


def test_fsdp2_fully_shard_of_a_patched_model_trains(tmp_path):
    torchrun("fsdp2", "laurel(rw, lr, rank=4)", tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in (r0, r1))
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert r0["params"]["lr_B"].abs().sum() > 0  # the low-rank maps moved off B = 0
