"""LAuReL's vision claims (Table 1, ResNet-50 on ImageNet) at CPU scale: a CIFAR-style ResNet on
Fashion-MNIST. Arms: the baseline, the baseline + 1 block (one more basic block in the LAST stage,
the widest one -- the paper's +4.37% matches one more block in ResNet-50's 1024-channel stage),
LAuReL-RW, RW+LR and RW+LR+PA on the baseline.

Claims: RW recovers >= 50% of the +1-block accuracy gain with < 0.01% extra parameters; RW+LR matches
the +1-block model with <= 0.4x its extra parameters (paper: 60% for 0.003%; a match for 2.6x fewer).
"""
from __future__ import annotations

from pathlib import Path

from ..compare import run_arms
from . import Experiment
from .common import pooled_std, row, train_config, with_


def arms(r: int) -> dict[str, dict]:
    return {"baseline": {"connection": "residual"},
            "baseline + 1 block": {"connection": "residual", "model_args": {"extra_blocks": [0, 0, 1]}},
            "laurel(rw)": {"connection": "laurel(rw)"},
            f"laurel(rw, lr, rank={r})": {"connection": f"laurel(rw, lr, rank={r}, lr_init=xavier)"},
            f"laurel(rw, lr, pa, rank={r})": {"connection": f"laurel(rw, lr, pa, rank={r}, lr_init=xavier)"}}


def run(s: dict, out: Path, log) -> dict:
    base = train_config("fashion_mnist", "resnet", **s["train"])
    configs = {label: with_(base, **a) for label, a in arms(s["rank"]).items()}
    report = run_arms(configs, s["seeds"], out, baseline="baseline",
                      title=f"LAuReL on ResNet-{base.model_args['depth']} / Fashion-MNIST: {s['seeds']} seeds, "
                            f"{base.steps} steps", log=log)
    return {"rows": report["rows"], "rank": s["rank"], "steps": base.steps, "seeds": s["seeds"]}


def verdict(res: dict) -> tuple[str, str]:
    r = res["rank"]
    base, plus = row(res, "baseline"), row(res, "baseline + 1 block")
    rw, rwlr = row(res, "laurel(rw)"), row(res, f"laurel(rw, lr, rank={r})")
    gain = plus["metric_mean"] - base["metric_mean"]
    pct = {x["arm"]: 100 * x["extra_params"] / base["params"] for x in res["rows"]}
    lines = [f"{x['arm']}: acc {x['metric_mean']:.4f} ± {x['metric_std']:.4f}, +{x['extra_params']} params "
             f"({pct[x['arm']]:.4f}%)" + (f", recovers {(x['metric_mean'] - base['metric_mean']) / gain:.0%} of the "
                                           f"+1-block gain" if gain > 0 else "") for x in res["rows"]]
    text = "; ".join(lines)
    if gain <= 0:
        return "not reproduced", (f"the +1-block model gained nothing over the baseline at this scale ({gain:+.4f}), so "
                                  f"the 'fraction of the gain' claims have no premise; {text}")
    claim1 = (rw["metric_mean"] - base["metric_mean"]) / gain >= 0.5 and pct["laurel(rw)"] < 0.01
    matches = rwlr["metric_mean"] >= plus["metric_mean"] - pooled_std(rwlr["metric_per_seed"], plus["metric_per_seed"])
    claim2 = matches and rwlr["extra_params"] <= 0.4 * plus["extra_params"]
    text = (f"claim 1 (RW ≥ 50% of the gain, < 0.01% params): {'yes' if claim1 else 'no'}; claim 2 (RW+LR matches +1 "
            f"block within one pooled std with ≤ 0.4× its params): {'yes' if claim2 else 'no'}. {text}")
    return ("reproduced" if claim1 and claim2 else "partial" if claim1 or claim2 else "not reproduced"), text


def _train(steps, batch, depth, n_train, n_val, eval_every, resize):
    return dict(steps=steps, batch_size=batch, lr=2e-3, warmup_steps=max(5, steps // 20), weight_decay=5e-4,
                eval_every=eval_every, eval_batches=n_val // batch, log_every=max(1, eval_every // 2), threads=2,
                model_args={"depth": depth, "width": 1},
                task_args={"n_train": n_train, "n_val": n_val, "resize": resize})


EXPERIMENT = Experiment(
    name="laurel-vision",
    paper="LAuReL (Menghani et al., ICML 2025, arXiv:2411.07501), Table 1 (ResNet-50, ImageNet)",
    claim="On a ResNet, LAuReL-RW recovers ≥ 50% of the accuracy gain of one extra block with < 0.01% extra "
          "parameters, and RW+LR matches the +1-block model with ≤ 0.4× its extra parameters.",
    paper_number="baseline 74.95, +1 layer 75.20 (+4.37% params), RW 75.10 (+0.003%), RW+LR 75.20 (+1.68%), "
                 "RW+LR+PA 75.25 (+2.40%)",
    presets={"quick": dict(seeds=1, rank=4, train=_train(20, 32, 8, 512, 256, 10, 14)),
             "cpu": dict(seeds=3, rank=4, train=_train(600, 64, 14, 20000, 4992, 100, 14)),
             "gpu": dict(seeds=5, rank=16, train=_train(8000, 128, 20, 60000, 9984, 500, None))},
    run=run, verdict=verdict,
    notes="CPU scale: ResNet-14 (width 1), Fashion-MNIST resized to 14×14, a 20k training subset and 600 steps of 64; "
          "validation = the first 4,992 official test images. LR uses xavier A init (the paper's CNN choice), B = 0, "
          "rank 4 (stage widths are 16/32/64); one LAuReL instance per block; PA stays within a stage.",
)
