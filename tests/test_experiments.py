"""The ANCRe and LAuReL experiments: quick presets run end to end through `reslab reproduce`, and the
verdict rules turn numbers into the right verdicts."""
from __future__ import annotations

import json

import pytest
from conftest import write_fake_fashion_mnist

from reslab.cli import main
from reslab.experiments import VERDICTS, experiments, get_experiment


def test_registry_lists_every_experiment_with_three_presets():
    exps = experiments()
    for name in ("ancre-linear", "ancre-lm", "ancre-depth", "laurel-lm", "laurel-vision"):
        assert name in exps and set(exps[name].presets) >= {"quick", "cpu", "gpu"}
    with pytest.raises(ValueError, match="unknown experiment 'ancre-lnear'; valid: ancre-linear"):
        get_experiment("ancre-lnear")


def test_presets_pick_arms_by_short_name_and_reject_unknown_ones():
    from reslab.experiments import laurel_lm, laurel_vision
    from reslab.experiments.common import pick_arms

    cpu = get_experiment("laurel-lm").presets["cpu"]
    assert list(laurel_lm.arms(cpu)) == [f"L={cpu['layers']} residual", f"L={cpu['layers'] + 1} residual",
                                         f"laurel(rw, lr, rank={cpu['rank']})"]
    cpu = get_experiment("laurel-vision").presets["cpu"]
    assert list(laurel_vision.arms(cpu["rank"], cpu["arms"])) == [
        "baseline", "baseline + 1 block", "laurel(rw)", f"laurel(rw, lr, rank={cpu['rank']})"]
    assert len(laurel_vision.arms(4)) == 5  # no selection: every arm
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['rw\+pa'\].*valid: \['a', 'b'\]"):
        pick_arms({"A": {}, "B": {}}, ["a", "b"], ["a", "rw+pa"])


def _fake_rows(labels, values):
    """Result rows as run_arms writes them, one per label, with the given per-seed values."""
    rows = []
    for i, (label, vals) in enumerate(zip(labels, values)):
        mean = sum(vals) / len(vals)
        rows.append({"arm": label, "params": 1000 + i, "extra_params": i, "metric_per_seed": vals, "val_loss": vals,
                     "metric_mean": mean, "metric_std": 0.001, "val_loss_mean": mean, "val_loss_std": 0.001})
    return rows


@pytest.mark.parametrize("name", ["laurel-lm", "laurel-vision"])
def test_cpu_preset_arm_labels_are_the_ones_the_verdict_reads(name):
    """The labels a preset's arms get are the ones verdict() looks up: a preset change (rank, layers, arms)
    cannot leave the rule reading an arm that was never trained."""
    from reslab.experiments import laurel_lm, laurel_vision

    exp, cpu = get_experiment(name), get_experiment(name).presets["cpu"]
    if name == "laurel-lm":
        labels = list(laurel_lm.arms(cpu))
        res = {"rows": _fake_rows(labels, [[2.0, 2.01], [1.9, 1.91], [1.89, 1.9]]), "layers": cpu["layers"],
               "rank": cpu["rank"]}
    else:
        labels = list(laurel_vision.arms(cpu["rank"], cpu["arms"]))
        res = {"rows": _fake_rows(labels, [[0.80, 0.81], [0.85, 0.86], [0.84, 0.85], [0.86, 0.87]]),
               "rank": cpu["rank"]}
    assert exp.verdict(res)[0] in VERDICTS
    res["rows"] = res["rows"][:-1]  # an arm the rule needs is missing: a one-line error naming it
    with pytest.raises(KeyError, match="no arm 'laurel"):
        exp.verdict(res)


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_laurel_vision_rank_gives_the_papers_parameter_ratio(preset):
    """RW+LR's extra parameters are about the paper's 0.38x of the extra block's, and within claim B's 0.4x."""
    import torch

    from reslab.experiments.laurel_vision import EXTRA_BLOCK
    from reslab.models import build_model

    s = get_experiment("laurel-vision").presets[preset]
    info, depth = {"n_classes": 10, "input_shape": (1, 28, 28)}, s["train"]["model_args"]["depth"]
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        base = n(build_model("resnet", info, "residual", depth=depth))
        block = n(build_model("resnet", info, "residual", depth=depth, extra_blocks=EXTRA_BLOCK)) - base
        rwlr = n(build_model("resnet", info, f"laurel(rw, lr, rank={s['rank']}, lr_init=xavier)", depth=depth)) - base
    assert 0.3 <= rwlr / block <= 0.4

