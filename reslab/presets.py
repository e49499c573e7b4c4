"""Budgets per (task, model): ``quick`` (tests and the demo), ``cpu`` (committed results on 2 cores),
``gpu`` (paper-like sizes). A preset is a dict of TrainConfig fields; explicit flags and
``key=value`` overrides win over it."""
from __future__ import annotations

import copy

PRESETS: dict[tuple[str, str], dict[str, dict]] = {
    ("shakespeare", "gpt"): {
        "quick": dict(steps=400, batch_size=16, lr=3e-3, warmup_steps=20, eval_every=50, eval_batches=8,
                      log_every=10, checkpoint_every=100, threads=1, task_args={"block_size": 64, "max_chars": 300_000},
                      model_args={"n_layer": 4, "n_head": 4, "d_model": 64}),
        "cpu": dict(steps=1500, batch_size=32, lr=3e-3, warmup_steps=100, eval_every=100, eval_batches=20,
                    task_args={"block_size": 128}, model_args={"n_layer": 8, "n_head": 4, "d_model": 128}),
        "gpu": dict(steps=5000, batch_size=64, lr=1e-3, warmup_steps=200, eval_every=250, eval_batches=50,
                    task_args={"block_size": 256}, model_args={"n_layer": 12, "n_head": 8, "d_model": 512}),
    },
    ("fashion_mnist", "resnet"): {
        "quick": dict(steps=60, batch_size=32, lr=3e-3, warmup_steps=5, eval_every=30, eval_batches=4,
                      task_args={"n_train": 2000, "n_val": 500}, model_args={"depth": 8, "width": 1}),
        "cpu": dict(steps=1500, batch_size=128, lr=2e-3, warmup_steps=75, eval_every=250, eval_batches=20,
                    weight_decay=5e-4, model_args={"depth": 20, "width": 1}),
        "gpu": dict(steps=10000, batch_size=128, lr=2e-3, warmup_steps=500, eval_every=1000, eval_batches=79,
                    weight_decay=5e-4, model_args={"depth": 56, "width": 1}),
    },
    ("fashion_mnist", "mlp"): {
        "quick": dict(steps=100, batch_size=64, lr=1e-3, warmup_steps=10, eval_every=50, eval_batches=4,
                      task_args={"n_train": 2000, "n_val": 500}, model_args={"width": 64, "n_blocks": 4}),
        "cpu": dict(steps=2000, batch_size=128, lr=1e-3, warmup_steps=100, eval_every=200, eval_batches=20,
                    model_args={"width": 256, "n_blocks": 8}),
        "gpu": dict(steps=10000, batch_size=256, lr=1e-3, warmup_steps=500, eval_every=1000, eval_batches=40,
                    model_args={"width": 1024, "n_blocks": 16}),
    },
    ("teacher", "mlp"): {
        "quick": dict(steps=150, batch_size=64, lr=1e-3, warmup_steps=10, eval_every=50, eval_batches=4,
                      weight_decay=0.0, model_args={"width": 64, "n_blocks": 4}),
        "cpu": dict(steps=3000, batch_size=256, lr=3e-4, warmup_steps=100, eval_every=200, eval_batches=8,
                    weight_decay=0.0, model_args={"width": 128, "n_blocks": 8}),
        "gpu": dict(steps=20000, batch_size=256, lr=3e-4, warmup_steps=500, eval_every=1000, eval_batches=16,
                    weight_decay=0.0, model_args={"width": 512, "n_blocks": 16}),
    },
    ("fashion_mnist", "vit"): {
        "quick": dict(steps=60, batch_size=32, lr=1e-3, warmup_steps=5, eval_every=30, eval_batches=4, weight_decay=0.05,
                      task_args={"n_train": 2000, "n_val": 500},
                      model_args={"patch_size": 7, "d_model": 32, "n_layer": 2, "n_head": 2}),
        "cpu": dict(steps=2000, batch_size=128, lr=1e-3, warmup_steps=100, eval_every=250, eval_batches=20,
                    weight_decay=0.05, model_args={"patch_size": 7, "d_model": 64, "n_layer": 6, "n_head": 4}),
        "gpu": dict(steps=20000, batch_size=256, lr=1e-3, warmup_steps=1000, eval_every=1000, eval_batches=40,
                    weight_decay=0.05, model_args={"patch_size": 4, "d_model": 192, "n_layer": 12, "n_head": 3}),
    },
    ("fashion_mnist", "dit"): {
        "quick": dict(steps=40, batch_size=16, lr=2e-3, warmup_steps=5, eval_every=20, eval_batches=2, weight_decay=0.0,
                      task_args={"n_train": 512, "n_val": 64, "resize": 8},
                      model_args={"patch_size": 2, "d_model": 32, "n_layer": 2, "n_head": 2, "ema_decay": 0.9}),
        "cpu": dict(steps=2000, batch_size=64, lr=2e-3, warmup_steps=100, eval_every=250, eval_batches=8,
                    weight_decay=0.0, task_args={"resize": 14},
                    model_args={"patch_size": 2, "d_model": 64, "n_layer": 6, "n_head": 4, "ema_decay": 0.999}),
        "gpu": dict(steps=40000, batch_size=256, lr=3e-4, warmup_steps=1000, eval_every=2000, eval_batches=40,
                    weight_decay=0.0, task_args={"resize": 16},
                    model_args={"patch_size": 2, "d_model": 384, "n_layer": 12, "n_head": 6, "ema_decay": 0.9999}),
    },
}
# Hugging Face decoder LMs (hf:llama, hf:qwen3, ...) share one budget: the GPT's, at the same sizes;
# image classifiers (hf:vit, hf:deit, hf:dinov2) the ViT's (its d_model/n_layer/n_head/patch_size are valid there).
PRESETS[("shakespeare", "hf")] = copy.deepcopy(PRESETS[("shakespeare", "gpt")])
PRESETS[("fashion_mnist", "hf")] = copy.deepcopy(PRESETS[("fashion_mnist", "vit")])
PRESET_NAMES = ("quick", "cpu", "gpu")


def get_preset(task: str, model: str, name: str | None) -> dict:
    if name is None:
        return {}
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESET_NAMES)}")
    key = ("text" if task.startswith("text:") else task, "hf" if model.startswith("hf:") else model)
    if key[0] == "text" and key[1] in ("gpt", "hf"):
        key = ("shakespeare", key[1])
    if key not in PRESETS:
        have = ", ".join(f"{t}/{m}" for t, m in PRESETS)
        raise ValueError(f"no preset for task {task!r} with model {model!r}; presets exist for: {have}. "
                         "Drop --preset and give steps/batch_size/model args yourself")
    preset = copy.deepcopy(PRESETS[key][name])
    if task.startswith("text:"):
        preset.get("task_args", {}).pop("max_chars", None)
    return preset
