"""rex-normfree: residual scaling lets deep ResNets train without normalisation (Dherin & Munn 2025).

Claim (arXiv:2510.03470; digest /work/shared/papers/rex.md §1.5, §3): by the Residual Expansion
Theorem a tower of n modules x <- x + λ g_k(x) is an ensemble of C(n, k) paths of length k weighted by
λ^k, so its output grows like (1 + λc)^n. Unscaled (λ = 1) deep nets without normalisation therefore
explode and fail, or degrade with depth, while λ = 1/sqrt(n) and λ = 1/n train stably at every depth
(the paper trains 1000 layers on CIFAR-10); λ = 1/n costs accuracy against BatchNorm.

Arms, on Fashion-MNIST ResNets (reslab.models.ResNet, 6n_b+2 layers) at several depths, same optimiser,
LR and schedule for all:

    batchnorm        residual + BatchNorm (the normalised baseline)
    lam=1            residual, no normalisation (unscaled)
    lam=1/sqrt(n)    scaled(lam=1/sqrt(N)), no normalisation
    lam=1/n          scaled(lam=1/N), no normalisation
    rezero, skipinit learned λ initialised to 0, no normalisation
    fixup            Fixup initialisation (ResNet(fixup=True)), no normalisation

Which n. The theorem's n counts every residual addition of the tower, so λ is set from the whole
network, N = 3 n_b residual branches (Fixup's L), not per stage, and given to ``scaled`` as a constant.
The two downsampling blocks are not wired by a connection and stay unscaled (2 of N).

Verdict (code: :func:`verdict`). A: the unscaled arm *fails* at the deepest depth (a diverged seed, or
mean accuracy < ``FAIL_ACC``) or *degrades with depth* (mean accuracy at the deepest depth more than
``DEGRADE`` below the shallowest). B: both λ = 1/sqrt(n) and λ = 1/n train at every depth (no
diverged seed, mean accuracy >= ``FAIL_ACC``) without degrading with depth (same ``DEGRADE``
tolerance). Reproduced = A and B; partial = one of them; not reproduced = neither. The gap of every
arm to BatchNorm is reported, and whether λ = 1/n costs accuracy (gap below -``GAP_TOL``), as the paper says.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..compare import slug, train_or_reuse
from ..report import mean_std, plot_curves, summarize_arms
from ..train import TrainConfig
from . import Experiment

CHANCE = 0.1
FAIL_ACC = 0.5  # below this a 10-class net has not learned the task: 5x chance
DEGRADE = 0.02  # accuracy lost from the shallowest to the deepest depth that counts as degradation
GAP_TOL = 0.01  # accuracy below BatchNorm that counts as "costs accuracy"
BASELINE = "batchnorm"
ARMS = ("batchnorm", "lam=1", "lam=1/sqrt(n)", "lam=1/n", "rezero", "skipinit", "fixup")


def arm_config(arm: str, depth: int) -> tuple[str, dict]:
    """(connection spec, extra ResNet args) of an arm at a depth."""
    n_branches = 3 * ((depth - 2) // 6)  # N: every residual branch of the net, downsampling ones included
    table = {
        "batchnorm": ("residual", {"batchnorm": True}),
        "lam=1": ("residual", {"batchnorm": False}),
        "lam=1/sqrt(n)": (f"scaled(lam={n_branches ** -0.5:.6g})", {"batchnorm": False}),
        "lam=1/n": (f"scaled(lam={1.0 / n_branches:.6g})", {"batchnorm": False}),
        "rezero": ("rezero", {"batchnorm": False}),
        "skipinit": ("skipinit", {"batchnorm": False}),
        "fixup": ("residual", {"fixup": True}),
    }
    if arm not in table:
        raise ValueError(f"rex-normfree: unknown arm {arm!r}; valid: {', '.join(table)}")
    return table[arm]


def run(settings: dict, out_dir: Path, log) -> dict:
    depths = list(settings["depths"])
    arms = list(settings.get("arms", ARMS))
    if BASELINE not in arms:
        raise ValueError(f"rex-normfree: the arms must include the baseline {BASELINE!r}")
    base = dict(task="fashion_mnist", task_args=settings["task_args"], model="resnet", steps=settings["steps"],
                batch_size=settings["batch_size"], lr=settings["lr"], warmup_steps=settings["warmup_steps"],
                weight_decay=settings["weight_decay"], eval_every=settings["eval_every"],
                eval_batches=settings["eval_batches"], threads=settings.get("threads", 0), progress=False,
                tensorboard=False)
    per_depth = {}
    for depth in depths:
        runs: dict[str, list[dict]] = {}
        for arm in arms:
            spec, extra = arm_config(arm, depth)
            runs[arm] = []
            for seed in range(settings["seeds"]):
                log(f"[depth {depth}] {arm} ({spec}, {extra}) seed {seed}")
                cfg = TrainConfig(**base, connection=spec, seed=seed,
                                  model_args={"depth": depth, "width": settings["width"], **extra},
                                  out_dir=str(out_dir / f"depth{depth}" / slug(arm) / f"seed{seed}"))
                s = train_or_reuse(cfg, log)
                runs[arm].append({k: v for k, v in s.items() if k != "config"} | {"connection": spec})
                if s.get("status") == "completed":
                    log(f"  val acc {s['final_val_metric']:.4f}, val loss {s['final_val_loss']:.4f}")
        plot_curves(runs, out_dir / f"curves_depth{depth}.png",
                    title=f"rex-normfree: ResNet-{depth} on Fashion-MNIST, no normalisation except '{BASELINE}'")
        rows = summarize_arms(runs, BASELINE)
        per_depth[str(depth)] = {
            "arms": {arm: {"connection": arm_config(arm, depth)[0], "model_extra": arm_config(arm, depth)[1],
                           "acc": [r.get("final_val_metric") for r in rs],
                           "val_loss": [r.get("final_val_loss") for r in rs],
                           "status": [r.get("status") for r in rs],
                           "steps_done": [r.get("steps") for r in rs],
                           "median_step_time": [r.get("median_step_time") for r in rs],
                           "params": rs[0].get("params") if rs else None,
                           "curve": [r.get("curve") for r in rs]}
                     for arm, rs in runs.items()},
            "rows": [{k: v for k, v in r.items() if k not in ("val_loss",)} for r in rows],
        }
    results = {"depths": depths, "arms": arms, "baseline": BASELINE, "per_depth": per_depth,
               "thresholds": {"fail_acc": FAIL_ACC, "degrade": DEGRADE, "gap_tol": GAP_TOL, "chance": CHANCE}}
    results["table"] = accuracy_table(results)
    _plot_accuracy(results, out_dir / "accuracy_vs_depth.png")
    v, why = verdict(results)
    (out_dir / "README.md").write_text(_readme(results, settings, v, why))
    return results


def _acc_stats(results: dict, depth, arm: str) -> dict:
    a = results["per_depth"][str(depth)]["arms"][arm]
    ok = [x for x, s in zip(a["acc"], a["status"]) if s == "completed" and x is not None]
    m, sd = mean_std(ok)
    return {"mean": m, "std": sd, "n_ok": len(ok), "diverged": sum(s == "diverged" for s in a["status"]),
            "seeds": len(a["status"])}


def accuracy_table(results: dict) -> list[dict]:
    """One row per (arm, depth): mean ± std accuracy, diverged seeds, gap to BatchNorm."""
    rows = []
    for arm in results["arms"]:
        for d in results["depths"]:
            st = _acc_stats(results, d, arm)
            bn = _acc_stats(results, d, results["baseline"])["mean"]
            gap = st["mean"] - bn if math.isfinite(st["mean"]) and math.isfinite(bn) else None
            rows.append({"arm": arm, "depth": d, "acc_mean": st["mean"], "acc_std": st["std"],
                         "diverged": st["diverged"], "seeds": st["seeds"], "gap_to_bn": gap})
    return rows


def _fails(st: dict) -> bool:
    return st["diverged"] > 0 or not (st["mean"] >= FAIL_ACC)  # NaN mean (all diverged) fails too


def _accs(results: dict, depth, arm: str) -> list[float]:
    a = results["per_depth"][str(depth)]["arms"][arm]
    return [x for x, s in zip(a["acc"], a["status"]) if s == "completed" and x is not None]


def verdict(results: dict) -> tuple[str, str]:
    """(A) unscaled λ=1 without BN fails at the deepest depth (a diverged seed or accuracy < FAIL_ACC) or degrades
    with depth (significantly below the shallowest depth, Welch p < 0.05, by more than DEGRADE); (B) 1/sqrt(n) and
    1/n train stably: no failure at any depth and the deepest depth non-inferior to the shallowest within DEGRADE
    (95% CI). Fewer than 2 seeds: untestable."""
    from .common import decide, noninferior, significantly

    depths = results["depths"]
    lo, hi = depths[0], depths[-1]
    notes = []
    un_lo, un_hi = _acc_stats(results, lo, "lam=1"), _acc_stats(results, hi, "lam=1")
    fails = _fails(un_hi)
    sig, p = significantly(_accs(results, hi, "lam=1"), _accs(results, lo, "lam=1"), "lower")
    degrades = bool(sig) and un_hi["mean"] < un_lo["mean"] - DEGRADE
    a = True if fails or degrades else (None if sig is None else False)
    checks = [("A unscaled λ=1 without BN fails or degrades with depth", a,
               f"depth {lo}: {_desc(un_lo)}, depth {hi}: {_desc(un_hi)}, Welch p={'n/a' if p is None else f'{p:.2g}'}"
               + (" [fails]" if fails else "") + (" [degrades]" if degrades else ""))]
    oks, texts = [], []
    for arm in ("lam=1/sqrt(n)", "lam=1/n"):
        sts = {d: _acc_stats(results, d, arm) for d in depths}
        if any(_fails(st) for st in sts.values()):
            ok, text = False, "fails at some depth"
        else:
            ok, text = noninferior(_accs(results, hi, arm), _accs(results, lo, arm), DEGRADE, higher_better=True)
        oks.append(ok)
        texts.append(f"{arm}: " + ", ".join(f"d{d} {_desc(st)}" for d, st in sts.items()) + f" (d{hi} vs d{lo}: {text})")
    b = False if False in oks else (True if all(o is True for o in oks) else None)
    checks.append(("B 1/sqrt(n) and 1/n train stably at every depth", b, "; ".join(texts)))
    v, text = decide(checks)
    for arm in results["arms"]:
        if arm == results["baseline"]:
            continue
        gaps = [r["gap_to_bn"] for r in results["table"] if r["arm"] == arm]
        notes.append(f"{arm} " + "/".join("—" if g is None else f"{g:+.3f}" for g in gaps))
    inv_n = [r["gap_to_bn"] for r in results["table"] if r["arm"] == "lam=1/n" and r["gap_to_bn"] is not None]
    if inv_n:
        costs = statistics.fmean(inv_n) < -GAP_TOL
        notes.append(f"λ=1/n {'costs' if costs else 'does not cost'} accuracy vs BatchNorm "
                     f"(mean gap {statistics.fmean(inv_n):+.3f}; the paper reports a cost)")
    return v, text + f". Gap to BatchNorm (accuracy, depths {'/'.join(map(str, depths))}): " + "; ".join(notes) + \
        ". Trained with AdamW + clipping, not the paper's SGD with momentum and no clipping (the Trainer has no SGD option yet)."


def _desc(st: dict) -> str:
    acc = "—" if not math.isfinite(st["mean"]) else f"{st['mean']:.3f}"
    return acc + (f" ({st['diverged']}/{st['seeds']} diverged)" if st["diverged"] else "")


def _plot_accuracy(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    depths = results["depths"]
    for arm in results["arms"]:
        sts = [_acc_stats(results, d, arm) for d in depths]
        line = ax.errorbar(depths, [s["mean"] for s in sts], yerr=[s["std"] for s in sts], fmt="o-", label=arm,
                           capsize=3)
        for d, s in zip(depths, sts):
            if s["diverged"]:
                y = s["mean"] if math.isfinite(s["mean"]) else CHANCE
                ax.plot([d], [y], "x", ms=10, color=line[0].get_color())
    ax.axhline(CHANCE, ls=":", color="grey")
    ax.set_xlabel("ResNet depth")
    ax.set_ylabel("val accuracy (x: a seed diverged)")
    ax.set_title("rex-normfree: Fashion-MNIST, no normalisation except batchnorm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _readme(results: dict, settings: dict, v: str, why: str) -> str:
    depths = results["depths"]
    lines = ["# rex-normfree: normalisation-free ResNets with residual scaling (Dherin & Munn 2025)", "",
             f"**Verdict: {v}** — {why}", "",
             "Validation accuracy, mean ± std over seeds (Δ = gap to BatchNorm; † = diverged seeds):", "",
             "| arm | " + " | ".join(f"ResNet-{d}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for arm in results["arms"]:
        cells = []
        for d in depths:
            r = next(x for x in results["table"] if x["arm"] == arm and x["depth"] == d)
            acc = "—" if not math.isfinite(r["acc_mean"]) else f"{r['acc_mean']:.3f} ± {r['acc_std']:.3f}"
            gap = "" if r["gap_to_bn"] is None or arm == results["baseline"] else f" (Δ {r['gap_to_bn']:+.3f})"
            div = f" †{r['diverged']}/{r['seeds']}" if r["diverged"] else ""
            cells.append(acc + gap + div)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Connections used: " + "; ".join(
        f"depth {d}: " + ", ".join(f"{a} = `{results['per_depth'][str(d)]['arms'][a]['connection']}`"
                                   for a in results["arms"] if a.startswith("lam=1/")) for d in depths), "",
              f"Settings: `{json.dumps(settings)}`", "", "![accuracy vs depth](accuracy_vs_depth.png)", ""]
    lines += [f"![curves depth {d}](curves_depth{d}.png)" for d in depths]
    return "\n".join(lines) + "\n"


_COMMON = dict(lr=2e-3, weight_decay=5e-4)

EXPERIMENT = Experiment(
    name="rex-normfree",
    paper="Dherin & Munn 2025, On residual network depth (arXiv:2510.03470)",
    claim="Without normalisation, unscaled ResNets (λ = 1) fail or degrade with depth, while scaling every "
          "residual branch by λ = 1/sqrt(n) or 1/n trains stably at every depth; 1/n costs accuracy against "
          "BatchNorm.",
    paper_number="CIFAR-10, up to 1000 layers without normalisation: 1/n and 1/sqrt(n) stable, 1/sqrt(n) > 1/n, "
                 "both below the BatchNorm baselines of Table 1 (numbers not readable; digest §3)",
    presets={
        "quick": dict(depths=[8, 14], width=0.25, seeds=1, steps=30, batch_size=32, warmup_steps=5, eval_every=15,
                      eval_batches=4, task_args={"n_train": 512, "n_val": 256, "resize": 14}, **_COMMON),
        "cpu": dict(depths=[20, 56, 110], width=0.5, seeds=2, steps=600, batch_size=64, warmup_steps=30,
                    eval_every=100, eval_batches=16, threads=1,
                    task_args={"n_train": 20000, "n_val": 2000, "resize": 14}, **_COMMON),
        "gpu": dict(depths=[20, 56, 110, 218], width=1, seeds=3, steps=8000, batch_size=128, warmup_steps=400,
                    eval_every=1000, eval_batches=79, task_args={}, **_COMMON),
    },
    run=run,
    verdict=verdict,
    notes="cpu preset scaled down to fit ~45 min on one of the 2 cores (one torch thread, so a second experiment "
          "can run beside it): width 0.5 (8/16/32 channels), images average-pooled "
          "to 14x14, a 20k-image training subset and 2k test images, 600 steps of batch 64 (~1.9 epochs of the "
          "subset), 2 seeds, depths 20/56/110 only (no 1000-layer run). One LR (AdamW 2e-3, warmup 30, cosine) "
          "for every arm, grad clipping 1.0, as the trainer does; the paper's recipe is unknown (digest §2). "
          "λ uses n = N = 3 n_b, every residual branch of the net (Fixup's L); a diverged run counts as a failure. "
          "With one branch per block, rezero (one α per block) and skipinit (one α per branch) are the same "
          "model and give identical runs; both are kept because the issue names both.",
    tags=["rex", "normalisation-free", "fashion_mnist", "resnet"],
)
