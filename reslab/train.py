"""The Trainer: one readable loop, top to bottom (nanoGPT-like), shared by every task and model.

What a run guarantees:
- AdamW (default) or SGD with momentum (``optimizer="sgd"``: ``momentum``, ``nesterov`` off by default, L2
  weight decay coupled as in torch.optim.SGD) with parameter groups: matrices decay; biases, norm gains,
  embeddings' 1-D parts and every *connection* parameter do not (weight decay would pull learned mixing
  coefficients back to zero), and connection parameters get ``connection_lr_mult``.
- Linear warmup then cosine decay to ``min_lr_ratio * lr``; gradient clipping (``grad_clip=0``: none).
- Evaluation on a fixed set of validation batches (the same for every run of a comparison).
- ``metrics.jsonl`` (one row per logged step / eval) and ``summary.json`` per run; TensorBoard when
  installed; a tqdm progress bar.
- Atomic checkpoints (write to a temp file, then ``os.replace``: :mod:`reslab.checkpoint`) and exact resume:
  model, optimizer, the batch generator's and torch's RNG states and the step are restored, and log rows
  written after the checkpoint are dropped, so a run killed with SIGKILL and resumed logs the same losses as
  an uninterrupted one. Checkpoints are read with ``weights_only=True``.
- A NaN/inf loss, or a loss that explodes past ``divergence_factor`` x the first loss, stops the run
  with :class:`TrainingDiverged` and a message that says what to try.
- Device auto-selection (cuda, mps, cpu), bf16 autocast on CUDA, optional ``torch.compile``, and DDP
  when launched by ``torchrun`` (gloo on CPU, nccl on CUDA): every rank draws the same global batch
  from the shared generator and trains on its own slice, so the loss matches one process at equal
  global batch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import statistics
import sys
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import (OutDirLock, atomic_write_bytes, atomic_write_json, load_checkpoint, remove_stale_temp_files,
                         save_checkpoint)
from .connections import Connection
from .data import get_task
from .models import build_model


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the message says at which step and what to try."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped at a step boundary and saved a checkpoint there; the message says what was kept."""

    def __init__(self, message: str, out_dir: str = "", step: int = 0):
        super().__init__(message)
        self.out_dir, self.step = out_dir, step

    def __str__(self) -> str:
        return self.args[0]


OPTIMIZERS = ("adamw", "sgd")
# Where AdamW runs as torch's fused kernel (one pass over all parameters instead of ~10 small ops per tensor).
# "always": on CPU and CUDA, the devices that have it; on CPU it takes the GPT bench step's optimiser from
# ~4.8 to ~0.9 ms (results/bench-trainer/NOTES.md), and its values differ from the per-tensor loop in the last
# bit. "cuda": fused on CUDA only, torch's per-tensor loop elsewhere: what every run before December 2026 used,
# so the experiments keep it and their committed runs reproduce bit for bit. "never": torch's default.
FUSED_ADAMW = ("always", "cuda", "never")


@dataclass
class TrainConfig:
    # what to train
    task: str = "shakespeare"
    task_args: dict = field(default_factory=dict)
    model: str = "gpt"
    model_args: dict = field(default_factory=dict)
    connection: str = "residual"
    # optimisation
    optimizer: str = "adamw"  # adamw | sgd
    steps: int = 1000
    batch_size: int = 32  # global batch (split across DDP ranks)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    grad_clip: float = 1.0  # 0 disables clipping
    fused_adamw: str = "always"  # always | cuda | never: see FUSED_ADAMW
    connection_lr_mult: float = 1.0
    # evaluation and logging
    eval_every: int = 100
    eval_batches: int = 10
    log_every: int = 10
    # bookkeeping
    seed: int = 0
    out_dir: str = "runs/train"
    checkpoint_every: int = 0  # 0: only at the end of the run
    resume: bool = True  # continue from out_dir/checkpoint.pt when it exists
    divergence_factor: float = 20.0  # stop when loss > factor x first loss (0 disables)
    # execution
    device: str = "auto"
    compile: bool = False
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        problems = _type_problems(self)
        if problems:  # comparisons below would raise TypeError on a string or a list
            raise ValueError("bad training config: " + "; ".join(problems))
        for name in ("steps", "batch_size", "eval_batches", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "checkpoint_every", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})")
        if self.fused_adamw not in FUSED_ADAMW:
            problems.append(f"fused_adamw must be one of {', '.join(FUSED_ADAMW)} (got {self.fused_adamw!r})")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1) (got {self.momentum})")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            problems.append("nesterov needs optimizer=sgd and momentum > 0")
        if self.grad_clip < 0:
            problems.append(f"grad_clip must be >= 0, 0 disabling clipping (got {self.grad_clip})")
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            problems.append(f"device must be auto, cpu, cuda, cuda:N or mps (got {self.device!r})")
        if problems:
            raise ValueError("bad training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_KIND_WORD = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a table of key = value"}


