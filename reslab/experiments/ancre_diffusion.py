"""ANCRe's diffusion claim at CPU scale: a DiT whose blocks are wired by ANCRe reaches a lower
denoising loss and better samples than the same DiT with the plain residual stream.

Paper (Zhang et al. 2026, arXiv:2602.09009, section 5.2, numbers from the official README): DiT-S/2 on
ImageNet 256 latents, 400K steps, FID-50K 69.40 -> 66.01 with ANCRe (DiT-B/2 44.31 -> 41.66), with
tau = 0.1 in the newest scripts (0.01 earlier). The official DiT+ANCRe keeps every adaLN-Zero block
unmodified and adds the learned shortcuts on top, i.e. ``ancre(form=repo)``, reslab's default.

Here: class-conditional DDPM (epsilon prediction, linear schedule, T = 1000) on Fashion-MNIST
average-pooled to 14x14 (cpu preset), a DiT with patch 2 (49 tokens), arms ``residual``,
``ancre(tau=0.1)`` and (quick and gpu presets) ``ancre(tau=0.01)`` with the same data order, steps and seeds.
Metrics:

* held-out denoising loss: the epsilon-MSE of the EMA weights on the official test images, averaged
  over a fixed set of timesteps and seeded noise draws (the trainer's validation loss for DiT);
* ``fd_cls``: the Fréchet distance between DDIM samples (EMA weights, no guidance as in the paper's
  CFG 1.0 table, each step's x0 prediction clipped to the pixel range as pixel-space DDPM does) and
  held-out test images in the features of reslab's own small Fashion-MNIST CNN
  (:mod:`reslab.analysis.frechet`) -- *not* FID, and not comparable with the paper's numbers.

Verdict (:func:`verdict`): per tau, each metric counts when it is significantly lower than the residual's
(Welch over seeds, p < 0.05 divided by the number of taus tried). ``reproduced``: some tau lowers both;
``partial``: one of them; ``not reproduced``: neither.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
import torch

from . import Experiment

PAPER_RELATIVE_FID_GAIN = (69.40 - 66.01) / 69.40  # DiT-S/2, README table

def _train(steps, batch, warmup, eval_every, eval_batches, task_args, model_args, lr=2e-3, threads=0):
    """The TrainConfig settings every arm shares (AdamW, no weight decay, warmup + cosine to 0.1x, clipping 1)."""
    return dict(steps=steps, batch_size=batch, lr=lr, weight_decay=0.0, min_lr_ratio=0.1, grad_clip=1.0,
                warmup_steps=warmup, eval_every=eval_every, eval_batches=eval_batches,
                log_every=max(1, eval_every // 5), threads=threads, task_args=task_args, model_args=model_args)


def _sampling(n_samples, ddim_steps, grid_per_class):
    return dict(sampler="ddim", eta=0.0, cfg_scale=1.0, clip_x0=True, sample_seed=1234, n_samples=n_samples,
                ddim_steps=ddim_steps, grid_per_class=grid_per_class)


def _classifier(steps, n_train):
    return dict(seed=0, batch=128, steps=steps, n_train=n_train)


_ARMS = dict(arms=["residual", "ancre(tau=0.1)", "ancre(tau=0.01)"], baseline="residual")

PRESETS = {
    "quick": dict(_ARMS, seeds=2,
                  train=_train(steps=20, batch=16, warmup=5, eval_every=10, eval_batches=2,
                               task_args={"n_train": 256, "n_val": 64, "resize": 8},
                               model_args={"patch_size": 2, "d_model": 32, "n_layer": 2, "n_head": 2, "ema_decay": 0.9,
                                           "eval_timesteps": 4}),
                  sampling=_sampling(n_samples=30, ddim_steps=8, grid_per_class=2),
                  classifier=_classifier(steps=20, n_train=256)),
    # tau = 0.1 only (the official scripts' newest value; the gpu preset tries both), 500 steps with an EMA whose
    # horizon (200 steps) fits them, DDIM-25 samples. At 700 steps the preset took 79 min and both arms chose 8e-3 of
    # [2e-3, 4e-3, 8e-3] (+2e-2 worse), so the grid is centred there: a shorter run tends to want a larger lr.
    # 4 seeds in two parts of 2 (part 1 also trains the 6-8 tuning runs; the part that finds every run finished
    # trains the fd_cls classifier and samples). The denoise MSE reads 24 batches of 64 test images (1,536) x 10
    # timesteps, at steps 250 and 500 (until 2026-11-30 it read 8 batches at four evaluations).
    "cpu": dict(_ARMS, arms=["residual", "ancre(tau=0.1)"], seeds=4, parts=2,
                tune={"lr": [4e-3, 8e-3, 1.6e-2], "extend": 1},  # every arm's lr from the same grid (+1 past an edge)
                train=_train(steps=500, batch=64, warmup=50, eval_every=250, eval_batches=24, task_args={"resize": 14},
                             model_args={"patch_size": 2, "d_model": 64, "n_layer": 6, "n_head": 4, "ema_decay": 0.995,
                                         "eval_timesteps": 10}, threads=1),
                sampling=_sampling(n_samples=1000, ddim_steps=25, grid_per_class=8),
                classifier=_classifier(steps=1500, n_train=None)),
    "gpu": dict(_ARMS, seeds=3, tune={"lr": [1.5e-4, 3e-4, 6e-4], "extend": 1},
                train=_train(steps=40000, batch=256, warmup=1000, eval_every=2000, eval_batches=40,
                             task_args={"resize": 16},
                             model_args={"patch_size": 2, "d_model": 384, "n_layer": 12, "n_head": 6,
                                         "ema_decay": 0.9999, "eval_timesteps": 20}, lr=3e-4),
                sampling=_sampling(n_samples=10000, ddim_steps=100, grid_per_class=10),
                classifier=_classifier(steps=4000, n_train=None)),
}


def _load_model(cfg, task_info: dict, run_dir: Path):
    from ..models import build_model

    model = build_model("dit", task_info, cfg.connection, **cfg.model_args)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval()


def _sample_pixels(model, n: int, s: dict, mean: float, std: float, chunk: int = 250) -> torch.Tensor:
    """n samples with labels 0,1,..,9,0,1,.. from one seeded generator (the same for every arm and seed),
    mapped back to pixels in [0, 1]; ``s``: the preset's ``sampling`` fields."""
    g = torch.Generator().manual_seed(s["sample_seed"])
    labels = torch.arange(n) % model.n_classes
    # pixels live in [0, 1], i.e. [-mean/std, (1-mean)/std] in the task's standardised space
    clip = (-mean / std, (1 - mean) / std) if s["clip_x0"] else None
    out = []
    for i in range(0, n, chunk):
        x = model.sample(labels[i:i + chunk], sampler=s["sampler"], steps=s["ddim_steps"], eta=s["eta"],
                         cfg_scale=s["cfg_scale"], generator=g, clip_x0=clip)
        out.append((x * std + mean).clamp(0, 1))
    return torch.cat(out)


