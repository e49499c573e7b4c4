"""The leaderboard on image classification: every registered connection scheme (its registry ``example`` spec) on
a Vision Transformer (default) or the CIFAR-style ResNet, Fashion-MNIST, at two depths, each scheme at its own
learning rate tuned from the same grid, >= 3 seeds; same table, plots and rule as ``leaderboard-lm``
(:mod:`reslab.experiments.leaderboard_lm`): final validation loss (cross-entropy) against ``residual``, two-sided
Welch over seeds, Holm-Bonferroni across the schemes at each depth; accuracy is reported beside it.

The cpu preset uses the ViT (a 28x28 image is 16 patch tokens of 7x7: far cheaper per step than a ResNet's
convolutions on one CPU thread); ``model="resnet"`` in a preset switches the family (depth = the ResNet's
``depth``). A scheme that does not build inside the chosen model is skipped and listed with the reason.

Commands: ``reslab reproduce leaderboard-vision --preset cpu`` (results/leaderboard-vision/), ``--preset gpu`` (a
DeiT-Tiny-sized ViT: patch 4, d=192, 3 heads, depths 6 and 12, 20000 steps of batch 256, 3 lr values;
results/leaderboard-vision-gpu/), ``--preset quick`` (tests). Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist`` or ``$RESLAB_DATA`` (see reslab.data.images).
"""
from __future__ import annotations

from pathlib import Path

from . import Experiment
from .common import train_config, with_
from .leaderboard_lm import leaderboard_verdict, registry_schemes, run_leaderboard

DEPTH_KEY = {"vit": "n_layer", "resnet": "depth"}


def buildable(specs: list[str], model: str, model_args: dict, depth: int, log) -> tuple[list[str], dict[str, str]]:
    """The specs that build and run a forward pass inside ``model`` at ``depth``; the others with the reason."""
    import torch

    from ..models import build_model

    info = {"input_shape": (1, 28, 28), "n_classes": 10}
    keep, skipped = [], {}
    for spec in specs:
        try:
            m = build_model(model, info, spec, **(model_args | {DEPTH_KEY[model]: depth}))
            m(torch.zeros(2, 1, 28, 28))
        except (ValueError, TypeError, RuntimeError, NotImplementedError) as e:
            skipped[spec] = f"does not build inside {model}: {type(e).__name__}: {e}"
            log(f"skipping {spec!r}: {skipped[spec]}")
            continue
        keep.append(spec)
    return keep, skipped


def run(s: dict, out: Path, log) -> dict:
    model = s.get("model", "vit")
    base = train_config("fashion_mnist", model, **s["train"])
    specs, skipped = buildable(s.get("schemes") or registry_schemes(), model, base.model_args, min(s["depths"]), log)
    key = DEPTH_KEY[model]
    configs_at = {f"{key}={n}": {spec: with_(base, connection=spec, model_args={key: n}) for spec in specs}
                  for n in s["depths"]}
    res = run_leaderboard(configs_at, s, out, log, unit="images", per_step=base.batch_size, skipped=skipped,
                          title=f"Fashion-MNIST {model} leaderboard ({base.steps} steps, batch {base.batch_size})")
    res |= {"steps": base.steps, "model": model, "model_args": base.model_args, "task_args": base.task_args,
            "schemes": specs}
    return res


def verdict(res: dict) -> tuple[str, str]:
    return leaderboard_verdict(res)


def _train(steps, batch, eval_every, eval_batches, model_args, task_args=None, lr=1e-3):
    return dict(steps=steps, batch_size=batch, lr=lr, warmup_steps=max(5, steps // 20), eval_every=eval_every,
                eval_batches=eval_batches, log_every=max(1, eval_every // 2), weight_decay=0.05, threads=1,
                model_args=model_args, task_args=task_args or {})


EXPERIMENT = Experiment(
    name="leaderboard-vision",
    paper="all registered schemes (residual, plain, scaled/rezero/skipinit/layerscale, LAuReL, ANCRe, DenseFormer, "
          "Hyper-Connections, mHC, Frac-Connections, Attention Residuals, MUDDFormer)",
    claim="Leaderboard, not one paper's claim. Tested: at equal steps and each scheme's own tuned learning rate, some "
          "scheme has a significantly lower final validation loss than residual (two-sided Welch over seeds, "
          "Holm-Bonferroni across the schemes at each depth, adjusted p < 0.05) on Fashion-MNIST, at each of two depths.",
    paper_number="each paper reports gains over residual at its own (much larger) scale; no number is held against here",
    presets={
        "quick": dict(seeds=2, depths=[1, 2], tune={"lr": [1e-3, 3e-3]}, model="vit",
                      schemes=["residual", "plain", "hyper"],
                      train=_train(steps=6, batch=8, eval_every=3, eval_batches=1,
                                   model_args={"patch_size": 7, "d_model": 16, "n_head": 2},
                                   task_args={"n_train": 256, "n_val": 64})),
        # 14 schemes x 2 depths x (3 tuning, + 1 past a winning edge, + 4 seeds) ~ 210 runs, validation on the whole
        # 2000-image split (125 batches, in order): ~45 min on one thread, in two parts of two seeds each (a 4-layer
        # ViT step at batch 16 is ~80 ms for residual, ~420 ms for mhc in its matrix form, before 2026-12-03). The
        # 2-point grid of 2026-11-29 had 13 of 14 schemes at its top.
        "cpu": dict(seeds=4, depths=[2, 4], tune={"lr": [1e-3, 3e-3, 1e-2], "extend": 1}, model="vit", parts=2,
                    train=_train(steps=300, batch=16, eval_every=100, eval_batches=-(-2000 // 16),
                                 model_args={"patch_size": 7, "d_model": 48, "n_head": 4},
                                 task_args={"n_train": 20000, "n_val": 2000})),
        "gpu": dict(seeds=3, depths=[6, 12], tune={"lr": [3e-4, 1e-3, 3e-3]}, model="vit",
                    train=_train(steps=20000, batch=256, eval_every=1000, eval_batches=40,
                                 model_args={"patch_size": 4, "d_model": 192, "n_head": 3})),
    },
    run=run, verdict=verdict,
    notes="Schemes: every registered connection's registry example spec that builds inside the model, residual the "
          "baseline. AdamW (weight decay 0.05), warmup + cosine to 0.1x, grad clip 1; lr tuned per scheme on seed 1000 "
          "from the same grid by final validation loss, then seeds 0..n-1 at that lr. images/s from the median training "
          "step on the machine that ran it (cpu preset: a shared 2-core machine, one torch thread).",
)