def _type_problems(cfg: TrainConfig) -> list[str]:
    """Each field must have its default's type (an int is fine where a float is due; a bool is not an int)."""
    problems = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = type(f.default) if f.default is not dataclasses.MISSING else dict
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, kind) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
        if not ok:
            problems.append(f"{f.name} expects {_KIND_WORD[kind]}, got {value!r}")
        elif kind is dict and not all(isinstance(k, str) for k in value):
            problems.append(f"{f.name} keys must be names, got {sorted(map(repr, value))}")
    return problems


# ---------------------------------------------------------------------------------------------
# small pieces


def pick_device(name: str = "auto") -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device={name!r} but {why}; use --device cpu (or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ValueError("device='mps' but MPS is not available on this machine; use --device cpu (or auto)")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from 1 down to ``min_lr_ratio`` at ``steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def connection_parameters(model: nn.Module) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, Connection):
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Three groups: decayed matrices, undecayed vectors/scalars, connection parameters (no decay, lr mult)."""
    conn_ids = {id(p) for p in connection_parameters(model)}
    decay, no_decay, conn = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in conn_ids:
            conn.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"name": "connection", "params": conn, "weight_decay": 0.0, "lr_mult": cfg.connection_lr_mult},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over :func:`param_groups` (each group carries its own weight decay and lr multiplier):
    AdamW (decoupled decay, betas; torch's fused kernel where ``cfg.fused_adamw`` and ``device`` allow) or SGD
    with ``momentum`` (dampening 0, ``nesterov``; L2 decay added to the gradient, as torch.optim.SGD does)."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused_adamw(cfg, device) or None)


def fused_adamw(cfg: TrainConfig, device: torch.device | None) -> bool:
    """Whether AdamW runs as torch's fused kernel for this config on ``device`` (see FUSED_ADAMW)."""
    kind = "cpu" if device is None else device.type
    return {"always": kind in ("cpu", "cuda"), "cuda": kind == "cuda", "never": False}[cfg.fused_adamw]