def save_grid(pixels: torch.Tensor, path: Path, per_class: int, n_classes: int = 10, title: str = "") -> None:
    """A grid with one column per class (samples were drawn with labels i % n_classes) and ``per_class`` rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = pixels.shape[-1]
    rows = min(per_class, pixels.shape[0] // n_classes)
    grid = np.ones((rows * (side + 1) + 1, n_classes * (side + 1) + 1))
    for r in range(rows):
        for c in range(n_classes):
            img = pixels[r * n_classes + c, 0].numpy()
            grid[1 + r * (side + 1):1 + r * (side + 1) + side, 1 + c * (side + 1):1 + c * (side + 1) + side] = img
    fig, ax = plt.subplots(figsize=(n_classes * 0.6 + 0.4, rows * 0.6 + 0.6))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_metrics(per_arm: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "denoise_loss", "held-out denoising MSE (EMA; lower is better)"),
                           (axes[1], "fd_cls", "Fréchet distance, classifier features (lower is better)")):
        for i, (arm, d) in enumerate(per_arm.items()):
            vals = [v for v in d[key] if math.isfinite(v)]
            if not vals:
                continue
            # mean ± std over seeds (the error bar the verdict's Welch test reads), every seed beside it as a dot
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            ax.errorbar([i], [statistics.fmean(vals)], yerr=[sd], fmt="s", capsize=6, color="k", zorder=3)
            ax.scatter([i + 0.12] * len(vals), vals, alpha=0.6, s=14)
        ax.set_xticks(range(len(per_arm)), list(per_arm), rotation=15, fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(settings: dict, out: Path, log) -> dict:
    from ..analysis import frechet
    from ..analysis.topology import plot_routing, routing_matrix
    from ..compare import slug
    from ..data import get_task
    from ..report import mean_std, welch_p
    from .common import train_config
    from .runner import build_configs, run_cells

    t, s, c = settings["train"], settings["sampling"], settings["classifier"]
    if t.get("threads"):  # also for the classifier, sampling and fd_cls, which run outside the trainer
        torch.set_num_threads(t["threads"])
    base = train_config("fashion_mnist", "dit", **t)
    configs = build_configs(base, {arm: {"connection": arm} for arm in settings["arms"]})
    run_cells({".": configs}, settings["seeds"], out, settings["baseline"], log, tune=settings.get("tune"),
              title=lambda _: f"fashion_mnist / dit: {settings['seeds']} seed(s), {t['steps']} steps")
    report = json.loads((out / "results.json").read_text())
    task = get_task("fashion_mnist", **t["task_args"])
    mean, std = task.info["mean"], task.info["std"]
    net, meta = frechet.fashion_classifier(task.info["input_shape"][-1], steps=c["steps"], n_train=c["n_train"],
                                           seed=c["seed"], batch_size=c["batch"], lr=c.get("lr", 2e-3),
                                           cache_dir=c.get("cache"), log=log)
    n = min(s["n_samples"], task.val_x.shape[0], task.train_x.shape[0])
    ref = frechet.feature_stats(frechet.features(net, task.val_x * std + mean))  # every held-out image
    # the floor: n *real* training images against the same reference (what a perfect model would score)
    g = torch.Generator().manual_seed(s["sample_seed"])
    real = task.train_x[torch.randperm(task.train_x.shape[0], generator=g)[:n]] * std + mean
    fd_real = frechet.fd_between(net, real, ref)
    log(f"fd_cls of {n} real training images vs the test set (floor): {fd_real:.3f}")

    per_arm: dict[str, dict] = {}
    for arm in report["arms"]:
        runs = report["runs"][arm]
        d = {"seeds": [], "denoise_loss": [], "fd_cls": [], "status": []}
        for r in runs:
            cfg = dataclasses.replace(configs[arm], seed=r["seed"])
            run_dir = out / slug(arm) / f"seed{r['seed']}"
            d["seeds"].append(r["seed"])
            d["status"].append(r["status"])
            if r["status"] != "completed":
                d["denoise_loss"].append(math.nan)
                d["fd_cls"].append(math.nan)
                continue
            model = _load_model(cfg, task.info, run_dir)
            pixels = _sample_pixels(model, n, s, mean, std)
            fd = frechet.fd_between(net, pixels, ref)
            d["denoise_loss"].append(r["final_val_loss"])
            d["fd_cls"].append(fd)
            log(f"[{arm} seed {r['seed']}] held-out denoise MSE {r['final_val_loss']:.4f}  fd_cls {fd:.3f}")
            if r["seed"] == runs[0]["seed"]:
                save_grid(pixels, out / f"samples_{slug(arm)}.png", s["grid_per_class"],
                          title=f"{arm}, seed {r['seed']}: DDIM-{s['ddim_steps']} samples, columns = classes")
                if model.connection.name == "ancre":
                    for m in routing_matrix(model).values():
                        plot_routing(m, out / f"routing_{slug(arm)}.png", title=f"{arm}: learned routing p_ij")
        for key in ("denoise_loss", "fd_cls"):
            d[f"{key}_mean"], d[f"{key}_std"] = mean_std(d[key])
        per_arm[arm] = d
    res = per_arm[settings["baseline"]]
    for arm, d in per_arm.items():
        if arm != settings["baseline"]:
            d["welch_p_denoise_loss"] = welch_p(d["denoise_loss"], res["denoise_loss"])
            d["welch_p_fd_cls"] = welch_p(d["fd_cls"], res["fd_cls"])
    _plot_metrics(per_arm, out / "metrics.png",
                  f"DiT on Fashion-MNIST {task.info['input_shape'][-1]}x{task.info['input_shape'][-1]}, "
                  f"{t['steps']} steps, {settings['seeds']} seeds: mean ± std (dots: seeds)")
    results = {
        "baseline": settings["baseline"], "arms": report["arms"], "seeds": settings["seeds"], "per_arm": per_arm,
        "rows": report["rows"], "fd_real_floor": fd_real, "n_samples": n, "n_reference": int(task.val_x.shape[0]),
        "image_size": task.info["input_shape"][-1],
        "classifier": {k: v for k, v in meta.items() if k != "path"},
        "paper_relative_fid_gain": PAPER_RELATIVE_FID_GAIN,
    }
    verdict_, why = verdict(results)
    _write_readme(out, settings, results, verdict_, why)
    return results


def verdict(results: dict) -> tuple[str, str]:
    """Per tau, on its own: denoise MSE and fd_cls each significantly lower than the baseline's (Welch, with a
    Bonferroni correction over the taus tried: p < 0.05 / n_taus), each with a stated effect: when a difference is
    not significant and its CI still reaches that effect, the check is untestable at this scale, not failed. fd_cls's
    effect is the paper's relative FID gain times the baseline's fd_cls. The paper gives no number for the
    denoising loss, so its yardstick is the same relative gain times the baseline's denoise MSE (a lower loss that
    buys a 4.9 % better FID; a smaller gain could exist and go unseen, which the text says). Reproduced: some tau
    lowers both; partial: some tau lowers one; not reproduced: none, with at least one tested; fewer than 2 seeds:
    inconclusive."""
    from .common import ALPHA, decide, resolvable_difference, significantly

    base = results["per_arm"][results["baseline"]]
    taus = [a for a in results["per_arm"] if a != results["baseline"]]
    alpha = ALPHA / max(1, len(taus))
    per_tau, lines = [], []
    for arm in taus:
        d = results["per_arm"][arm]
        gain = results["paper_relative_fid_gain"]
        ok_mse, power_mse = resolvable_difference(d["denoise_loss"], base["denoise_loss"], "lower",
                                                  gain * base["denoise_loss_mean"], alpha=alpha)
        oks = {"denoise_loss": (ok_mse, significantly(d["denoise_loss"], base["denoise_loss"], "lower", alpha=alpha)[1])}
        ok, power = resolvable_difference(d["fd_cls"], base["fd_cls"], "lower", gain * base["fd_cls_mean"], alpha=alpha)
        oks["fd_cls"] = (ok, significantly(d["fd_cls"], base["fd_cls"], "lower", alpha=alpha)[1])
        rel = (base["fd_cls_mean"] - d["fd_cls_mean"]) / base["fd_cls_mean"] if base["fd_cls_mean"] else math.nan
        fmt = lambda p: "n/a" if p is None else f"{p:.2g}"  # noqa: E731
        lines.append(f"{arm}: denoise MSE {d['denoise_loss_mean']:.4f} vs {base['denoise_loss_mean']:.4f} (p "
                     f"{fmt(oks['denoise_loss'][1])}; MSE {power_mse}, the paper's relative FID gain as yardstick), fd_cls {d['fd_cls_mean']:.3f} vs {base['fd_cls_mean']:.3f} (p "
                     f"{fmt(oks['fd_cls'][1])}; {100 * rel:+.1f}%, the paper's FID {100 * results['paper_relative_fid_gain']:+.1f}%; "
                     f"fd_cls {power})")
        per_tau.append(oks)
    # the claim: some tau (the paper tunes it) lowers both; each metric is a check, passed by the best tau
    best = max(per_tau, key=lambda o: (sum(bool(ok) for ok, _ in o.values()),
                                       -sum(ok is False for ok, _ in o.values()))) if per_tau else {}
    checks = [(f"{k} significantly lower (p < {alpha:.3g}, Bonferroni over {len(taus)} taus)",
               best[k][0] if best else None, "best tau") for k in ("denoise_loss", "fd_cls")]
    v, text = decide(checks)
    return v, text + ". " + "; ".join(lines) + f". Real-data fd_cls floor {results['fd_real_floor']:.3f}."


def _write_readme(out: Path, settings: dict, results: dict, verdict_: str, why: str) -> None:
    from ..compare import slug
    from .runner import lr_text, write_readme

    t, s = settings["train"], settings["sampling"]
    rows = ["| arm | held-out denoise MSE (mean ± std) | fd_cls (mean ± std) | per seed (MSE / fd_cls) "
            "| Welch p (MSE, fd) |",
            "|---|---|---|---|---|"]
    for arm, d in results["per_arm"].items():
        per_seed = ", ".join(f"{a:.4f} / {b:.3f}" for a, b in zip(d["denoise_loss"], d["fd_cls"]))
        p = "—" if arm == results["baseline"] else ", ".join(
            "—" if d[k] is None else f"{d[k]:.3g}" for k in ("welch_p_denoise_loss", "welch_p_fd_cls"))
        rows.append(f"| `{arm}` | {d['denoise_loss_mean']:.4f} ± {d['denoise_loss_std']:.4f} | "
                    f"{d['fd_cls_mean']:.3f} ± {d['fd_cls_std']:.3f} | {per_seed} | {p} |")
    side = results["image_size"]
    clf = results["classifier"]
    setup = f"""Claim (ANCRe, arXiv:2602.09009 §5.2): ANCRe lowers the denoising loss and improves sample quality of