@pytest.mark.slow
@pytest.mark.parametrize("name", ["ancre-linear", "ancre-lm", "ancre-depth", "laurel-lm"])
def test_quick_preset_runs_and_writes_a_summary(name, tmp_path, capsys):
    assert main(["reproduce", name, "--preset", "quick", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["verdict"] in VERDICTS and s["experiment"] == name and s["preset"] == "quick"
    assert s["command"].startswith(f"reslab reproduce {name}") and s["git"] and s["machine"]["torch"]
    assert list(tmp_path.glob("*.png")), "each experiment writes its plots"


def test_laurel_vision_quick_runs_on_tiny_idx_files(tmp_path, monkeypatch):
    """Fashion-MNIST is read from idx files the test writes (no real data needed)."""
    data = write_fake_fashion_mnist(tmp_path / "data", 600, 300)
    monkeypatch.setenv("RESLAB_DATA", str(data))
    out = tmp_path / "out"
    assert main(["reproduce", "laurel-vision", "--preset", "quick", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["verdict"] in VERDICTS
    arms = [r["arm"] for r in s["results"]["rows"]]
    assert arms[:2] == ["baseline", "baseline + 1 block"] and len(arms) == 5


# the verdict rules are tested in tests/test_verdicts.py


def test_runner_arms_are_overrides_and_cells_train_through_run_arms(tmp_path):
    """The declarative runner: arm overrides merge into the shared config, every cell runs through run_arms (tuning
    included), the per-seed values come back per arm, and the shared plot and README writers produce files."""
    from reslab.experiments.common import train_config
    from reslab.experiments.runner import (arm_values, build_configs, errorbar_panels, run_cells, seed_stats,
                                           write_readme)

    base = train_config("teacher", "mlp", task_args={"in_dim": 4, "out_dim": 1, "n_train": 64, "n_val": 32},
                        model_args={"width": 8, "n_blocks": 2}, steps=4, batch_size=16, eval_every=2, eval_batches=1,
                        warmup_steps=1, threads=1)
    configs = build_configs(base, {"residual": {}, "plain": {"connection": "plain", "model_args": {"n_blocks": 3}}})
    assert configs["plain"].model_args == {"width": 8, "n_blocks": 3} and configs["residual"].connection == "residual"
    values = run_cells({"a": configs}, 2, tmp_path, "residual", log=lambda m: None, tune={"lr": [1e-3, 3e-3]})
    v = values["a"]
    assert set(v) == {"residual", "plain"} and v["plain"]["tuned"]["lr"] in (1e-3, 3e-3)
    assert len(v["plain"]["metric"]) == 2 and v["plain"]["status"] == ["completed"] * 2
    assert len(v["plain"]["tune_points"]) == 2 and seed_stats(v["plain"])["n_ok"] == 2
    assert arm_values({"runs": {"x": [{"status": "diverged"}]}})["x"]["tuned"] is None
    errorbar_panels({"p": {"residual": ([1, 2], [0.5, float("nan")], [0.1, float("nan")], [False, True])}},
                    tmp_path / "e.png", "x", "y", floor=0.1)
    assert (tmp_path / "e.png").stat().st_size > 1000
    write_readme(tmp_path / "R.md", "t", "partial", "why", ["| a |"], {"k": 1}, [("e", "e.png")])
    assert (tmp_path / "R.md").read_text().startswith("# t\n\n**Verdict: partial** — why")
