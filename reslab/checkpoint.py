"""What a run writes must survive a crash: atomic writes, checkpoints, and the lock on a run's folder.

Every file goes to a temp file in the same folder and is renamed over the target (``os.replace``), so a reader
sees the old file or the new one, never half of one; a writer killed mid-write leaves a temp file named after its
pid, removed by the next run (:func:`remove_stale_temp_files`). Checkpoints are read with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import socket
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (corrupt, truncated, or not written by reslab)."""


class RunLocked(RuntimeError):
    """Another live process is training into the same out_dir."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:  # an exception or Ctrl-C mid-write: no temp file left behind
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file in the same folder, then an atomic rename: a crash mid-write never
    leaves a truncated checkpoint behind."""
    tmp = _tmp_name(path)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Temp files ``.NAME.tmp<PID>`` left by a writer that was killed (SIGKILL cannot be caught), i.e. whose
    process no longer runs. Returns what was removed."""
    removed = []
    for p in folder.glob(".*.tmp*"):
        m = re.fullmatch(r"\..+\.tmp(\d+)", p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class OutDirLock:
    """``out_dir/.lock`` holds the pid (and host) of the process training there. A second run into the same
    folder -- e.g. a resume started while the workers of a killed ``torchrun`` launcher still train -- gets
    a clear error instead of both writing the same checkpoint and logs. A lock whose process is gone is stale
    and taken over."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.held = False

    def acquire(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _pid_alive(owner):
                    raise RunLocked(f"{self.path.parent} is in use by another reslab run (pid {owner}, lock file "
                                    f"{self.path}); wait for it or stop it (kill {owner}), or use another out_dir. "
                                    f"If no such run exists, delete {self.path}")
                self.path.unlink(missing_ok=True)  # stale: its process is gone (or it is our own leftover)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return
        raise RunLocked(f"could not take the lock {self.path}: another process keeps creating it")

    def _owner(self) -> int | None:
        try:
            text = self.path.read_text().split()
            host = text[1] if len(text) > 1 else socket.gethostname()
            return int(text[0]) if host == socket.gethostname() else -1
        except (OSError, ValueError, IndexError):
            return None  # empty or half-written: treat as stale

    def release(self) -> None:
        if self.held and self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


_CKPT_KEYS = ("model", "optimizer", "generator", "torch_rng", "step", "config")


#: settings that define a run: resuming with any of them changed would silently mix two experiments
_IDENTITY = ("task", "task_args", "model", "model_args", "connection", "seed", "batch_size", "optimizer")


def load_checkpoint(path: Path, cfg=None) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, read with ``weights_only=True``; with ``cfg`` (a
    :class:`reslab.train.TrainConfig`), also checked to belong to the same run (the settings in ``_IDENTITY``).
    Raises :class:`CheckpointError` with a one-line fix on anything else."""
    fix = "delete it, pass resume=false, or use a new out_dir to start the run afresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's text suggests weights_only=False: never for a stranger's file
        if "global" not in str(e).lower():
            raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated, or not a reslab "
                                  f"checkpoint: {fix}") from None
        raise CheckpointError(f"{path} is not a reslab checkpoint: it holds Python objects other than tensors and "
                              f"plain values, which reslab refuses to load (loading them could run code): {fix}") from None
    except Exception as e:  # truncated, random bytes, not a zip/pickle at all
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated, or not a reslab "
                              f"checkpoint ({type(e).__name__}): {fix}") from None
    missing = [k for k in _CKPT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by reslab's trainer: {fix}")
    if cfg is not None:
        saved = json.loads(state["config"])
        now = cfg.to_dict()
        defaults = type(cfg)().to_dict()  # a checkpoint older than a field holds its default
        diff = [k for k in _IDENTITY if saved.get(k, defaults[k]) != now[k]]
        if diff:
            detail = ", ".join(f"{k}: {saved.get(k)!r} there vs {now[k]!r} now" for k in diff)
            raise CheckpointError(f"checkpoint {path} belongs to a different run ({detail}): {fix}")
    return state
