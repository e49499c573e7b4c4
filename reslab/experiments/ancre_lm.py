"""ANCRe on language-model pretraining, at CPU scale: a char-level LLaMA-style GPT with K=8 layers on
Shakespeare, cascaded residual vs ANCRe (repo form, tau=0.01), ANCRe with its routing frozen at the uniform
average (learn=false: the control for "learning the topology matters") and DenseFormer (quick and gpu presets
only: prior art, not a claim), equal steps and data, every arm at its own learning rate tuned from the same grid.

The paper (LLaMA 60M-1B on C4) reports lower perplexity and 34.3% fewer steps on average to reach the
baseline's final loss. Checked: (A) ANCRe's final validation loss is significantly lower (Welch p < 0.05);
(B) it reaches the baseline's final mean loss in ≤ 0.657× the baseline's steps (34.3% fewer; per seed, means
compared, and significantly fewer by Welch's test); B fails only when the CI of the difference excludes the
paper's 34.3%, else it is untestable at this number of seeds (:func:`fewer_steps`).
"""
from __future__ import annotations

from pathlib import Path

from ..compare import run_arms, slug
from . import Experiment
from .common import decide, diagnose_run, diff_ci, row, significantly, train_config, with_

ARMS = {"residual": "residual", "ancre(tau=0.01)": "ancre(tau=0.01)",
        "ancre(tau=0.01, learn=false)": "ancre(tau=0.01, learn=false)", "denseformer": "denseformer"}
STEPS_RATIO = 1 - 0.343  # the paper: 34.3% fewer steps on average to the baseline's final loss


def run(s: dict, out: Path, log) -> dict:
    base = train_config("shakespeare", "gpt", **s["train"])
    # a preset may run a subset of ARMS (the cpu preset leaves DenseFormer, prior art and not a claim, to the gpu one)
    configs = {label: with_(base, connection=ARMS[label]) for label in s.get("arms", ARMS)}
    report = run_arms(configs, s["seeds"], out, baseline="residual", tune=s.get("tune"),
                      title=f"Shakespeare char GPT, K={base.model_args['n_layer']}: {s['seeds']} seeds, {base.steps} steps",
                      log=log)
    diagnostics = {label: diagnose_run(out / slug(label) / f"seed{base.seed}", out, label) for label in configs}
    return {"rows": report["rows"], "diagnostics": diagnostics, "steps": base.steps, "seeds": s["seeds"],
            "model_args": base.model_args, "tuning": report.get("tuning", {})}


def verdict(res: dict) -> tuple[str, str]:
    base, anc = row(res, "residual"), row(res, "ancre(tau=0.01)")
    lower, p = significantly(anc["val_loss"], base["val_loss"], "lower")
    checks = [("A lower final val loss (Welch p < 0.05)", lower,
               f"residual {base['val_loss_mean']:.4f} ± {base['val_loss_std']:.4f} vs ANCRe {anc['val_loss_mean']:.4f} "
               f"± {anc['val_loss_std']:.4f}, p={'n/a' if p is None else f'{p:.3g}'}"),
              (f"B ≤ {STEPS_RATIO:.3f}× the baseline's steps to its final loss, fewer with Welch p < 0.05",
               *fewer_steps(base, anc, res["steps"]))]
    v, text = decide(checks)
    frozen = next((r for r in res["rows"] if r["arm"] == "ancre(tau=0.01, learn=false)"), None)
    if frozen is not None:
        ok, pf = significantly(anc["val_loss"], frozen["val_loss"], "lower")
        text += (f". Control, routing frozen at uniform (learn=false): {frozen['val_loss_mean']:.4f} ± "
                 f"{frozen['val_loss_std']:.4f}; learned vs frozen Welch p={'n/a' if pf is None else f'{pf:.3g}'}: learning the "
                 f"topology {'matters' if ok else 'does not matter significantly'} here")
    else:
        text += ". No frozen-routing control in these runs"
    tuned = {r["arm"]: r.get("tuned") for r in res["rows"] if r.get("tuned")}
    text += (". Tuned per arm: " + ", ".join(f"{a} {t}" for a, t in tuned.items()) if tuned
             else ". Arms not learning-rate tuned (one shared lr)")
    return v, text


def plots(res: dict, out: Path) -> list[tuple[str, str]]:
    """The two checks' metrics per seed with mean ± std: final validation loss (A) and steps to the baseline's final
    mean loss (B; a seed that never reaches it drawn at the budget, as B counts it)."""
    from .runner import plot_final_metric

    rows = [r | {"steps_capped": [res["steps"] if v is None else v for v in r.get("steps_to_target_per_seed") or []]}
            for r in res["rows"]]
    plot_final_metric(rows, out / "final_val_loss.png", "final validation loss", key="val_loss",
                      title=f"A: final validation loss, {res['seeds']} seeds")
    plot_final_metric(rows, out / "steps_to_target.png", "steps to the baseline's final loss", key="steps_capped",
                      title=f"B: steps to the baseline's final mean loss (unreached: the budget, {res['steps']})")
    return [("final validation loss", "final_val_loss.png"), ("steps to target", "steps_to_target.png")]


