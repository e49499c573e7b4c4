"""``reslab bench trainer``: reslab's GPT trainer against nanoGPT's, at one matched configuration.

The reference is **our re-implementation of nanoGPT's model and training loop** (karpathy/nanoGPT, ``model.py``
and ``train.py``; nanoGPT is not on PyPI), written below in :func:`nanogpt_main`: LayerNorm without bias
(eps 1e-5), GELU MLP of width 4d, learned position embeddings, tied token embedding / LM head, weights
~ N(0, 0.02) with the residual projections at 0.02 / sqrt(2 L), AdamW with nanoGPT's two groups, its
warmup + cosine schedule, gradient clipping, ``loss.item()`` every step (``log_interval=1``), and its
``get_batch``: a fresh ``np.memmap`` of a **uint16** token file per batch, windows stacked as int64.

Preset ``nanogpt-cpu`` is nanoGPT's README command for a CPU (``train_shakespeare_char`` with
``--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``): lr 1e-3 to 1e-4, 100 warmup
steps, betas (0.9, 0.99), weight decay 0.1, clip 1.0, evaluation every 250 steps on 20 batches. reslab's
trainer gets the same numbers through its TrainConfig, on its own model (RoPE, SwiGLU, RMSNorm, untied head:
the defaults, kept), on the *same corpus split*: the reference's ``train.bin``/``val.bin`` are reslab's
Shakespeare split written as uint16, and both final validation losses are taken on the same windows
(reslab's fixed evaluation batches). Two differences are inherent and stated: reslab evaluates on val only
(nanoGPT on train and val), and the reference saves no checkpoint (nanoGPT saves one when val improves);
both happen outside the timed steps.

What is measured, each run in its own process (so peak RSS is the run's own; runs alternate reslab,
nanoGPT, reslab, ... for ``--repeats`` rounds):

- step time: the interval between the ends of consecutive optimizer steps (an optimizer step post-hook,
  the same on both sides, so data loading, clipping, logging -- the whole loop -- are inside it); the
  intervals that contain an evaluation and the first ``SKIP`` are left out. Median and IQR.
- tokens/s: tokens per step x kept intervals / their total time.
- peak RSS: ``VmHWM`` of the process at the end (torch's import included: ``torch_rss`` says how much).
- model FLOPs utilisation: achieved model FLOP/s -- (6 N + 12 L d T) per token, nanoGPT's ``estimate_mfu``
  formula (N: parameters used in matmuls, i.e. without the embedding lookups; attention not halved for the
  causal mask) -- over the machine's dense float32 matmul FLOP/s, a ``torch.mm`` of two 2048 x 2048 matrices
  measured in this run, before and after the training runs, with the same threads (the faster of the two).

Targets: reslab's tokens/s >= 1.0 x the reference's; reslab's peak RSS <= 1.10 x the reference's (whose
corpus is the uint16 memory map). Like ``reslab bench overhead``, it prints the machine, threads and load
average before and after, and refuses to report the ratios when the machine was busy (load average before,
or other processes' CPU during the runs, above ``--max-load``): rerun on a quiet machine.

This file runs as a script for the reference (``python .../trainer.py --nanogpt JOB``), so that process
imports torch and numpy only, like nanoGPT's ``train.py``; every reslab import below is inside a function.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

SKIP = 10  # first step intervals left out of the timing (allocator and caches warming up)

# The matched configuration (nanoGPT's README CPU command) and a tiny one for the tests.
PRESETS: dict[str, dict] = {
    "nanogpt-cpu": dict(n_layer=4, n_head=4, d_model=128, block_size=64, batch_size=12, steps=2000, lr=1e-3,
                        min_lr=1e-4, warmup=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250,
                        eval_iters=20, max_chars=None),
    "tiny": dict(n_layer=1, n_head=2, d_model=16, block_size=16, batch_size=4, steps=30, lr=1e-3, min_lr=1e-4,
                 warmup=5, beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=10, eval_iters=2,
                 max_chars=20_000),
}
TARGETS = {"tokens_per_s": 1.0, "peak_rss": 1.10}  # reslab / reference: at least / at most
MM_SIZE = 2048


# ---------------------------------------------------------------------------------------------
# our re-implementation of nanoGPT's model (karpathy/nanoGPT model.py, bias=False, no dropout)


class LayerNorm(nn.Module):
    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)
        self.n_head, self.n_embd = n_head, d

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, d: int, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool):
        super().__init__()
        self.ln_1 = LayerNorm(d, bias)
        self.attn = CausalSelfAttention(d, n_head, bias)
        self.ln_2 = LayerNorm(d, bias)
        self.mlp = MLP(d, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT: ``forward(idx, targets) -> (logits, loss)``."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, d: int, bias: bool = False):
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, d), wpe=nn.Embedding(block_size, d),
            h=nn.ModuleList([Block(d, n_head, bias) for _ in range(n_layer)]), ln_f=LayerNorm(d, bias)))
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self) -> int:
        """nanoGPT's non-embedding count: the position table left out, the tied token table kept (LM head)."""
        return sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