DiT (DiT-S/2 FID-50K 69.40 → 66.01 on ImageNet 256, relative {100 * results['paper_relative_fid_gain']:.1f}%).

Setup: {t['steps']} steps, batch {t['batch_size']}, AdamW {lr_text(t, settings)} (warmup {t['warmup_steps']}, cosine), no weight
decay, EMA {t['model_args'].get('ema_decay')}; DiT {t['model_args']}; {settings['seeds']} seeds, paired data order.
Denoise MSE: EMA weights on {t['eval_batches'] * t['batch_size']:,} test images ({t['eval_batches']} batches of
{t['batch_size']}), {t['model_args'].get('eval_timesteps')} fixed timesteps × seeded noise.
fd_cls: {results['n_samples']} DDIM-{s['ddim_steps']} samples (eta {s['eta']}, no guidance, x0 clipped to
the pixel range: {s['clip_x0']}) vs all
{results['n_reference']} test images, in the {clf.get('feature_dim')}-d features of reslab's Fashion-MNIST CNN
(test accuracy {clf.get('test_accuracy', float('nan')):.3f}) — **not FID**. Floor (real training images vs test):
{results['fd_real_floor']:.3f}."""
    write_readme(out / "README.md", f"ancre-diffusion: DiT residual vs ANCRe on Fashion-MNIST {side}x{side}", verdict_,
                 why, [setup, "\n".join(rows)], settings,
                 [("metrics", "metrics.png"), ("curves", "curves.png")]
                 + [(arm, f"samples_{slug(arm)}.png") for arm in results["arms"]])


EXPERIMENT = Experiment(
    name="ancre-diffusion",
    paper="Zhang, Li, He, Giannakis 2026, ANCRe (arXiv:2602.09009), §5.2",
    claim="A DiT wired by ANCRe (tau 0.1; the gpu preset also tries 0.01) reaches a lower denoising loss and a lower Fréchet distance "
          "of its samples than the same DiT with residual connections, at equal steps.",
    paper_number="DiT-S/2, ImageNet 256, 400K steps: FID-50K 69.40 -> 66.01 (DiT-B/2 44.31 -> 41.66)",
    presets=PRESETS,
    run=run,
    verdict=verdict,
    notes="Fréchet distance in the features of a small CNN reslab trains on Fashion-MNIST (fd_cls), not FID; "
          "14x14 images (2x2 average pooling) in the cpu preset; fixed-variance epsilon prediction (DiT also "
          "learns Sigma).",
    tags=["ancre", "dit", "diffusion"],
)