def fewer_steps(base: dict, anc: dict, steps: int) -> tuple[bool | None, str]:
    """Check B per seed: each run's steps to the baseline's final mean loss (read at the evaluations, so in units
    of ``eval_every``). Passes when ANCRe's seed mean is at most STEPS_RATIO x the baseline's and its steps are
    significantly fewer (Welch). Otherwise it fails only when the data exclude the paper's effect: the 95% CI of
    the difference of the means does not reach 34.3% of the baseline's mean steps (as
    :func:`~reslab.experiments.common.resolvable_difference` reads a stated effect); a CI that still reaches it
    leaves the check untestable at this number of seeds. A baseline seed that never reaches the target, or
    diverged, counts as ``steps`` (a lower bound on its steps: in the baseline's favour); an ANCRe seed that never
    reaches it, or diverged, fails the check. Fewer than 2 seeds a side: untestable. (Until 2026-12-01 any mean
    ratio above STEPS_RATIO failed, e.g. 0.77x whose CI reached 0.62x.)"""
    from .common import resolvable_difference

    # per-seed steps exist for completed runs only (reslab.report.summarize_arms): diverged seeds are added back
    a = (anc.get("steps_to_target_per_seed") or []) + [None] * int(anc.get("diverged") or 0)
    b = [steps if v is None else v for v in base.get("steps_to_target_per_seed") or []] + \
        [steps] * int(base.get("diverged") or 0)
    if len(a) < 2 or len(b) < 2:
        return None, f"per-seed steps for {len(a)} ANCRe and {len(b)} residual seeds: needs 2 or more each"
    if any(v is None for v in a):
        return False, (f"ANCRe seeds that never reach the baseline's final loss or diverged: "
                       f"{sum(v is None for v in a)} of {len(a)}")
    mean_b = sum(b) / len(b)
    ratio = (sum(a) / len(a)) / mean_b
    effect = (1 - STEPS_RATIO) * mean_b  # the paper's 34.3% fewer, in steps of this baseline
    fewer, text = resolvable_difference(a, b, "lower", effect)
    head = (f"per seed {a} vs {b} steps (unreached baseline seeds counted at {steps}): {ratio:.2f}× on the means; "
            f"steps {text}")
    if fewer and ratio <= STEPS_RATIO:
        return True, head
    if fewer:  # significantly fewer, but the mean ratio is above the paper's: does the CI still reach 0.657x?
        d, h = diff_ci(a, b)
        if -d + h >= effect:
            return None, head + f" — fewer, but {ratio:.2f}× > {STEPS_RATIO:.3f}× with a CI that reaches it: untestable at this scale"
        return False, head + f" — fewer, but the CI excludes {STEPS_RATIO:.3f}×"
    return fewer, head


def _train(steps, batch, d, heads, block, eval_every, eval_batches, max_chars=None):
    t = dict(steps=steps, batch_size=batch, lr=3e-3, warmup_steps=max(10, steps // 15), eval_every=eval_every,
             eval_batches=eval_batches, log_every=max(1, eval_every // 2), weight_decay=0.0, threads=1,
             model_args={"n_layer": 8, "n_head": heads, "d_model": d},
             task_args={"block_size": block} | ({"max_chars": max_chars} if max_chars else {}))
    return t


EXPERIMENT = Experiment(
    name="ancre-lm",
    paper="ANCRe (Zhang et al. 2026, arXiv:2602.09009), LLaMA pretraining on C4",
    claim="A K=8 char-level GPT with ANCRe (tau=0.01) reaches a significantly lower final validation loss than the "
          "cascaded residual baseline and needs ≤ 0.657× its steps (34.3% fewer) to reach the baseline's final loss, "
          "every arm at its own tuned learning rate.",
    paper_number="34.3% fewer steps on average to the baseline's final loss; lower perplexity at 60M-1B",
    presets={"quick": dict(seeds=2, tune={"lr": [3e-3, 1e-2]},
                           train=_train(steps=30, batch=8, d=32, heads=2, block=32, eval_every=15, eval_batches=2,
                                        max_chars=100_000)),
             # sized to ≲ 55 min on one core (18 runs, up to 21 with the grid extension): the three arms the claims need,
             # 500 steps, context 96. Every arm chose 1e-2, the top of [1e-3, 3e-3, 1e-2], on 2026-11-30: the grid moves up.
             "cpu": dict(seeds=3, tune={"lr": [3e-3, 1e-2, 3e-2], "extend": 1},
                         arms=["residual", "ancre(tau=0.01)", "ancre(tau=0.01, learn=false)"],
                         train=_train(steps=500, batch=16, d=64, heads=4, block=96, eval_every=50, eval_batches=16)),
             "gpu": dict(seeds=5, tune={"lr": [1e-3, 3e-3, 1e-2]},
                         train=_train(steps=10000, batch=64, d=512, heads=8, block=256, eval_every=250,
                                      eval_batches=50))},
    run=run,
    plots=plots, verdict=verdict,
    notes="Weight decay 0 (the paper's LLM setting), AdamW with warmup + cosine to 0.1x, lr tuned per arm on a tuning seed "
          "from the same grid; the same data order "
          "and evaluation batches for every arm. DenseFormer, the closest prior-art baseline (not a claim of the paper), runs in the quick and gpu presets only, to keep the cpu preset within an hour on one core.",
)
