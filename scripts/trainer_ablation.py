"""Where reslab's eager GPT step loses to nanoGPT's at `reslab bench trainer`'s matched size (4 layers x 128,
context 64, batch 12, char vocabulary): the same training step -- cross-entropy, backward, gradient clipping at
1.0, fused AdamW, the heap kept by ``tune_malloc`` -- timed on nanoGPT's model and on reslab's GPT with its
defaults, then with one default at a time swapped for what nanoGPT's model has (RMSNorm -> LayerNorm without
bias, SwiGLU -> a 4d GELU MLP, RoPE -> none), in interleaved rounds whose arm order is shuffled every round.

    python scripts/trainer_ablation.py --threads 1 --rounds 30 --profiler-check --out results/bench-trainer/ablation-threads1

A diagnostic, not a proposal: each swapped model is the weaker nanoGPT-like model that issue #16 rules out
("speed must not come from a weaker model"); the paired difference a swap makes is what that default costs in
eager kernels. This attribution is timed, not profiled, on purpose: at this size torch.profiler's per-op self
times are inflated (``--profiler-check`` prints by how much for the whole step).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reslab.bench.machine import MAX_LOAD, OthersCPU, load_average, machine_info
from reslab.bench.trainer import PRESETS, NanoGPT
from reslab.models.gpt import GPT, AttentionBranch, GPTConfig, MLPBranch
from reslab.runtime import tune_malloc

SWAPS = {"layernorm": "RMSNorm -> LayerNorm (no bias)", "gelu": "SwiGLU -> GELU MLP (4d, 2 matrices)",
         "no-rope": "RoPE -> none"}
FUSED_PROXY = "reslab, RMSNorm + RoPE compiled alone"
VOCAB = 65  # Shakespeare's characters, as the bench's corpus


def _gelu_forward(self, x):
    return self.drop(self.down(F.gelu(self.fc(self.norm(x)))))


class _NoRotary(nn.Module):
    """Stands in for the shared Rotary module: queries and keys pass unrotated."""

    def qk(self, qk):
        return qk


def reslab_model(cfg: dict, swaps: tuple[str, ...]) -> GPT:
    """reslab's GPT at the preset's size with the given defaults swapped in place (same seed for every arm)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                          n_head=cfg["n_head"], d_model=cfg["d_model"]))
    d = cfg["d_model"]
    for attn, mlp in model.blocks:
        assert isinstance(attn, AttentionBranch) and isinstance(mlp, MLPBranch)
        if "no-rope" in swaps:
            attn.rotary = _NoRotary()
        if "gelu" in swaps:  # nanoGPT's MLP: fc to 4d, exact GELU, back to d; the branch keeps its own norm
            del mlp.gate, mlp.up
            mlp.fc, mlp.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
            mlp.forward = types.MethodType(_gelu_forward, mlp)
        if "layernorm" in swaps:
            attn.norm, mlp.norm = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
    if "layernorm" in swaps:
        model.norm = nn.LayerNorm(d, bias=False)
    return model


def fused_proxy_model(cfg: dict) -> GPT:
    """reslab's default GPT with each RMSNorm's forward and the rotary call compiled on their own (inductor fuses
    each into a kernel or two, forward and backward) and everything else eager: a stand-in for hand-written fused
    RMSNorm/RoPE kernels, to ask how much of the eager gap such kernels could close. Same model and numbers up to
    rounding; dynamo's per-call guard and autograd overhead is counted against it, as a Python-called custom
    kernel's would be (smaller, but not zero)."""
    model = reslab_model(cfg, ())
    for mod in model.modules():
        if isinstance(mod, nn.RMSNorm):
            mod.forward = torch.compile(mod.forward, dynamic=False)
    model.rotary.qk = torch.compile(model.rotary.qk, dynamic=False)
    return model


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One training step, identical for every arm: only the model differs."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, fused=True)

    def step():
        if isinstance(model, NanoGPT):
            _, loss = model(x, y)
        else:
            loss = F.cross_entropy(model(x).view(-1, VOCAB), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def quartiles(v: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return q1, q2, q3


def run(rounds: int, steps: int, warmup: int, seed: int, fused_proxy: bool = False) -> dict:
    cfg = PRESETS["nanogpt-cpu"]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (cfg["batch_size"], cfg["block_size"]), generator=gen)
    y = torch.randint(0, VOCAB, (cfg["batch_size"], cfg["block_size"]), generator=gen)
    torch.manual_seed(0)
    arms = {"nanoGPT": NanoGPT(VOCAB, cfg["block_size"], cfg["n_layer"], cfg["n_head"], cfg["d_model"]),
            "reslab": reslab_model(cfg, ())}
    for s in SWAPS:
        arms[f"reslab, {s}"] = reslab_model(cfg, (s,))
    arms["reslab, all three"] = reslab_model(cfg, tuple(SWAPS))
    if fused_proxy:
        arms[FUSED_PROXY] = fused_proxy_model(cfg)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in arms.items()}
    steps_of = {k: step_fn(m, x, y) for k, m in arms.items()}
    order, rng = list(steps_of), random.Random(seed)
    times = {k: [] for k in steps_of}
    others = OthersCPU().start()
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                steps_of[k]()
            if r >= warmup:
                times[k].append((time.perf_counter() - t0) / steps * 1e3)
    others_cores = others.stop()
    ref = times["nanoGPT"]
    out = {"arms": {}, "others_cores": others_cores}
    for k, t in times.items():
        ratio = [a / b for a, b in zip(ref, t)]  # tokens/s ratio arm / nanoGPT, per round
        cost = [a - b for a, b in zip(times["reslab"], t)]  # ms reslab's defaults take over this arm, per round
        out["arms"][k] = {"params": params[k], "step_ms": quartiles(t), "speed_vs_nanogpt": quartiles(ratio),
                          "reslab_minus_this_ms": quartiles(cost), "step_ms_rounds": t}
    return out