# ---------------------------------------------------------------------------------------------
# what both sides share: step-end timestamps, peak RSS, FLOPs


def _proc_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class StepClock:
    """Timestamps of every optimizer step's end (a global optimizer step post-hook): elapsed time and the
    process's CPU time (the latter a diagnostic on a shared machine, where it leaves out waiting for a core)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.before_first = 0.0  # seconds of evaluation before the first step, left out of first_step_s
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.handle = register_optimizer_step_post_hook(lambda *_: self._tick())

    def _tick(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())


def step_stats(ends: list[float], eval_interval: int, tokens_per_step: int, skip: int = SKIP) -> dict:
    """Intervals between consecutive step ends; those containing an evaluation (after completed step k with
    k % eval_interval == 0) and the first ``skip`` left out. Median, IQR, tokens/s."""
    kept = [b - a for k, (a, b) in enumerate(zip(ends, ends[1:]), start=1)
            if k > skip and k % eval_interval != 0]
    if not kept:
        raise ValueError(f"no step intervals left to time ({len(ends)} steps, skip={skip}); run more steps")
    q = statistics.quantiles(kept, n=4, method="inclusive") if len(kept) > 1 else [kept[0]] * 3
    return {"steps_timed": len(kept), "step_s_median": statistics.median(kept), "step_s_q1": q[0],
            "step_s_q3": q[2], "tokens_per_s": tokens_per_step * len(kept) / sum(kept)}


def flops_per_token(n_matmul_params: int, n_layer: int, d: int, T: int) -> int:
    """nanoGPT's estimate_mfu numerator per token: 6 N (forward + backward of every matmul weight) plus
    12 L d T for the attention scores and the weighted sum of values (forward + backward)."""
    return 6 * n_matmul_params + 12 * n_layer * d * T


def matmul_flops(n: int = MM_SIZE, repeats: int = 5) -> float:
    """Dense float32 matmul FLOP/s of this machine at torch's current threads: the median of ``repeats``
    timed ``torch.mm`` of two n x n matrices after one warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def _graphs_compiled() -> int:
    """Graphs dynamo compiled in this process: 0 when nothing was (no torch.compile, or torch's own switches
    such as TORCHDYNAMO_DISABLE made it a no-op), so a run is labelled compiled only when it was."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _finish(job: dict, clock: StepClock, n_matmul: int, cfg: dict, extra: dict) -> None:
    clock.handle.remove()  # the global optimizer hook ends with the run (the tests run several in one process)
    tokens = cfg["batch_size"] * cfg["block_size"]
    out = {"steps": len(clock.ends), "tokens_per_step": tokens, "n_matmul_params": n_matmul,
           "flops_per_token": flops_per_token(n_matmul, cfg["n_layer"], cfg["d_model"], cfg["block_size"]),
           "peak_rss_bytes": _proc_kb("VmHWM"), "torch_rss_bytes": job["torch_rss"], "threads": torch.get_num_threads(),
           # from the clock's start (before the data and model are built) to the first step's end, evaluation
           # before it left out: with --compile, the compilation's cost, which the step intervals leave out
           "first_step_s": clock.ends[0] - clock.start - clock.before_first,
           "compile_requested": bool(job.get("compile")), "graphs_compiled": _graphs_compiled(),
           **step_stats(clock.ends, cfg["eval_interval"], tokens),
           "cpu_step_s_median": step_stats(clock.cpu_ends, cfg["eval_interval"], tokens)["step_s_median"], **extra}
    Path(job["out"]).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------
# the reference run (our re-implementation of nanoGPT's train.py loop); imports torch and numpy only


def nanogpt_main(job: dict) -> None:
    cfg = job["cfg"]
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    clock = StepClock()  # from here, as reslab's clock starts before its trainer builds anything
    data_dir, block_size, batch_size = job["data_dir"], cfg["block_size"], cfg["batch_size"]
    torch.manual_seed(1337)

    def get_batch(split):
        # nanoGPT: recreate np.memmap every batch to avoid a memory leak
        data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64)) for i in ix])
        return x, y

    model = NanoGPT(job["vocab_size"], block_size, cfg["n_layer"], cfg["n_head"], cfg["d_model"])
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, cfg["beta2"]))  # CPU: not fused
    n_params = model.get_num_params()
    if job.get("compile"):  # nanoGPT's train.py with --compile=True: the whole model, training and evaluation
        model = torch.compile(model)

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(cfg["eval_iters"])
            for k in range(cfg["eval_iters"]):
                X, Y = get_batch(split)
                _, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean()
        model.train()
        return out

    def get_lr(it):
        warmup, decay, lr, min_lr = cfg["warmup"], cfg["steps"], cfg["lr"], cfg["min_lr"]
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay:
            return min_lr
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay - warmup)))
        return min_lr + coeff * (lr - min_lr)

    X, Y = get_batch("train")
    t0 = time.time()
    for iter_num in range(cfg["steps"]):
        lr = get_lr(iter_num)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        if iter_num % cfg["eval_interval"] == 0:
            t_eval = time.perf_counter()
            losses = estimate_loss()
            if not clock.ends:  # nanoGPT evaluates at iteration 0 (compiling its inference graph when compiled)
                clock.before_first += time.perf_counter() - t_eval
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        _, loss = model(X, Y)
        X, Y = get_batch("train")  # prefetch, as nanoGPT does
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        lossf = loss.item()  # log_interval = 1
        print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms")
    # the final validation loss on reslab's evaluation windows (same val split, same offsets)
    val = np.memmap(os.path.join(data_dir, "val.bin"), dtype=np.uint16, mode="r")
    model.eval()
    with torch.no_grad():
        tot = []
        for offsets in job["val_windows"]:
            x = torch.stack([torch.from_numpy(val[i:i + block_size].astype(np.int64)) for i in offsets])
            y = torch.stack([torch.from_numpy(val[i + 1:i + 1 + block_size].astype(np.int64)) for i in offsets])
            tot.append(model(x, y)[1].item())
    _finish(job, clock, n_params, cfg,
            {"final_val_loss": sum(tot) / len(tot), "params": sum(p.numel() for p in model.parameters()),
             "adamw": "per-tensor loop"})  # nanoGPT fuses AdamW on CUDA only


# ---------------------------------------------------------------------------------------------
# the reslab run: its Trainer, untouched, with the same numbers


def train_config(cfg: dict, out_dir: str, threads: int = 0, compile: bool = False):
    """reslab's TrainConfig for a preset (the matched configuration); ``compile``: TrainConfig.compile."""
    from ..train import TrainConfig

    task_args = {"block_size": cfg["block_size"]} | ({"max_chars": cfg["max_chars"]} if cfg["max_chars"] else {})
    return TrainConfig(task="shakespeare", task_args=task_args, model="gpt",
                       model_args={"n_layer": cfg["n_layer"], "n_head": cfg["n_head"], "d_model": cfg["d_model"]},
                       steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                       min_lr_ratio=cfg["min_lr"] / cfg["lr"], warmup_steps=cfg["warmup"], weight_decay=cfg["weight_decay"],
                       beta2=cfg["beta2"], grad_clip=cfg["grad_clip"], eval_every=cfg["eval_interval"],
                       eval_batches=cfg["eval_iters"], log_every=1, out_dir=out_dir, resume=False, device="cpu",
                       threads=threads, progress=False, tensorboard=False, compile=compile)


