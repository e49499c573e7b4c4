"""ANCRe's depth-efficiency claim at CPU scale: a shallow residual MLP with ANCRe matches a 4x deeper
plain-residual one. The paper's RL ResNets (blocks of 4 x [Dense -> LayerNorm -> swish]) report that
ANCRe at 16 layers performs like the baseline at 64; here the same block recipe is trained on a
teacher-student regression whose teacher is a deep (16-layer) tanh network, so depth matters.

Arms: 16 layers + ANCRe (K=4 blocks of 4 layers), 16 layers residual, 64 layers residual (K=16).
Premise: depth matters here -- residual-64 beats residual-16 by > 3 standard errors (else ``inconclusive``).
Checks: (A) ANCRe-16 is significantly better than residual-16 (Welch p < 0.05); (B) ANCRe-16 is non-inferior to
residual-64 with a margin of a quarter of the depth gain (95% CI). Every arm's lr is tuned from the same grid.
Also recorded: learned routing heatmap, effective depth and layer-drop sensitivity.
"""
from __future__ import annotations

from pathlib import Path

from ..compare import run_arms, slug
from ..train import TrainConfig
from . import Experiment
from .common import decide, depth_premise, diagnose_run, noninferior, row, significantly, train_config, with_


def depth_arms(base: TrainConfig, width: int, ancre: str | None = None) -> dict[str, TrainConfig]:
    """The 16-layer (4 blocks) and 64-layer (16 blocks) residual MLPs, and (``ancre``: its spec) the 16-layer
    one with ANCRe. The depth pilot (scripts/ancre_depth_pilot.py) builds its two residual arms here too."""
    arms = {"mlp16+ancre": with_(base, connection=ancre, model_args={"n_blocks": 4, "width": width})} if ancre else {}
    arms["mlp16 residual"] = with_(base, connection="residual", model_args={"n_blocks": 4, "width": width})
    arms["mlp64 residual"] = with_(base, connection="residual", model_args={"n_blocks": 16, "width": width})
    return arms


def run(s: dict, out: Path, log) -> dict:
    base = train_config(s.get("task", "teacher"), "mlp", **s["train"])
    arms = depth_arms(base, s["width"], s["ancre"])
    report = run_arms(arms, s["seeds"], out, baseline="mlp64 residual", tune=s.get("tune"),
                      title=f"teacher-student, depth efficiency: {s['seeds']} seeds, {base.steps} steps", log=log)
    diagnostics = {label: diagnose_run(out / slug(label) / f"seed{base.seed}", out, label) for label in arms}
    return {"rows": report["rows"], "diagnostics": diagnostics, "steps": base.steps, "seeds": s["seeds"]}


def verdict(res: dict) -> tuple[str, str]:
    anc, deep, shallow = row(res, "mlp16+ancre"), row(res, "mlp64 residual"), row(res, "mlp16 residual")
    ok_premise, premise_text = depth_premise(deep["val_loss"], shallow["val_loss"], higher_better=False)
    gain = shallow["val_loss_mean"] - deep["val_loss_mean"]
    better, p = significantly(anc["val_loss"], shallow["val_loss"], "lower")
    ni, ni_text = noninferior(anc["val_loss"], deep["val_loss"], margin=max(gain, 0.0) / 4, higher_better=False)
    nums = (f"val MSE: 16 layers + ANCRe {anc['val_loss_mean']:.4g} ± {anc['val_loss_std']:.2g}, 64 layers residual "
            f"{deep['val_loss_mean']:.4g} ± {deep['val_loss_std']:.2g}, 16 layers residual "
            f"{shallow['val_loss_mean']:.4g} ± {shallow['val_loss_std']:.2g}")
    v, text = decide([("A ANCRe-16 better than residual-16", better, f"Welch p={'n/a' if p is None else f'{p:.3g}'}"),
                      ("B ANCRe-16 non-inferior to residual-64 (margin: a quarter of the depth gain)", ni, ni_text)],
                     premise=("residual-64 beats residual-16 by > 3 SE", ok_premise, premise_text))
    if ok_premise is not True:  # say what inconclusive means here, not only that a premise check failed
        text += (". Depth does not matter on this task at this budget, so the claim is untestable at this scale "
                 "(results/ancre-depth/PILOT.md: no task found at cpu scale where it does)")
    tuned = {r["arm"]: r.get("tuned") for r in res["rows"] if r.get("tuned")}
    return v, f"{nums}. {text}" + (". Tuned per arm: " + ", ".join(f"{a} {t}" for a, t in tuned.items()) if tuned
                                   else ". Arms not learning-rate tuned (one shared lr)")