def profiler_check(steps: int) -> dict:
    """reslab's default step timed plainly and under torch.profiler (CPU activity, no shapes, no memory): how
    much the profiler adds to a step, in total self CPU time per step and in wall time."""
    from torch.profiler import ProfilerActivity, profile
    cfg = PRESETS["nanogpt-cpu"]
    x = torch.randint(0, VOCAB, (cfg["batch_size"], cfg["block_size"]))
    step = step_fn(reslab_model(cfg, ()), x, x.roll(-1, 1))
    for _ in range(10):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    plain = (time.perf_counter() - t0) / steps * 1e3
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    profiled = (time.perf_counter() - t0) / steps * 1e3
    self_total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / steps
    return {"plain_step_ms": plain, "profiled_step_ms": profiled, "profiler_self_cpu_ms_per_step": self_total}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Eager step ablation: reslab's GPT defaults against nanoGPT's model ({res['threads']} thread(s))", "",
             f"`{res['command']}`", "",
             f"{m.get('cpu_model')}, {m.get('cpus')} cores, torch {res['torch']}, {res['threads']} thread(s), "
             f"malloc {m.get('malloc')}; load average {res['load_before']} before, {res['load_after']} after; other "
             f"processes {res['others_cores']:.2f} cores during the rounds. {res['rounds']} rounds (after "
             f"{res['warmup']} untimed) of {res['steps']} steps per arm, arm order shuffled every round; the step is "
             "the same for every arm (cross-entropy, backward, clip 1.0, fused AdamW), only the model differs. "
             "Figures: median [q1, q3] over rounds; *speed* = nanoGPT's step time / the arm's in the same round "
             "(tokens/s ratio); *default's cost* = reslab's step minus the arm's in the same round.", "",
             "| arm | params | step ms | speed vs nanoGPT | default's cost, ms per step |", "|---|---|---|---|---|"]
    for k, a in res["arms"].items():
        q = a["step_ms"]
        s = a["speed_vs_nanogpt"]
        c = a["reslab_minus_this_ms"]
        cost = "—" if k in ("reslab", "nanoGPT") else f"{c[1]:+.2f} [{c[0]:+.2f}, {c[2]:+.2f}]"
        lines.append(f"| {k} | {a['params']:,} | {q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}] | "
                     f"{s[1]:.3f}× [{s[0]:.3f}, {s[2]:.3f}] | {cost} |")
    lines += ["", "Swaps: " + "; ".join(f"`{k}` {v}" for k, v in SWAPS.items()) + "."]
    if FUSED_PROXY in res["arms"]:
        lines += ["", f"*{FUSED_PROXY}* (`--fused-proxy`): reslab's default model, each RMSNorm and the rotary call "
                      "compiled on their own, the rest eager — a stand-in for fused RMSNorm/RoPE kernels; its "
                      "*default's cost* is what that fusion saves (negative: it is slower)."]
    if res.get("profiler"):
        p = res["profiler"]
        lines += ["", f"Profiler check (reslab's default step): {p['plain_step_ms']:.2f} ms plain, "
                      f"{p['profiled_step_ms']:.2f} ms under torch.profiler, whose self CPU times sum to "
                      f"{p['profiler_self_cpu_ms_per_step']:.2f} ms per step."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10, help="steps per arm per round, timed as one sample")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profiler-check", action="store_true")
    ap.add_argument("--fused-proxy", action="store_true",
                    help="add an arm with RMSNorm and RoPE compiled alone (a stand-in for fused kernels)")
    ap.add_argument("--max-load", type=float, default=MAX_LOAD)
    ap.add_argument("--out", type=Path, default=None, help="folder for ablation.md / ablation.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()  # as reslab's command line and the trainer bench's reslab side run
    before = load_average()
    if before is not None and args.max_load >= 0 and before > args.max_load:
        print(f"error: load average {before} > {args.max_load}: rerun on a quiet machine (or --max-load -1)",
              file=sys.stderr)
        return 2
    res = {"command": "python " + " ".join(sys.argv), "threads": args.threads, "rounds": args.rounds,
           "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__, "load_before": before}
    res["machine"] = machine_info()
    res |= run(args.rounds, args.steps, args.warmup, args.seed, args.fused_proxy)
    if args.profiler_check:
        res["profiler"] = profiler_check(20)
    res["load_after"] = load_average()
    text = markdown(res)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ablation.md").write_text(text)
        (args.out / "ablation.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