def loss_and_metric(kind: str, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task loss and a second metric: bits/char (lm), accuracy (classification), MSE (regression)."""
    out = out.float()
    if kind == "lm":
        loss = F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        return loss, loss.detach() / math.log(2)
    if kind == "classification":
        loss = F.cross_entropy(out, y)
        return loss, (out.argmax(-1) == y).float().mean()
    loss = F.mse_loss(out, y)
    return loss, loss.detach()


METRIC_NAME = {"lm": "bits_per_char", "classification": "accuracy", "regression": "mse", "diffusion": "denoise_mse"}


def _loss(call: nn.Module, model: nn.Module, kind: str, x, y):
    """A model with its own objective (``training_loss(x, y, call) -> (loss, metric)``, e.g. DDPM's
    epsilon-prediction, where ``call`` is the possibly DDP-wrapped forward) brings it; every other model
    is scored by the task kind."""
    if hasattr(model, "training_loss"):
        return model.training_loss(x, y, call)
    return loss_and_metric(kind, call(x), y)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    """Where a run ran. ``cpu_capability`` is the SIMD level whose kernels torch picked (e.g. AVX2, AVX512): the same
    code, seed and torch give bit-identical runs on one machine, but kernels of another level (or another CPU) round
    differently in the last bits, and over hundreds of steps the losses then move in the 3rd-4th decimal."""
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class _Dist:
    """What DDP needs to know; world_size 1 when not launched by torchrun."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# the run


def train(cfg: TrainConfig) -> dict:
    """Train one model; return (and write) its summary.

    Ctrl-C (single process) finishes the current step, saves a checkpoint there and raises
    :class:`TrainingInterrupted`; calling ``train`` again with the same config continues from it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is an existing file, not a folder; pass another --out-dir")
    out.mkdir(parents=True, exist_ok=True)
    lock = OutDirLock(out)
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 owns the folder: it writes checkpoints and logs
        lock.acquire()
    dist = None
    try:
        if lock.held:
            remove_stale_temp_files(out)
        dist = _Dist(device)
        return _run(cfg, device, dist, out)
    finally:
        lock.release()
        if dist is not None:
            dist.close()


def _run(cfg: TrainConfig, device: torch.device, dist: "_Dist", out: Path) -> dict:
    if cfg.batch_size % dist.world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({dist.world})")
    ckpt_path, log_path = out / "checkpoint.pt", out / "metrics.jsonl"

    # --- data, model, optimiser (every rank builds the same model from the same seed) ---
    task = get_task(cfg.task, **cfg.task_args)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, task.info, cfg.connection, **cfg.model_args).to(device)
    metric_name = getattr(model, "metric_name", METRIC_NAME[task.kind])
    n_params = sum(p.numel() for p in model.parameters())
    n_conn = sum(p.numel() for p in connection_parameters(model))
    optimizer = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # the training batches; saved in checkpoints
    eval_set = task.fixed_batches("val", cfg.eval_batches, cfg.batch_size)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    start, log_rows = 0, []
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, cfg)
        if int(state["step"]) > cfg.steps:
            raise ValueError(f"{out} holds this run trained to step {int(state['step'])}, more than steps={cfg.steps}: "
                             f"a resume only continues a run. Ask for steps >= {int(state['step'])} to continue it, "
                             f"or use a new out_dir (or resume=false) to start a shorter run afresh")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        log_rows = _read_log(log_path, upto=start)  # rows written after the checkpoint are replayed
    _write_log(log_path, log_rows, dist.main)

    fwd_model = model
    if cfg.compile:
        from .runtime import compile_model

        fwd_model = compile_model(model)  # room for every scheme of a compare in one process
    if dist.enabled:
        fwd_model = nn.parallel.DistributedDataParallel(
            fwd_model, device_ids=[device.index] if device.type == "cuda" else None)

    local_bs = cfg.batch_size // dist.world
    step_times, first_loss, evals, status = [], None, [], "completed"
    for row in log_rows:
        if "val_loss" in row:
            evals.append(row)
        if first_loss is None and "loss" in row:
            first_loss = row["loss"]

    def evaluate() -> tuple[float, float]:
        model.eval()
        tot_loss = tot_metric = 0.0
        count = 0
        with torch.no_grad(), autocast:
            for x, y in eval_set:  # weighted by batch size: a whole split's last batch is usually smaller
                x, y = x.to(device), y.to(device)
                loss, metric = _loss(model, model, task.kind, x, y)
                tot_loss += float(loss) * x.shape[0]
                tot_metric += float(metric) * x.shape[0]
                count += x.shape[0]
        model.train()
        return tot_loss / count, tot_metric / count

    # fault injection for the resume tests: the loop stops before step RESLAB_CRASH_AT_STEP, then SIGKILL
    crash_at = int(os.environ.get("RESLAB_CRASH_AT_STEP", "0"))
    end = crash_at if start < crash_at < cfg.steps else cfg.steps
    items = cfg.batch_size * (task.block_size if task.kind == "lm" else 1)
    status_line = _StatusLine(cfg, start, items, "tok" if task.kind == "lm" else "samples",
                              enabled=cfg.progress and dist.main and not _isatty())
    writer = bar = None
    stop = _CtrlC(enabled=not dist.enabled)
    model.train()
    step = done = start
    try:
        writer = _tensorboard(out) if (cfg.tensorboard and dist.main) else None
        bar = _progress(cfg, start, dist.main)
        with stop:
            for step in range(start, end):
                t0 = time.perf_counter()
                lrf = lr_factor(step, cfg)
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * lrf * g["lr_mult"]
                x, y = task.get_batch("train", cfg.batch_size, gen)
                x = x[dist.rank * local_bs:(dist.rank + 1) * local_bs].to(device)
                y = y[dist.rank * local_bs:(dist.rank + 1) * local_bs].to(device)
                with autocast:
                    loss, _ = _loss(fwd_model, model, task.kind, x, y)
                loss.backward()
                grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip
                             else torch.tensor(float("nan")))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if hasattr(model, "after_step"):  # e.g. an EMA of the weights (diffusion models)
                    model.after_step()
                loss_v = float(loss.detach())
                if dist.enabled:  # report the global-batch loss, identical on every rank
                    t = torch.tensor([loss_v], device=device)
                    torch.distributed.all_reduce(t)
                    loss_v = float(t) / dist.world
                step_times.append(time.perf_counter() - t0)
                first_loss = loss_v if first_loss is None else first_loss
                done = step + 1
                _check_divergence(loss_v, first_loss, done, cfg)

                row = None
                if done % cfg.log_every == 0 or done == cfg.steps:
                    row = {"step": done, "loss": loss_v, "lr": cfg.lr * lrf, "grad_norm": float(grad_norm),
                           "step_time": step_times[-1]}
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    vl, vm = evaluate()
                    row = (row or {"step": done}) | {"val_loss": vl, f"val_{metric_name}": vm}
                    coefs = _coefficients(model)
                    if coefs:  # learned mixing coefficients over training (alpha/beta/gamma, routing, lambda)
                        row["coefficients"] = coefs
                    evals.append(row)
                if row is not None:
                    _append_log(log_path, row, dist.main)
                    if writer is not None:
                        for k, v in row.items():
                            if k not in ("step", "coefficients"):
                                writer.add_scalar(k, v, done)
                    bar.set_postfix(loss=f"{loss_v:.4f}",
                                    **({"val": f"{row['val_loss']:.4f}"} if "val_loss" in row else {}))
                bar.update(1)
                status_line.update(done, loss_v, step_times[-1])
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps and dist.main:
                    save_checkpoint(ckpt_path, _state(model, optimizer, gen, done, cfg))
                if stop.requested:
                    break
        if stop.requested and done < cfg.steps:
            if dist.main:
                save_checkpoint(ckpt_path, _state(model, optimizer, gen, done, cfg))
            raise TrainingInterrupted(f"interrupted at step {done}/{cfg.steps}; checkpoint saved in {out}: run the "
                                      f"same command again to continue from step {done}", str(out), done)
        if end < cfg.steps:
            os.kill(os.getpid(), signal.SIGKILL)
    except TrainingDiverged as e:
        status = "diverged"
        _append_log(log_path, {"step": step + 1, "diverged": str(e)}, dist.main)
        if dist.main:
            atomic_write_json(out / "summary.json", _summary(cfg, task, metric_name, status, evals, step_times, n_params,
                                                             n_conn, step + 1, str(e)))
        raise
    finally:  # every exit path: progress bar, TensorBoard writer (the process group: train())
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    if dist.main:
        save_checkpoint(ckpt_path, _state(model, optimizer, gen, cfg.steps, cfg))
    summary = _summary(cfg, task, metric_name, status, evals, step_times, n_params, n_conn, cfg.steps)
    if dist.main:
        atomic_write_json(out / "summary.json", summary)
    return summary


def _isatty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _StatusLine:
    """Without a terminal (CI, nohup) the progress bar is off: print one line every ``RESLAB_STATUS_EVERY``
    seconds (default 30) and at the end, e.g. ``gpt/residual step 120/400 loss 2.5123 3.1k tok/s ETA 1m02s``."""

    def __init__(self, cfg: TrainConfig, start: int, items_per_step: int, unit: str, enabled: bool):
        self.cfg, self.start, self.items, self.unit, self.enabled = cfg, start, items_per_step, unit, enabled
        self.every = float(os.environ.get("RESLAB_STATUS_EVERY", "30"))
        self.t_start = self.t_last = time.perf_counter()

    def update(self, done: int, loss: float, step_time: float) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.t_last < self.every and done < self.cfg.steps):
            return
        self.t_last = now
        per_step = (now - self.t_start) / max(1, done - self.start)
        eta = per_step * (self.cfg.steps - done)
        print(f"{self.cfg.model}/{self.cfg.connection} step {done}/{self.cfg.steps} loss {loss:.4f} "
              f"{_si(self.items / per_step)} {self.unit}/s ETA {_duration(eta)}", file=sys.stderr, flush=True)


def _si(x: float) -> str:
    return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _CtrlC:
    """While active, the first Ctrl-C (SIGINT) only sets ``requested`` so the loop stops at a step boundary and
    checkpoints; a second one interrupts at once. Only the main thread of a single process installs it."""

    def __init__(self, enabled: bool):
        import threading

        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if self.enabled:
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._old)
        return False


def _coefficients(model: nn.Module, max_numel: int = 1024) -> dict:
    """Every connection's coefficients() as lists, skipping big per-channel tensors (they would swamp the log)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, Connection):
            coefs = {k: v.tolist() for k, v in m.coefficients().items() if v.numel() <= max_numel}
            if coefs:
                out[name or "connection"] = coefs
    return out


def _state(model, optimizer, gen, step, cfg) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(), "step": step, "config": json.dumps(cfg.to_dict())}


