"""LAuReL on language modelling at CPU scale: a char-level GPT with L layers, the same with L+1 layers
(naive scaling), and LAuReL variants on L layers (one instance per transformer layer, as the paper
counts them). The paper (Table 5, 24-layer LM on C4) finds every LAuReL variant beats even 28 layers;
the claim checked here: RW+LR reaches the (L+1)-layer validation loss with < 10% of the extra
layer's parameters.
"""
from __future__ import annotations

from pathlib import Path

from ..analysis.coefficients import plot_coefficients
from ..compare import run_arms, slug
from ..train import read_log
from . import Experiment
from .common import pooled_std, row, train_config, with_


def arms(s: dict) -> dict[str, dict]:
    L, r = s["layers"], s["rank"]
    return {f"L={L} residual": {"n_layer": L, "connection": "residual"},
            f"L={L + 1} residual": {"n_layer": L + 1, "connection": "residual"},
            "laurel(rw)": {"n_layer": L, "connection": "laurel(rw)"},
            f"laurel(rw, lr, rank={r})": {"n_layer": L, "connection": f"laurel(rw, lr, rank={r})"},
            f"laurel(rw, lr, pa, rank={r})": {"n_layer": L, "connection": f"laurel(rw, lr, pa, rank={r})"}}


def run(s: dict, out: Path, log) -> dict:
    base = train_config("shakespeare", "gpt", **s["train"])
    configs = {label: with_(base, connection=a["connection"], model_args={"n_layer": a["n_layer"]})
               for label, a in arms(s).items()}
    report = run_arms(configs, s["seeds"], out, baseline=f"L={s['layers']} residual",
                      title=f"LAuReL on a char GPT (L={s['layers']}): {s['seeds']} seeds, {base.steps} steps", log=log)
    for label in configs:  # alpha, beta, gamma per block over training (seed 0)
        if label.startswith("laurel"):
            plot_coefficients(read_log(out / slug(label) / f"seed{base.seed}"), out / f"coefficients_{slug(label)}.png",
                              title=f"{label}: learned coefficients per block (seed {base.seed})")
    return {"rows": report["rows"], "layers": s["layers"], "rank": s["rank"], "steps": base.steps, "seeds": s["seeds"]}


def verdict(res: dict) -> tuple[str, str]:
    L, r = res["layers"], res["rank"]
    base, deeper = row(res, f"L={L} residual"), row(res, f"L={L + 1} residual")
    rwlr = row(res, f"laurel(rw, lr, rank={r})")
    layer_params = deeper["params"] - base["params"]
    frac_params = rwlr["extra_params"] / layer_params
    gain = base["val_loss_mean"] - deeper["val_loss_mean"]  # what the extra layer buys
    got = base["val_loss_mean"] - rwlr["val_loss_mean"]
    reaches = rwlr["val_loss_mean"] <= deeper["val_loss_mean"]
    within = rwlr["val_loss_mean"] - deeper["val_loss_mean"] <= pooled_std(rwlr["val_loss"], deeper["val_loss"])
    others = "; ".join(f"{x['arm']} {x['val_loss_mean']:.4f} ± {x['val_loss_std']:.4f}" for x in res["rows"])
    text = (f"val loss L={L}: {base['val_loss_mean']:.4f}, L={L + 1}: {deeper['val_loss_mean']:.4f} (gain {gain:+.4f}), "
            f"RW+LR r={r}: {rwlr['val_loss_mean']:.4f} (recovers {got / gain:.0%} of the gain) with "
            f"{rwlr['extra_params']} extra params = {frac_params:.1%} of the extra layer's {layer_params}. All arms: {others}"
            if gain else f"the extra layer gained nothing at this scale (L={L} {base['val_loss_mean']:.4f} vs "
                         f"L={L + 1} {deeper['val_loss_mean']:.4f}); RW+LR {rwlr['val_loss_mean']:.4f}")
    if gain <= 0:
        return "not reproduced", text + " — the premise (an extra layer helps) does not hold here"
    if reaches and frac_params < 0.10:
        return "reproduced", text
    if (within or got / gain >= 0.5) and frac_params < 0.10:
        return "partial", text + (" — within one pooled std of L+1" if within else " — recovers ≥ 50% of the gain")
    return "not reproduced", text


def _train(steps, batch, d, block, eval_every, eval_batches, max_chars=None):
    return dict(steps=steps, batch_size=batch, lr=3e-3, warmup_steps=max(10, steps // 15), eval_every=eval_every,
                eval_batches=eval_batches, log_every=max(1, eval_every // 2), threads=2,
                model_args={"n_head": 4, "d_model": d},
                task_args={"block_size": block} | ({"max_chars": max_chars} if max_chars else {}))


EXPERIMENT = Experiment(
    name="laurel-lm",
    paper="LAuReL (Menghani et al., ICML 2025, arXiv:2411.07501), §3.2 and Table 5",
    claim="On an L-layer char GPT, LAuReL RW+LR reaches the (L+1)-layer model's validation loss with < 10% of the "
          "extra layer's parameters.",
    paper_number="Table 5: Baseline-24 3.0159, Baseline-28 2.9963, RW+LR 2.9531 (+1.2M params vs +22M for 4 layers)",
    presets={"quick": dict(seeds=1, layers=2, rank=4, train=_train(30, 8, 32, 32, 15, 2, max_chars=100_000)),
             "cpu": dict(seeds=3, layers=4, rank=4, train=_train(800, 16, 64, 128, 50, 16)),
             "gpu": dict(seeds=3, layers=12, rank=32, train=_train(10000, 64, 512, 256, 250, 50))},
    run=run, verdict=verdict,
    notes="One LAuReL instance per transformer layer (unit=block: f = the layer's two residual branches), A column-"
          "orthogonal, B = 0, alpha/beta = 2·softmax(w) so every variant equals the baseline at init. PA uses k=3 with "
          "its own low-rank pair per previous activation (eq. 6).",
)