def reslab_main(job: dict) -> None:
    cfg = job["cfg"]
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    from ..runtime import malloc_state, tune_malloc
    from ..train import fused_adamw, train

    tuned = job.get("reslab_malloc", "tuned") == "tuned"
    if tuned:
        tune_malloc()  # as reslab's command line runs: freed activation blocks stay in the heap (reslab/runtime.py)

    clock = StepClock()
    config = train_config(cfg, job["run_dir"], job.get("threads", 0), bool(job.get("compile")))
    summary = train(config)
    n_matmul = summary["params"] - job["vocab_size"] * cfg["d_model"]  # all but the token-embedding lookup
    _finish(job, clock, n_matmul, cfg, {"final_val_loss": summary["final_val_loss"], "params": summary["params"],
                                        "malloc": malloc_state() if tuned else "default (--reslab-malloc default)",
                                        "adamw": "fused" if fused_adamw(config, torch.device("cpu")) else "per-tensor loop"})


def _child_main(argv: list[str]) -> int:
    """``trainer.py --nanogpt JOB`` / ``python -m reslab.bench.trainer --reslab JOB``: one measured run."""
    if len(argv) != 2 or argv[0] not in ("--nanogpt", "--reslab"):
        print("internal: use `reslab bench trainer`", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[1]).read_text())
    job["torch_rss"] = _proc_kb("VmRSS")  # torch (and numpy) imported, nothing else yet
    (nanogpt_main if argv[0] == "--nanogpt" else reslab_main)(job)
    return 0


