"""LAuReL's vision claims (Table 1, ResNet-50 on ImageNet) at CPU scale: a CIFAR-style ResNet on
Fashion-MNIST. Arms: the baseline, the baseline + 1 block (one more basic block in the FIRST stage, the
narrowest, so that it adds a few percent of parameters like the paper's +4.37%), LAuReL-RW, RW+LR and (quick and
gpu presets) RW+LR+PA on the baseline, LR at the rank whose extra parameters are about the paper's 0.38x of the extra block's, within claim B's 0.4x (see RANKS).

On test accuracy (the claim's metric), every arm at its own lr tuned from the same grid. Premise: the extra
block helps (+1 block beats the baseline by > 2 standard errors; else ``inconclusive``). (A) RW is significantly
better than the baseline, recovers >= 60% of the +1-block gain (the paper's figure; until 2026-12-01 the rule
asked for 50%), with < 0.01% extra parameters; (B) RW+LR is non-inferior to the +1-block model (95% CI, margin a
quarter of its gain) with <= 0.4x its extra parameters (paper: 60% for 0.003%; a match for 2.6x fewer, 0.385x:
0.4x leaves room for whole ranks, r = 7 gives 0.3853x at ResNet-14).
"""
from __future__ import annotations

from pathlib import Path

from ..compare import run_arms
from . import Experiment
from .common import decide, depth_premise, noninferior, pick_arms, row, significantly, train_config, with_
from .runner import plot_final_metric


RECOVER = 0.6  # the paper's RW recovers 60% of the +1 block's gain (Table 1)
EXTRA_BLOCK = [1, 0, 0]  # one more basic block in the first (16-channel) stage: +2.7% parameters on ResNet-14
# LR's rank is set by the claim's parameter ratio, not copied: the paper's r = 16 is small against ResNet-50's
# 256-2048 channels (RW+LR adds 0.38x the extra block's parameters there), but with our 16/32/64 channels r = 16
# adds 0.88x on ResNet-14. Per depth, the rank that gives about the paper's ratio (tests/test_experiments.py
# checks it stays within claim B's 0.4x): ResNet-14 r = 7 (1,800 vs 4,672 extra parameters, 0.385x);
# ResNet-20, with more blocks to carry an LR each, r = 3 (0.311x; r = 4 would be 0.414x).
RANKS = {14: 7, 20: 3}
ACCURACY_LINK = "\n![the claim's metric: test accuracy per seed, mean ± std](accuracy.png)\n"


def arms(r: int, keep: list[str] | None = None) -> dict[str, dict]:
    """Every arm, or (``keep``, a preset's ``arms``) some of them by short name: "baseline", "+1 block", "rw",
    "rw+lr", "rw+lr+pa"."""
    every = {"baseline": {"connection": "residual"},
            "baseline + 1 block": {"connection": "residual", "model_args": {"extra_blocks": EXTRA_BLOCK}},
            "laurel(rw)": {"connection": "laurel(rw)"},
            f"laurel(rw, lr, rank={r})": {"connection": f"laurel(rw, lr, rank={r}, lr_init=xavier)"},
            f"laurel(rw, lr, pa, rank={r})": {"connection": f"laurel(rw, lr, pa, rank={r}, lr_init=xavier)"}}
    return pick_arms(every, ["baseline", "+1 block", "rw", "rw+lr", "rw+lr+pa"], keep)


def run(s: dict, out: Path, log) -> dict:
    base = train_config("fashion_mnist", "resnet", **s["train"])
    configs = {label: with_(base, **a) for label, a in arms(s["rank"], s.get("arms")).items()}
    report = run_arms(configs, s["seeds"], out, baseline="baseline", tune=s.get("tune"),
                      title=f"LAuReL on ResNet-{base.model_args['depth']} / Fashion-MNIST: {s['seeds']} seeds, "
                            f"{base.steps} steps", log=log)
    plot_final_metric(report["rows"], out / "accuracy.png", "test accuracy (higher is better)",
                      title=f"the claim's metric: mean ± std over {s['seeds']} seeds (dots: seeds)")
    with open(out / "results.md", "a") as fh:  # the comparison's table links its curves; the claim's metric too
        fh.write(ACCURACY_LINK)
    return {"rows": report["rows"], "rank": s["rank"], "steps": base.steps, "seeds": s["seeds"]}


