"""A damaged or foreign checkpoint is refused with a message that says what it is and what to do, nothing is
loaded from it, and the files of the run are left as they were. Also: the out_dir lock and stale temp files."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from reslab.checkpoint import CheckpointError, RunLocked, load_checkpoint
from reslab.cli import main
from reslab.train import TrainConfig, train

TINY = dict(task="teacher", task_args={"in_dim": 4, "out_dim": 1, "n_train": 64, "n_val": 32, "width": 8},
            model="mlp", model_args={"width": 8, "n_blocks": 2}, batch_size=8, warmup_steps=1, eval_every=4,
            eval_batches=1, log_every=1, progress=False, tensorboard=False, threads=1)
MARKER = "reslab-pwned"


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One 8-step run, trained once for the module; each test copies it."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(TrainConfig(**TINY, steps=8, out_dir=str(out)))
    return out


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def snapshot(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}


def corrupt(kind: str, ckpt: Path) -> None:
    data = ckpt.read_bytes()
    if kind == "truncated":
        ckpt.write_bytes(data[:len(data) // 2])
    elif kind == "random bytes":
        ckpt.write_bytes(os.urandom(4096))
    elif kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "malicious pickle":
        ckpt.write_bytes(pickle.dumps({"model": Evil()}))
    elif kind == "malicious torch file":
        import torch

        torch.save({"model": Evil(), "step": 8}, ckpt)
    elif kind == "not a reslab checkpoint":
        import torch

        torch.save({"weight": torch.zeros(3)}, ckpt)


@pytest.mark.parametrize("kind, message", [
    ("truncated", "corrupt or truncated"),
    ("random bytes", "corrupt or truncated"),
    ("empty", "corrupt or truncated"),
    ("malicious pickle", "not a reslab checkpoint"),
    ("malicious torch file", "is not a reslab checkpoint: it holds Python objects"),
    ("not a reslab checkpoint", "was not written by reslab"),
])
def test_damaged_checkpoint_is_refused_and_nothing_is_touched(finished, tmp_path, monkeypatch, capsys, kind, message):
    monkeypatch.chdir(tmp_path)
    run = copy_run(finished, tmp_path / "run")
    corrupt(kind, run / "checkpoint.pt")
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=message) as e:
        train(TrainConfig(**TINY, steps=12, out_dir=str(run)))
    text = str(e.value)
    assert "weights_only" not in text and "start the run afresh" in text and str(run) in text
    assert snapshot(run) == before  # the refused resume wrote nothing, not even a log
    assert not (tmp_path / MARKER).exists()  # nothing in the file was executed
    # the CLI says the same in one line, exit 2
    assert main(["train", "--task", "teacher", "--model", "mlp", "--out-dir", str(run), "steps=12",
                 *[f"task.{k}={v}" for k, v in TINY["task_args"].items()],
                 *[f"model.{k}={v}" for k, v in TINY["model_args"].items()],
                 "batch_size=8", "progress=false", "tensorboard=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.split(":")[0] in err[0] and "Traceback" not in err[0]
    assert snapshot(run) == before


def test_checkpoint_of_another_run_is_refused_untouched(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="different run.*seed: 0 there vs 3 now"):
        train(TrainConfig(**TINY, steps=12, seed=3, out_dir=str(run)))
    assert snapshot(run) == before


def test_resume_with_fewer_steps_is_refused_more_steps_continue(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(ValueError, match="trained to step 8, more than steps=4.*steps >= 8"):
        train(TrainConfig(**TINY, steps=4, out_dir=str(run)))
    assert snapshot(run) == before
    s = train(TrainConfig(**TINY, steps=10, out_dir=str(run)))
    assert s["steps"] == 10 and load_checkpoint(run / "checkpoint.pt")["step"] == 10


def test_stale_temp_files_of_dead_writers_are_removed(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs (as after SIGKILL mid-write)
    stale = run / f".checkpoint.pt.tmp{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    alive = run / f".checkpoint.pt.tmp{os.getppid()}"  # a writer that still runs: not ours to delete
    alive.write_bytes(b"in progress")
    train(TrainConfig(**TINY, steps=10, out_dir=str(run)))
    assert not stale.exists() and alive.exists()
    assert not [p for p in run.iterdir() if ".tmp" in p.name and p != alive]


def test_a_failed_checkpoint_write_leaves_no_temp_file(tmp_path, monkeypatch):
    import torch

    from reslab.checkpoint import save_checkpoint

    def boom(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "checkpoint.pt", {"x": 1})
    assert list(tmp_path.iterdir()) == []


def test_out_dir_held_by_a_live_run_is_refused(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{holder.pid} {os.uname().nodename}\n")
        before = snapshot(run)
        with pytest.raises(RunLocked, match=f"in use by another reslab run \\(pid {holder.pid}"):
            train(TrainConfig(**TINY, steps=10, out_dir=str(run)))
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    s = train(TrainConfig(**TINY, steps=10, out_dir=str(run)))  # its owner is gone: the lock is stale
    assert s["steps"] == 10 and not (run / ".lock").exists()