# ---------------------------------------------------------------------------------------------
# the benchmark (parent process)


def prepare_data(cfg: dict, folder: Path) -> dict:
    """reslab's Shakespeare split as nanoGPT's ``train.bin``/``val.bin`` (uint16), and reslab's evaluation
    windows (the trainer's fixed val batches: their start offsets)."""
    from ..data import get_task

    task = get_task("shakespeare", block_size=cfg["block_size"],
                    **({"max_chars": cfg["max_chars"]} if cfg["max_chars"] else {}))
    for split, t in (("train", task.train_x), ("val", task.val_x)):
        t.numpy().astype(np.uint16).tofile(folder / f"{split}.bin")
    n = task.val_x.numel() - cfg["block_size"] - 1
    g = torch.Generator().manual_seed(1234)  # Task.fixed_batches' seed: the same windows reslab evaluates on
    windows = [torch.randint(n, (cfg["batch_size"],), generator=g).tolist() for _ in range(cfg["eval_iters"])]
    # check: these offsets give exactly the trainer's evaluation batches
    first = task.fixed_batches("val", 1, cfg["batch_size"])[0][0]
    assert torch.equal(first[:, 0], task.val_x[torch.tensor(windows[0])].long())
    return {"vocab_size": task.info["vocab_size"], "val_windows": windows, "n_train_tokens": task.train_x.numel()}


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _run_child(side: str, job: dict, folder: Path, i: int) -> tuple[dict, float | None]:
    """One measured run in its own process; returns its result and other processes' CPU (cores) meanwhile."""
    from .machine import busy_seconds

    job = job | {"out": str(folder / f"{side}-{i}.json"), "run_dir": str(folder / f"run-{side}-{i}")}
    path = folder / f"{side}-{i}-job.json"
    path.write_text(json.dumps(job))
    here = Path(__file__).resolve()
    cmd = ([sys.executable, str(here), "--nanogpt", str(path)] if side.startswith("nanogpt") else
           [sys.executable, "-m", "reslab.bench.trainer", "--reslab", str(path)])
    env = os.environ | ({"OMP_NUM_THREADS": str(job["threads"])} if job.get("threads") else {})
    # each run compiles from scratch: a cache that an earlier run (or another side) filled would hide its cost
    env["TORCHINDUCTOR_CACHE_DIR"] = str(folder / f"inductor-{side}-{i}")
    b0, c0, t0, own0 = busy_seconds(), _children_cpu(), time.perf_counter(), time.process_time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(here.parents[2]))
    wall = time.perf_counter() - t0
    b1, c1, own1 = busy_seconds(), _children_cpu(), time.process_time()
    if proc.returncode != 0:
        raise RuntimeError(f"the {side} run failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    others = None if b0 is None or b1 is None else round(max(0.0, (b1 - b0) - (c1 - c0) - (own1 - own0)) / wall, 3)
    return json.loads(Path(job["out"]).read_text()) | {"wall_s": round(wall, 2)}, others


def run_trainer_bench(preset: str = "nanogpt-cpu", repeats: int = 2, threads: int = 0, out_dir: str | Path | None = None,
                      command: str = "", max_load: float | None = None, log=print, steps: int | None = None,
                      reslab_malloc: str = "tuned", compile: bool = False) -> dict:
    """``reslab_malloc``: ``"tuned"`` runs reslab's side as its command line does (:func:`reslab.runtime.tune_malloc`),
    ``"default"`` with glibc's default malloc, like the reference, to compare the model and loop alone; ``"both"``
    runs reslab both ways in the same rounds (a third side, ``reslab-default``, reported beside the target), so the
    malloc setting's share of the ratio is measured in one run.

    ``compile``: also run both trainers compiled in the same rounds (sides ``reslab-compiled``, with TrainConfig
    ``compile=true``, and ``nanogpt-compiled``, ``torch.compile(model)`` as nanoGPT's ``--compile=True`` does), and
    judge the speed target a second time between them. The eager pair stays the matched configuration (nanoGPT's
    README CPU command has ``--compile=False``); the compiled pair is what each trainer gives a user who turns
    compilation on. Compilation's one-off cost is left out of the step intervals and reported as ``first_step_s``."""
    from ..train import git_revision
    from .machine import MAX_LOAD, busy_reason, cores_text, load_average, machine_info, write_outputs

    log = log or (lambda *_: None)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if reslab_malloc not in ("tuned", "default", "both"):
        raise ValueError(f"reslab_malloc must be 'tuned', 'default' or 'both', got {reslab_malloc!r}")
    max_load = MAX_LOAD if max_load is None else (None if max_load < 0 else max_load)
    cfg = dict(PRESETS[preset])
    if steps is not None:
        cfg["steps"] = steps
    if threads:
        torch.set_num_threads(threads)
    mach = machine_info()
    log(f"machine: {mach['cpu_model']}, {mach['cpus']} cores, torch {mach['torch']}, {mach['threads']} thread(s); "
        f"load average before: {mach['load_average']}")
    mm_before = matmul_flops()
    sides = ("reslab", "reslab-default", "nanogpt") if reslab_malloc == "both" else ("reslab", "nanogpt")
    sides += ("reslab-compiled", "nanogpt-compiled") if compile else ()
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    others: list[float | None] = []
    with tempfile.TemporaryDirectory(prefix="reslab-bench-trainer-") as tmp:
        folder = Path(tmp)
        data = prepare_data(cfg, folder)
        job = {"cfg": cfg, "threads": threads, "data_dir": str(folder), "vocab_size": data["vocab_size"],
               "val_windows": data["val_windows"]}
        for i in range(repeats):
            # odd rounds run the sides in reverse, so no side always runs first or last (in a warmer machine)
            for side in (sides if i % 2 == 0 else sides[::-1]):
                log(f"[{side}] run {i + 1}/{repeats}: {cfg['steps']} steps")
                malloc = "default" if side == "reslab-default" else ("tuned" if reslab_malloc == "both" else reslab_malloc)
                r, o = _run_child(side, job | {"reslab_malloc": malloc, "compile": side.endswith("-compiled")}, folder, i)
                runs[side].append(r)
                others.append(o)
                log(f"[{side}] {r['tokens_per_s']:,.0f} tok/s, median step {1000 * r['step_s_median']:.2f} ms, "
                    f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MB, val loss {r['final_val_loss']:.4f}")
    mm_after = matmul_flops()
    peak = max(mm_before, mm_after)
    result = {"command": command or f"reslab bench trainer --preset {preset}", "git": git_revision(),
              "machine": mach, "threads": torch.get_num_threads(), "preset": preset, "config": cfg,
              "repeats": repeats, "load_before": mach["load_average"], "load_after": load_average(),
              "others_cpu": others, "matmul_flops": {"before": mm_before, "after": mm_after, "size": MM_SIZE},
              "n_train_tokens": data["n_train_tokens"], "runs": runs}
    result["busy"] = busy_reason(result["load_before"], others, max_load)
    summary = {}
    for side, rs in runs.items():
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        summary[side] = {"tokens_per_s": tps, "step_ms_median": 1000 * statistics.median(r["step_s_median"] for r in rs),
                         "step_ms_q1": 1000 * statistics.median(r["step_s_q1"] for r in rs),
                         "step_ms_q3": 1000 * statistics.median(r["step_s_q3"] for r in rs),
                         "cpu_step_ms_median": 1000 * statistics.median(r["cpu_step_s_median"] for r in rs),
                         "peak_rss_mb": max(r["peak_rss_bytes"] for r in rs) / 2**20,
                         "torch_rss_mb": statistics.median(r["torch_rss_bytes"] for r in rs) / 2**20,
                         "final_val_loss": statistics.median(r["final_val_loss"] for r in rs),
                         "params": rs[0]["params"], "flops_per_token": rs[0]["flops_per_token"],
                         "first_step_s": statistics.median(r["first_step_s"] for r in rs),
                         "mfu": rs[0]["flops_per_token"] * tps / peak,
                         # the reference imports torch and numpy only, so its malloc is glibc's default
                         "malloc": rs[0].get("malloc", "default"), "adamw": rs[0].get("adamw", "per-tensor loop")}
    result["summary"] = summary

    def per_round(a: str, b: str) -> list[float]:
        return [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs[a], runs[b])]

    ratios = per_round("reslab", "nanogpt")
    # (target, per-round ratios or one ratio, limit, better, a reason to refuse it besides a busy machine)
    checks = [("tokens/s vs nanoGPT", ratios, TARGETS["tokens_per_s"], "higher", None),
              ("peak RSS vs nanoGPT (uint16 memmap corpus)",
               summary["reslab"]["peak_rss_mb"] / summary["nanogpt"]["peak_rss_mb"], TARGETS["peak_rss"], "lower", None)]
    if compile:
        uncompiled = [side for side in ("reslab-compiled", "nanogpt-compiled")
                      if not all(r["graphs_compiled"] for r in runs[side])]
        not_compiled = (f"{' and '.join(uncompiled)} compiled no graph (torch.compile disabled, e.g. by "
                        "TORCHDYNAMO_DISABLE=1): unset it and rerun") if uncompiled else None
        checks.insert(1, ("tokens/s vs nanoGPT, both compiled", per_round("reslab-compiled", "nanogpt-compiled"),
                          TARGETS["tokens_per_s"], "higher", not_compiled))
    targets = []
    for name, value, limit, better, refused in checks:
        rounds = value if isinstance(value, list) else None
        value = statistics.median(rounds) if rounds else value
        if refused is None and result["busy"] and rounds:
            refused = f"{result['busy']}: rerun on a quiet machine"
        ok = value >= limit if better == "higher" else value <= limit
        targets.append({"target": name, "ratio": value, "limit": limit, "better": better, "per_round": rounds,
                        "status": "refused" if refused else ("pass" if ok else "miss"), "refused": refused})
    if "reslab-default" in runs:  # not a target: the part of the ratio that the malloc setting makes
        result["malloc_split"] = {
            "tuned_vs_nanogpt": statistics.median(ratios),
            "default_vs_nanogpt": statistics.median(a["tokens_per_s"] / b["tokens_per_s"]
                                                    for a, b in zip(runs["reslab-default"], runs["nanogpt"])),
            "tuned_vs_default": statistics.median(a["tokens_per_s"] / b["tokens_per_s"]
                                                  for a, b in zip(runs["reslab"], runs["reslab-default"]))}
    result["targets"] = targets
    log(f"load average after: {result['load_after']}; other processes' CPU during the runs: "
        f"{cores_text(others)} cores")
    if out_dir is not None:
        write_outputs(out_dir, "trainer", result, markdown(result), log)
    return result


def markdown(result: dict) -> str:
    from .machine import cores_text

    m, c = result["machine"], result["config"]
    others = cores_text(result["others_cpu"])
    mm = result["matmul_flops"]
    parts = [f"# reslab's trainer vs nanoGPT (preset `{result['preset']}`)\n",
             f"`{result['command']}` — git {result['git']}; {m.get('cpu_model')}, {m.get('cpus')} cores, torch "
             f"{m.get('torch')}, {result['threads']} thread(s); load average {result['load_before']} before, "
             f"{result['load_after']} after; other processes' CPU during the runs: {others} cores.\n",
             f"Configuration: {c['n_layer']} layers × {c['d_model']} wide, {c['n_head']} heads, context {c['block_size']}, "
             f"batch {c['batch_size']}, {c['steps']} steps, lr {c['lr']} → {c['min_lr']} (warmup {c['warmup']}, cosine), "
             f"eval every {c['eval_interval']} steps on {c['eval_iters']} batches; {result['repeats']} alternating "
             f"run(s) per side, each in its own process.\n",
             "The reference is **our re-implementation of nanoGPT's model and training loop** (see "
             "`reslab/bench/trainer.py`), on the same corpus split stored as uint16 `train.bin`/`val.bin` and read "
             "through `np.memmap` as nanoGPT does; both validation losses on the same windows.\n"]
    if result.get("busy"):
        parts.append(f"**Not a valid timing: {result['busy']}.** The speed ratio is refused; rerun on a quiet machine.\n")
    rows = ["| trainer | params | tokens/s | step ms median [IQR] | CPU ms/step | peak RSS MB (torch alone) | MFU | "
            "first step s | final val loss |", "|---|---|---|---|---|---|---|---|---|"]
    for side, s in result["summary"].items():
        name = "nanoGPT (re-implementation)" if side.startswith("nanogpt") else "reslab (RoPE, SwiGLU, RMSNorm)"
        name += "; **compiled**" if side.endswith("-compiled") else ""
        name += f"; malloc {s.get('malloc', 'default')}" + (f"; AdamW {s['adamw']}" if "adamw" in s else "")
        rows.append(f"| {name} | {s['params']:,} | {s['tokens_per_s']:,.0f} | {s['step_ms_median']:.2f} "
                    f"[{s['step_ms_q1']:.2f}, {s['step_ms_q3']:.2f}] | {s['cpu_step_ms_median']:.2f} | "
                    f"{s['peak_rss_mb']:.0f} ({s['torch_rss_mb']:.0f}) | "
                    f"{100 * s['mfu']:.1f}% | {s['first_step_s']:.1f} | {s['final_val_loss']:.4f} |")
    parts.append("\n".join(rows) + "\n")
    parts.append("malloc: `tuned` is reslab's command-line setting (`reslab/runtime.py`: freed blocks below 1 GiB stay "
                 "in the heap instead of being faulted in again every step); `--reslab-malloc default` runs reslab "
                 "with glibc's default, like the reference.\n")
    if result.get("malloc_split"):
        ms = result["malloc_split"]
        parts.append(f"Malloc's share, same rounds (median of per-round ratios): reslab tuned {ms['tuned_vs_nanogpt']:.3f}× "
                     f"nanoGPT, reslab default {ms['default_vs_nanogpt']:.3f}× nanoGPT; tuned / default "
                     f"{ms['tuned_vs_default']:.3f}×. The target reads the tuned side (the command line's setting).\n")
    parts.append("AdamW: reslab's trainer runs torch's fused AdamW kernel on CPU (TrainConfig `fused_adamw`, default "
                 "`always`); nanoGPT's `train.py` fuses it on CUDA only, so the reference runs the per-tensor loop.\n")
    parts.append("CPU ms/step: the process's CPU time per step (all threads), a diagnostic: on a shared machine it "
                 "leaves out the time spent waiting for a core. First step s: from the start of the run (before the "
                 "data and model are built) to the end of the first optimizer step, leaving out nanoGPT's evaluation "
                 "at iteration 0 (reslab's trainer evaluates after its steps); compiled, it holds the training "
                 "graph's compilation, which the step times leave out (nanoGPT's compiled evaluation graph is "
                 "compiled in that left-out evaluation; reslab's trainer evaluates eagerly).\n")
    if any(side.endswith("-compiled") for side in result["summary"]):
        parts.append("Compiled: reslab with TrainConfig `compile=true`, nanoGPT with `torch.compile(model)` as its "
                     "`--compile=True` does (inductor, C++ kernels on CPU). The matched configuration is the eager "
                     "pair (nanoGPT's README CPU command has `--compile=False`); the compiled pair, judged by the same "
                     "target, is what each trainer gives a user who turns compilation on.\n")
    parts.append(f"MFU: (6 N + 12 L d T) FLOPs per token × tokens/s over this machine's dense float32 matmul rate, "
                 f"{max(mm['before'], mm['after']) / 1e9:.1f} GFLOP/s (`torch.mm` {mm['size']}², "
                 f"{mm['before'] / 1e9:.1f} before and {mm['after'] / 1e9:.1f} after the runs).\n")
    rows = ["| target | measured | limit | status |", "|---|---|---|---|"]
    for t in result["targets"]:
        lim = f"≥ {t['limit']:.2f}×" if t["better"] == "higher" else f"≤ {t['limit']:.2f}×"
        per = f" (per round: {', '.join(f'{r:.3f}' for r in t['per_round'])})" if t["per_round"] else ""
        if t["status"] == "refused":
            rows.append(f"| {t['target']} | — | {lim} | refused: {t['refused']} |")
        else:
            rows.append(f"| {t['target']} | {t['ratio']:.3f}×{per} | {lim} | "
                        f"{'pass' if t['status'] == 'pass' else '**miss**'} |")
    parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# command line


def _cmd(args) -> int:
    from .machine import bench_command, refuse_if_busy

    if refuse_if_busy(args.max_load, args.busy_ok, "the speed ratio is then refused"):
        return 3
    result = run_trainer_bench(args.preset, args.repeats, args.threads, args.out, bench_command(),
                               max_load=args.max_load, steps=args.steps, reslab_malloc=args.reslab_malloc,
                               compile=args.compile)
    print()
    print(markdown(result))
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("trainer", help="reslab's GPT trainer vs a re-implementation of nanoGPT's: tokens/s, "
                                              "step time, peak RSS, MFU at a matched configuration")
    p.add_argument("--preset", choices=tuple(PRESETS), default="nanogpt-cpu",
                   help="nanogpt-cpu: nanoGPT's README CPU command (4 x 128, context 64, batch 12, 2000 steps)")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per side (default 2)")
    p.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in every run (0: torch's default)")
    p.add_argument("--reslab-malloc", choices=("tuned", "default", "both"), default="tuned",
                   help="reslab's side with its command line's malloc setting (tuned, default) or glibc's default, "
                        "like the reference; both: reslab both ways in the same rounds (the target reads tuned)")
    p.add_argument("--compile", action="store_true",
                   help="also run both trainers compiled (torch.compile) in the same rounds and judge that pair too")
    p.add_argument("--out", default="results/bench-trainer", help="folder for trainer.json / trainer.md")
    p.add_argument("--max-load", type=float, default=0.5,
                   help="refuse the speed ratio above this load average / others' CPU (negative: no check)")
    p.add_argument("--busy-ok", action="store_true", help="run on a busy machine anyway (the speed ratio is refused)")
    p.set_defaults(func=_cmd)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