def plots(res: dict, out: Path) -> list[tuple[str, str]]:
    """The claim's metric per seed with mean ± std: each arm's final validation MSE."""
    from .runner import plot_final_metric

    plot_final_metric(res["rows"], out / "final_val_loss.png", "final validation MSE", key="val_loss",
                      title=f"depth efficiency: final validation MSE, {res['seeds']} seeds")
    return [("final validation MSE", "final_val_loss.png")]


N_VAL = 2048  # the teacher's validation pairs (noise-free targets)


def _train(steps, batch, eval_every, teacher_n, eval_batches=None):
    # eval_batches default: the whole validation split, in order (ceil(N_VAL / batch) batches), so val MSE is exact
    return dict(steps=steps, batch_size=batch, lr=1e-3, warmup_steps=max(5, steps // 20), weight_decay=0.0,
                eval_every=eval_every, eval_batches=eval_batches or -(-N_VAL // batch), log_every=eval_every,
                threads=1,
                model_args={"layers_per_branch": 4, "layernorm": True, "activation": "silu"},
                task_args={"in_dim": 16, "width": 64, "depth": 16, "out_dim": 4, "n_train": teacher_n,
                           "n_val": N_VAL, "noise": 0.0, "gain": 1.5})


EXPERIMENT = Experiment(
    name="ancre-depth",
    paper="ANCRe (Zhang et al. 2026, arXiv:2602.09009), depth scaling of residual networks (RL ResNets)",
    claim="A 16-layer residual MLP with ANCRe reaches a validation loss at least as low as a 64-layer residual MLP on a "
          "task where depth matters.",
    paper_number="ANCRe at depth 16 matches or beats the baseline at depth 64 (RL, Humanoid/Ant/Arm tasks)",
    presets={"quick": dict(seeds=2, width=32, ancre="ancre(tau=0.01)", tune={"lr": [1e-3, 3e-3]},
                           train=_train(steps=30, batch=32, eval_every=15, teacher_n=512, eval_batches=8)),
             # lr grid: [3e-4, 1e-3, 3e-3] left ANCRe-16 and residual-16 at its top (3e-3), and the depth pilot's
             # tuning chose 3e-3 to 3e-2 on this task; one extension past an edge, as every experiment has
             "cpu": dict(seeds=4, width=128, ancre="ancre(tau=0.01)", tune={"lr": [1e-3, 3e-3, 1e-2], "extend": 1},
                         train=_train(steps=2000, batch=128, eval_every=100, teacher_n=16384)),
             # not validated: the cpu pilot found this tanh teacher leaves ~44 % of its variance out of every
             # student's reach; pilot the premise on the device first (scripts/ancre_depth_pilot.py)
             "gpu": dict(seeds=8, width=256, ancre="ancre(tau=0.01)", tune={"lr": [3e-4, 1e-3, 3e-3]},
                         train=_train(steps=20000, batch=256, eval_every=500, teacher_n=65536))},
    run=run,
    plots=plots, verdict=verdict,
    notes="Blocks are 4 x [Linear -> LayerNorm -> SiLU] as in the official RL code; AdamW, no weight decay, lr tuned per "
          "arm on a tuning seed from the same grid. The teacher is a random 16-layer tanh MLP (width 64, weight gain 1.5 so that its output is not near-linear and has variance ~0.85); validation targets are noise-free.",
)