def _check_divergence(loss: float, first: float, step: int, cfg: TrainConfig) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"loss is {loss} at step {step} with connection {cfg.connection!r}: training diverged. Try a lower lr "
            f"(now {cfg.lr}), gradient clipping (grad_clip, now {cfg.grad_clip}), more warmup, or a scaled/"
            f"normalised connection")
    if cfg.divergence_factor and loss > cfg.divergence_factor * max(first, 1e-8):
        raise TrainingDiverged(
            f"loss {loss:.4g} at step {step} is more than divergence_factor={cfg.divergence_factor} x the first "
            f"loss {first:.4g} (connection {cfg.connection!r}). Lower lr or raise divergence_factor (0 disables)")


def _summary(cfg, task, metric_name, status, evals, step_times, n_params, n_conn, steps_done, error=None) -> dict:
    metric = f"val_{metric_name}"
    last = evals[-1] if evals else {}
    return {
        "status": status, "error": error,
        "task": cfg.task, "kind": task.kind, "model": cfg.model, "connection": cfg.connection, "seed": cfg.seed,
        "steps": steps_done, "params": n_params, "connection_params": n_conn,
        "final_val_loss": last.get("val_loss"), "final_val_metric": last.get(metric), "metric": metric,
        "median_step_time": statistics.median(step_times) if step_times else None,
        "curve": [{"step": r["step"], "val_loss": r["val_loss"], metric: r.get(metric)} for r in evals],
        "config": cfg.to_dict(), "git": git_revision(), "machine": machine(),
    }


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash mid-write
            continue
        if row.get("step", 0) <= upto and "diverged" not in row:
            rows.append(row)
    return rows