def verdict(res: dict) -> tuple[str, str]:
    r = res["rank"]
    base, plus = row(res, "baseline"), row(res, "baseline + 1 block")
    rw, rwlr = row(res, "laurel(rw)"), row(res, f"laurel(rw, lr, rank={r})")
    acc = lambda x: x["metric_per_seed"]  # noqa: E731  (test accuracy: the claim's metric)
    gain = plus["metric_mean"] - base["metric_mean"]
    pct = {x["arm"]: 100 * x["extra_params"] / base["params"] for x in res["rows"]}
    ok_premise, premise_text = depth_premise(acc(plus), acc(base), higher_better=True, k_se=2.0)
    rw_better, p_rw = significantly(acc(rw), acc(base), "higher")
    frac = (rw["metric_mean"] - base["metric_mean"]) / gain if gain > 0 else float("nan")
    a = None if rw_better is None else bool(rw_better and frac >= RECOVER and pct["laurel(rw)"] < 0.01)
    ni, ni_text = noninferior(acc(rwlr), acc(plus), margin=max(gain, 0.0) / 4, higher_better=True)
    few = rwlr["extra_params"] <= 0.4 * plus["extra_params"]
    checks = [(f"A RW ≥ {RECOVER:.0%} of the +1-block gain, significant, < 0.01% params", a,
               (f"recovers {frac:.0%}" if gain > 0 else "the +1 block gained nothing to recover")
               + f", Welch p vs baseline={'n/a' if p_rw is None else f'{p_rw:.3g}'}, "
               f"+{pct['laurel(rw)']:.4f}% params"),
              ("B RW+LR non-inferior to +1 block with ≤ 0.4× its extra params", (ni and few) if ni is not None else None,
               f"{ni_text}; {rwlr['extra_params']} vs {plus['extra_params']} extra params")]
    v, text = decide(checks, premise=("+1 block beats the baseline by > 2 SE (accuracy)", ok_premise, premise_text))
    lines = [f"{x['arm']}: acc {x['metric_mean']:.4f} ± {x['metric_std']:.4f}, +{x['extra_params']} params "
             f"({pct[x['arm']]:.2f}%)" + (f", tuned {x['tuned']}" if x.get("tuned") else "") for x in res["rows"]]
    tuned = any(x.get("tuned") for x in res["rows"])
    return v, f"{text}. " + "; ".join(lines) + ("" if tuned else ". Arms not learning-rate tuned (one shared lr)")


def _train(steps, batch, depth, n_train, n_val, eval_every, resize):
    return dict(steps=steps, batch_size=batch, lr=2e-3, warmup_steps=max(5, steps // 20), weight_decay=5e-4,
                eval_every=eval_every, eval_batches=n_val // batch, log_every=max(1, eval_every // 2), threads=1,
                model_args={"depth": depth, "width": 1},
                task_args={"n_train": n_train, "n_val": n_val, "resize": resize})


EXPERIMENT = Experiment(
    name="laurel-vision",
    paper="LAuReL (Menghani et al., ICML 2025, arXiv:2411.07501), Table 1 (ResNet-50, ImageNet)",
    claim="On a ResNet, LAuReL-RW recovers ≥ 60% of the accuracy gain of one extra block with < 0.01% extra "
          "parameters, and RW+LR matches the +1-block model with ≤ 0.4× its extra parameters.",
    paper_number="baseline 74.95, +1 layer 75.20 (+4.37% params), RW 75.10 (+0.003%), RW+LR 75.20 (+1.68%), "
                 "RW+LR+PA 75.25 (+2.40%)",
    presets={"quick": dict(seeds=2, rank=4, tune={"lr": [1e-3, 3e-3]},
                           train=_train(steps=20, batch=32, depth=8, n_train=512, n_val=256, eval_every=10, resize=14)),
             # the four arms the claims need (RW+LR+PA runs in quick/gpu), 400 steps, the full test set read twice
             # per run. 14 seeds in two parts of 7 (each ≲ 50 min on one core: part 1 also trains the 12-16 tuning
             # runs): at 7 seeds the premise's +0.24 point was 1.6 SE (p = 0.13), and ~10 seeds reach 2 SE at that
             # effect. The grid [2e-3, 4e-3, 8e-3] (+1 extension) has every arm inside it.
             "cpu": dict(seeds=14, parts=2, rank=RANKS[14], tune={"lr": [2e-3, 4e-3, 8e-3], "extend": 1},
                         arms=["baseline", "+1 block", "rw", "rw+lr"],
                         train=_train(steps=400, batch=80, depth=14, n_train=20000, n_val=10000, eval_every=200,
                                      resize=14)),
             "gpu": dict(seeds=5, rank=RANKS[20], tune={"lr": [1e-3, 2e-3, 4e-3]},
                         train=_train(steps=8000, batch=125, depth=20, n_train=60000, n_val=10000, eval_every=500,
                                      resize=None))},
    run=run, verdict=verdict,
    notes="CPU scale: ResNet-14 (width 1), Fashion-MNIST resized to 14×14, a 20k training subset and 400 steps of 80 (RW+LR+PA only in the quick and gpu presets); "
          "evaluation on the full official test set (10,000 images). The +1 block is one basic block in the first "
          "stage (a few % of parameters, like the paper's 4.37%). LR uses xavier A init (the paper's CNN choice), B = 0, "
          "rank 7 on ResNet-14 (3 on the gpu preset's ResNet-20): with stage widths 16/32/64 it gives RW+LR about the paper's 0.38x of the extra block's parameters (the paper's r = 16 gives 0.88x here); one LAuReL instance per block; PA stays "
          "within a stage. lr tuned per arm on a tuning seed from the same grid.",
)
