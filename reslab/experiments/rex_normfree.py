"""rex-normfree: residual scaling lets deep ResNets train without normalisation (Dherin & Munn 2025).

Claim (arXiv:2510.03470, its scaling rule and CIFAR-10 experiments): by the Residual Expansion
Theorem a tower of n modules x <- x + λ g_k(x) is an ensemble of C(n, k) paths of length k weighted by
λ^k, so its output grows like (1 + λc)^n. Unscaled (λ = 1) deep nets without normalisation therefore
explode and fail, or degrade with depth, while λ = 1/sqrt(n) and λ = 1/n train stably at every depth
(the paper trains 1000 layers on CIFAR-10); λ = 1/n costs accuracy against BatchNorm.

Arms (config overrides of one Fashion-MNIST ResNet, reslab.models.ResNet, 6n_b+2 layers), at several depths:

    batchnorm        residual + BatchNorm (the normalised baseline)
    lam=1            residual, no normalisation (unscaled)
    lam=1/sqrt(n)    scaled(lam=1/sqrt(N)), no normalisation
    lam=1/n          scaled(lam=1/N), no normalisation
    rezero, skipinit learned λ initialised to 0, no normalisation
    fixup            Fixup initialisation (ResNet(fixup=True)), no normalisation

Optimisers. Each preset names one or more optimiser settings (``optimizers``), and every arm runs under each:
``sgd`` — SGD with momentum 0.9 and no gradient clipping, the standard CIFAR ResNet recipe (the paper's own
recipe is not in its readable parts; this is the setting in which unnormalised nets are known to explode), and
``adamw`` — AdamW with clipping at 1.0, the Trainer's default, whose normalised, clipped steps can hide an
exploding forward pass. λ scales the branches and so the effective step size: every arm (baseline included) gets
its own learning rate, chosen on a tuning seed from the same grid per optimiser (``reslab.compare.tune_arms``).

Which n. The theorem's n counts every residual addition of the tower, so λ is set from the whole
network, N = 3 n_b residual branches (Fixup's L), not per stage, and given to ``scaled`` as a constant.
The two downsampling blocks are not wired by a connection and stay unscaled (2 of N).

Verdict (code: :func:`verdict`), per optimiser. A: the unscaled arm *fails with depth* (over half of the deepest
depth's seeds diverged or ended below ``FAIL_ACC``, at most half of the shallowest depth's; 2 seeds or more at each)
or *degrades with depth* (significantly below the shallowest, by more than
``DEGRADE``; untestable when not significant but the CI of the drop still reaches ``DEGRADE``). B: both
λ = 1/sqrt(n) and λ = 1/n train at every depth (no seed diverged or ended below ``FAIL_ACC``) and the deepest is
non-inferior to the shallowest within ``DEGRADE`` (95% CI). The verdict is decided
by the checks under the paper-like optimiser (``PRIMARY``, sgd) when it ran; the checks under the others are
reported beside it, named by optimiser, and not counted. The gap of every arm to BatchNorm is reported, and
whether λ = 1/n costs accuracy (gap below -``GAP_TOL``), as the paper says.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..compare import PendingParts
from ..report import plot_curves
from . import Experiment
from .common import decide, noninferior, resolvable_difference, train_config
from .runner import build_configs, completed, edge_note, errorbar_panels, run_cells, seed_stats, write_readme

CHANCE = 0.1
FAIL_ACC = 0.5  # below this a 10-class net has not learned the task: 5x chance
DEGRADE = 0.02  # accuracy lost from the shallowest to the deepest depth that counts as degradation
GAP_TOL = 0.01  # accuracy below BatchNorm that counts as "costs accuracy"
BASELINE = "batchnorm"
PRIMARY = "sgd"  # the paper-like recipe: its checks decide the verdict
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


def arm_overrides(arm: str, depth: int) -> dict:
    """The arm as an override of the shared config."""
    spec, extra = arm_config(arm, depth)
    return {"connection": spec, "model_args": {"depth": depth} | extra}


def run(settings: dict, out_dir: Path, log) -> dict:
    depths, arms = list(settings["depths"]), list(settings.get("arms", ARMS))
    if BASELINE not in arms:
        raise ValueError(f"rex-normfree: the arms must include the baseline {BASELINE!r}")
    optimizers = settings["optimizers"]
    cells, where = {}, {}
    for opt, o in optimizers.items():
        base = train_config("fashion_mnist", "resnet", **(settings["train"] | o["train"]))
        for depth in depths:
            name = f"{opt}/depth{depth}"
            cells[name] = build_configs(base, {arm: arm_overrides(arm, depth) for arm in arms})
            where[name] = (opt, depth)
    values, pending = {}, PendingParts()  # a part of a split preset trains its seeds under every optimiser
    for opt, o in optimizers.items():  # an optimiser may run fewer seeds than the preset's (a control)
        with pending.step():
            values |= run_cells({n: c for n, c in cells.items() if where[n][0] == opt},
                                o.get("seeds", settings["seeds"]), out_dir, BASELINE, log, tune=o.get("tune"),
                                title=lambda name: f"rex-normfree: ResNet-{where[name][1]}, {where[name][0]}")
    pending.raise_if_any()
    results = {"depths": depths, "arms": arms, "baseline": BASELINE, "primary": PRIMARY, "optimizers": {},
               "thresholds": {"fail_acc": FAIL_ACC, "degrade": DEGRADE, "gap_tol": GAP_TOL, "chance": CHANCE}}
    for opt, o in optimizers.items():
        per_depth = {}
        for depth in depths:
            v = values[f"{opt}/depth{depth}"]
            per_depth[str(depth)] = {"arms": {arm: {"connection": arm_config(arm, depth)[0],
                                                    "model_extra": arm_config(arm, depth)[1],
                                                    "acc": v[arm]["metric"]} | {k: x for k, x in v[arm].items()
                                                                               if k != "metric"}
                                              for arm in arms}}
            plot_curves({arm: [{"curve": c} for c in v[arm]["curve"] if c] for arm in arms},
                        out_dir / f"curves_{opt}_depth{depth}.png",
                        title=f"rex-normfree: ResNet-{depth}, {opt}, no normalisation except '{BASELINE}'")
            # run_arms' rows: val loss mean ± std, Welch p and steps to the baseline's loss against BatchNorm
            rows = json.loads((out_dir / f"{opt}/depth{depth}" / "results.json").read_text())["rows"]
            per_depth[str(depth)]["rows"] = rows
        results["optimizers"][opt] = {"train": o["train"], "tune": o.get("tune"), "per_depth": per_depth}
    for opt in optimizers:
        results["optimizers"][opt]["table"] = accuracy_table(results, opt)
    _plot_accuracy(results, out_dir / "accuracy_vs_depth.png")
    v, why = verdict(results)
    write_readme(out_dir / "README.md", "rex-normfree: normalisation-free ResNets with residual scaling "
                 "(Dherin & Munn 2025)", v, why, _sections(results), settings,
                 [("accuracy vs depth", "accuracy_vs_depth.png")]
                 + [(f"curves {opt} depth {d}", f"curves_{opt}_depth{d}.png") for opt in optimizers for d in depths])
    return results


def _opts(results: dict) -> dict:
    """{optimiser: its results}; a summary from before the optimiser axis is one AdamW block."""
    if "optimizers" in results:
        return results["optimizers"]
    return {"adamw": {"per_depth": results["per_depth"], "table": results.get("table"), "tune": None}}


def _arm(results: dict, opt: str, depth, arm: str) -> dict:
    a = _opts(results)[opt]["per_depth"][str(depth)]["arms"][arm]
    return {"metric": a["acc"], "status": a["status"]}


def _acc_stats(results: dict, opt: str, depth, arm: str) -> dict:
    return seed_stats(_arm(results, opt, depth, arm))


def _accs(results: dict, opt: str, depth, arm: str) -> list[float]:
    return completed(_arm(results, opt, depth, arm))


def accuracy_table(results: dict, opt: str) -> list[dict]:
    """One row per (arm, depth) under one optimiser: mean ± std accuracy, diverged seeds, gap to BatchNorm, lr."""
    rows = []
    for arm in results["arms"]:
        for d in results["depths"]:
            st = _acc_stats(results, opt, d, arm)
            bn = _acc_stats(results, opt, d, results["baseline"])["mean"]
            gap = st["mean"] - bn if math.isfinite(st["mean"]) and math.isfinite(bn) else None
            tuned = _opts(results)[opt]["per_depth"][str(d)]["arms"][arm].get("tuned")
            rows.append({"arm": arm, "depth": d, "acc_mean": st["mean"], "acc_std": st["std"],
                         "diverged": st["diverged"], "seeds": st["seeds"], "gap_to_bn": gap, "tuned": tuned})
    return rows


def _failed_seeds(results: dict, opt: str, depth, arm: str) -> tuple[int, int]:
    """(seeds that failed, seeds): a seed fails when it diverged or ended below FAIL_ACC."""
    a = _arm(results, opt, depth, arm)
    bad = sum(st != "completed" or acc is None or not acc >= FAIL_ACC for st, acc in zip(a["status"], a["metric"]))
    return bad, len(a["status"])


def _checks(results: dict, opt: str) -> tuple[list, list[str]]:
    """Checks A and B under one optimiser, named by it, and its notes (gaps to BatchNorm, tuned lr)."""
    depths = results["depths"]
    lo, hi = depths[0], depths[-1]
    un_lo, un_hi = _acc_stats(results, opt, lo, "lam=1"), _acc_stats(results, opt, hi, "lam=1")
    # "fails with depth" needs evidence over seeds: at least 2 seeds at each depth, most of the deepest depth's
    # seeds failed, and at most half of the shallowest depth's (one diverged seed of three is not a failure)
    (bad_hi, n_hi), (bad_lo, n_lo) = (_failed_seeds(results, opt, d, "lam=1") for d in (hi, lo))
    fails = n_hi >= 2 and n_lo >= 2 and bad_hi > n_hi / 2 and bad_lo <= n_lo / 2
    # "degrades": significantly lower, by more than DEGRADE; when the CI of the drop still reaches DEGRADE without
    # being significant, the seeds cannot tell (untestable), as in every other check with a stated effect
    sig, ci_text = resolvable_difference(_accs(results, opt, hi, "lam=1"), _accs(results, opt, lo, "lam=1"), "lower",
                                         DEGRADE)
    degrades = bool(sig) and un_hi["mean"] < un_lo["mean"] - DEGRADE
    shallow_fails = n_lo >= 2 and bad_lo > n_lo / 2  # failing at every depth is not a depth effect: untestable
    a = True if fails or degrades else (None if sig is None or shallow_fails else False)
    tune_note = ""
    pts = _opts(results)[opt]["per_depth"][str(hi)]["arms"]["lam=1"].get("tune_points")
    if fails and pts:
        n_div = sum(pt["val_loss"] is None for pt in pts)
        tune_note = f", {n_div}/{len(pts)} tuning lrs diverged at depth {hi}"
    checks = [(f"A [{opt}] unscaled λ=1 without BN fails or degrades with depth", a,
               f"depth {lo}: {_desc(un_lo)}, depth {hi}: {_desc(un_hi)}, depth {hi} minus {lo}: {ci_text}"
               + f"; failed seeds (diverged or accuracy < {FAIL_ACC:g}): depth {lo} {bad_lo}/{n_lo}, depth {hi} {bad_hi}/{n_hi}"
               + (" [fails]" if fails else "") + (" [degrades]" if degrades else "")
               + (f" [fails at depth {lo} too: not a depth effect]" if shallow_fails else "") + tune_note)]
    oks, texts = [], []
    for arm in ("lam=1/sqrt(n)", "lam=1/n"):
        sts = {d: _acc_stats(results, opt, d, arm) for d in depths}
        failed = {d: _failed_seeds(results, opt, d, arm) for d in depths}
        if any(bad for bad, _ in failed.values()):
            # a seed that diverged or ended below FAIL_ACC (e.g. collapsed to chance) did not train stably
            ok, text = False, "fails at some depth: failed seeds " + ", ".join(
                f"d{d} {bad}/{n}" for d, (bad, n) in failed.items())
        else:
            ok, text = noninferior(_accs(results, opt, hi, arm), _accs(results, opt, lo, arm), DEGRADE,
                                   higher_better=True)
        oks.append(ok)
        texts.append(f"{arm}: " + ", ".join(f"d{d} {_desc(st)}" for d, st in sts.items()) + f" (d{hi} vs d{lo}: {text})")
    b = False if False in oks else (True if all(o is True for o in oks) else None)
    checks.append((f"B [{opt}] 1/sqrt(n) and 1/n train stably at every depth", b, "; ".join(texts)))
    table = _opts(results)[opt].get("table") or accuracy_table(results, opt)
    notes = []
    for arm in results["arms"]:
        if arm == results["baseline"]:
            continue
        gaps = [r["gap_to_bn"] for r in table if r["arm"] == arm]
        notes.append(f"{arm} " + "/".join("—" if g is None else f"{g:+.3f}" for g in gaps))
    inv_n = [r["gap_to_bn"] for r in table if r["arm"] == "lam=1/n" and r["gap_to_bn"] is not None]
    if inv_n:
        costs = statistics.fmean(inv_n) < -GAP_TOL
        notes.append(f"λ=1/n {'costs' if costs else 'does not cost'} accuracy vs BatchNorm "
                     f"(mean gap {statistics.fmean(inv_n):+.3f}; the paper reports a cost)")
    lrs = [f"{r['arm']}@{r['depth']} {r['tuned']['lr']:g}" for r in table if r.get("tuned") and "lr" in r["tuned"]]
    text = f"[{opt}] gap to BatchNorm (accuracy, depths {'/'.join(map(str, depths))}): " + "; ".join(notes)
    text += (f"; lr tuned per arm and depth ({', '.join(lrs)})" if lrs else "; one shared lr (not tuned per arm)")
    edges = edge_note({f"{arm}@{d}": _opts(results)[opt]["per_depth"][str(d)]["arms"][arm].get("tuned_at_edge")
                       for arm in results["arms"] for d in depths})
    return checks, [text + (f"; {edges}" if edges else "")]


def verdict(results: dict) -> tuple[str, str]:
    """Per optimiser: (A) unscaled λ=1 without BN fails with depth (over half of the deepest depth's seeds
    diverged or ended below FAIL_ACC, at most half of the shallowest's; 2 seeds or more each) or degrades with depth
    (significantly below the shallowest depth, Welch p < 0.05, by more than DEGRADE; untestable when the CI of the
    drop reaches DEGRADE without significance); (B) 1/sqrt(n) and 1/n train stably: no seed diverged or ended below
    FAIL_ACC at any depth, and the deepest depth non-inferior to the shallowest within DEGRADE (95% CI). The checks under PRIMARY (sgd: momentum, no clipping) decide when it
    ran; the others are reported, named by optimiser, and not counted. Fewer than 2 seeds: untestable.

    The two seed counts differ on purpose, as the claims do: A says unscaled nets *fail*, so it needs most seeds to
    fail (one bad seed of an otherwise training net is not "fails"); B says the scaled nets train *stably at every
    depth*, a statement about every run, so one seed that diverges or collapses (e.g. to chance) is a counterexample
    that the seeds' mean would hide. The failed-seed counts are printed with both checks."""
    opts = _opts(results)
    primary = PRIMARY if PRIMARY in opts else next(iter(opts))
    counted, notes = _checks(results, primary)
    v, text = decide(counted)
    text = f"decided under {primary}: " + text
    for opt in opts:
        if opt != primary:
            other, more = _checks(results, opt)
            text += f". Not counted, under {opt}: " + "; ".join(
                f"{n}: {'PASS' if ok else 'FAIL' if ok is False else 'UNTESTABLE'} ({t})" for n, ok, t in other)
            notes += more
    if "optimizers" not in results:
        notes.append("trained with AdamW + clipping only (before the Trainer had SGD)")
    return v, text + ". " + ". ".join(notes)


def _desc(st: dict) -> str:
    acc = "—" if not math.isfinite(st["mean"]) else f"{st['mean']:.3f}"
    return acc + (f" ({st['diverged']}/{st['seeds']} diverged)" if st["diverged"] else "")


def _plot_accuracy(results: dict, path: Path) -> None:
    depths = results["depths"]
    panels = {}
    for opt in _opts(results):
        lines = {}
        for arm in results["arms"]:
            sts = [_acc_stats(results, opt, d, arm) for d in depths]
            lines[arm] = (depths, [s["mean"] for s in sts], [s["std"] for s in sts], [s["diverged"] > 0 for s in sts])
        panels[f"{opt}, lr tuned per arm" if _opts(results)[opt].get("tune") else opt] = lines
    errorbar_panels(panels, path, "ResNet depth", "val accuracy, mean ± std over seeds (x: a seed diverged)",
                    title="rex-normfree: Fashion-MNIST, no normalisation except batchnorm", floor=CHANCE)


def _sections(results: dict) -> list[str]:
    depths = results["depths"]
    out = []
    for opt, o in _opts(results).items():
        tuned = f"lr tuned per arm from {o['tune']['lr']}" if (o.get("tune") or {}).get("lr") else "one lr, not tuned"
        lines = [f"**{opt}** (`{o.get('train')}`; {tuned}): validation accuracy, mean ± std over "
                 "seeds (Δ = gap to BatchNorm; † = diverged seeds; lr = the arm's tuned lr)", "",
                 "| arm | " + " | ".join(f"ResNet-{d}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
        for arm in results["arms"]:
            cells = []
            for d in depths:
                r = next(x for x in o["table"] if x["arm"] == arm and x["depth"] == d)
                acc = "—" if not math.isfinite(r["acc_mean"]) else f"{r['acc_mean']:.3f} ± {r['acc_std']:.3f}"
                gap = "" if r["gap_to_bn"] is None or arm == results["baseline"] else f" (Δ {r['gap_to_bn']:+.3f})"
                div = f" †{r['diverged']}/{r['seeds']}" if r["diverged"] else ""
                lr = f" lr {r['tuned']['lr']:g}" if r.get("tuned") and "lr" in r["tuned"] else ""
                cells.append(acc + gap + div + lr)
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    first = next(iter(_opts(results).values()))
    out.append("Connections used: " + "; ".join(
        f"depth {d}: " + ", ".join(f"{a} = `{first['per_depth'][str(d)]['arms'][a]['connection']}`"
                                   for a in results["arms"] if a.startswith("lam=1/")) for d in depths))
    return out


def _train(steps, batch, n_train, n_val, resize, width, eval_every):
    return dict(steps=steps, batch_size=batch, warmup_steps=max(5, steps // 20), weight_decay=5e-4,
                eval_every=eval_every, eval_batches=-(-n_val // batch),  # every one of the n_val images
                log_every=max(1, eval_every // 2), threads=1,
                model_args={"width": width}, task_args={"n_train": n_train, "n_val": n_val, "resize": resize})


#: SGD with momentum, no clipping (the paper-like recipe) and AdamW with clipping (the Trainer's default)
#: (both tuned from their grid, up to two steps further past an edge while an edge wins: ``extend``; one step
#: left λ=1 at depth 44 under SGD and every AdamW arm at depth 8 at an edge)
SGD = {"train": dict(optimizer="sgd", momentum=0.9, grad_clip=0.0, lr=0.04), "tune": {"lr": [0.01, 0.04, 0.16], "extend": 2}}
ADAMW = {"train": dict(optimizer="adamw", grad_clip=1.0, lr=2e-3), "tune": {"lr": [5e-4, 2e-3, 8e-3], "extend": 2}}

EXPERIMENT = Experiment(
    name="rex-normfree",
    paper="Dherin & Munn 2025, On residual network depth (arXiv:2510.03470)",
    claim="Without normalisation, unscaled ResNets (λ = 1) fail or degrade with depth, while scaling every "
          "residual branch by λ = 1/sqrt(n) or 1/n trains stably at every depth. Judged under SGD with momentum and "
          "no clipping, every arm at its own tuned lr; each arm's accuracy gap to BatchNorm (the paper: below it) is "
          "reported beside the verdict, not judged.",
    paper_number="CIFAR-10, up to 1000 layers without normalisation: 1/n and 1/sqrt(n) stable, 1/sqrt(n) > 1/n, "
                 "both below the BatchNorm baselines of Table 1 (numbers not readable; digest §3)",
    presets={
        "quick": dict(depths=[8, 14], seeds=2, arms=["batchnorm", "lam=1", "lam=1/sqrt(n)", "lam=1/n"],
                      optimizers={"sgd": {"train": SGD["train"], "tune": {"lr": [0.01, 0.04]}},
                                  "adamw": {"train": ADAMW["train"]}},
                      train=_train(steps=20, batch=32, n_train=512, n_val=128, resize=14, width=0.25, eval_every=10)),
        # 5 seeds under SGD (the counted checks; 3 left B's CIs wider than its margin), 3 under AdamW, the whole
        # 10,000-image test set, every arm tuned under both optimisers: ~30 min on one thread (12 min before)
        "cpu": dict(depths=[8, 44], seeds=5, arms=["batchnorm", "lam=1", "lam=1/sqrt(n)", "lam=1/n"],
                    optimizers={"sgd": SGD, "adamw": ADAMW | {"seeds": 3}},
                    train=_train(steps=160, batch=64, n_train=20000, n_val=10000, resize=14, width=0.5,
                                 eval_every=160)),
        "gpu": dict(depths=[20, 56, 110, 218], seeds=3, arms=list(ARMS), optimizers={"sgd": SGD, "adamw": ADAMW},
                    train=_train(steps=8000, batch=128, n_train=60000, n_val=10000, resize=None, width=1,
                                 eval_every=1000)),
    },
    run=run,
    verdict=verdict,
    notes="cpu preset sized to ~30 min on one torch thread beside another experiment (two larger plans, depths "
          "20/56 and 20/44 with 250-400 steps, were measured and stopped as too slow): width 0.5 (8/16/32 channels), images "
          "average-pooled to 14x14, a 20k-image training subset and the whole 10,000-image test set, 160 steps of batch 64 (10k "
          "images, half an epoch of the subset; one evaluation at the end), depths 8 and 44 (ResNet-44 without "
          "normalisation is the shallowest depth whose unscaled output explodes at init here: logit std 0.2/0.7/2.3/"
          "11/280 at depths 8/20/32/44/56), the four arms the verdict reads (rezero, skipinit and fixup stay in the "
          "gpu preset). Two optimisers: SGD (momentum 0.9, no nesterov, no clipping, L2 weight decay 5e-4 on "
          "matrices; 5 seeds) and AdamW (clipping 1.0, decoupled weight decay 5e-4; 3 seeds); warmup 5% then "
          "cosine to 0.1x for both. Under each optimiser every arm's lr is tuned per depth on a tuning seed from "
          "the same grid (SGD 0.01/0.04/0.16, AdamW 5e-4/2e-3/8e-3, up to two steps further while an edge wins), lowest "
          "final validation loss, a diverged tuning run counting as +inf; the SGD checks are counted, the AdamW "
          "ones reported. λ uses n = N = 3 n_b, every residual branch "
          "of the net (Fixup's L); a diverged run counts as a failure. The paper's optimiser is not in its readable "
          "parts: SGD with momentum and no clipping is the standard CIFAR ResNet recipe, and the verdict is "
          "decided under it.",
    tags=["rex", "normalisation-free", "fashion_mnist", "resnet"],
)