def _write_log(path: Path, rows: list[dict], main: bool) -> None:
    if main:
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _append_log(path: Path, row: dict, main: bool) -> None:
    if main:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_log(out_dir: str | Path) -> list[dict]:
    return _read_log(Path(out_dir) / "metrics.jsonl", upto=10**12)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSONL is the record
        return None
    return SummaryWriter(str(out / "tb"))


def _progress(cfg: TrainConfig, start: int, main: bool):
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs, nohup), so logs stay readable
    return tqdm(total=cfg.steps, initial=start, disable=None if (cfg.progress and main) else True, leave=False,
                desc=f"{cfg.model}/{cfg.connection}", dynamic_ncols=True)


def load_trained(out_dir: str | Path, device: str = "cpu"):
    """Rebuild a finished (or checkpointed) run's model with its weights: ``(model, task, cfg)``.
    Used by diagnostics that look inside trained networks (routing, sensitivity, dissipation)."""
    path = Path(out_dir) / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {out_dir}; train the run first (reslab train ... out_dir={out_dir})")
    state = load_checkpoint(path)
    cfg = TrainConfig(**json.loads(state["config"]))
    task = get_task(cfg.task, **cfg.task_args)
    model = build_model(cfg.model, task.info, cfg.connection, **cfg.model_args)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), task, cfg
