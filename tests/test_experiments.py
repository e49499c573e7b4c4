"""The ANCRe and LAuReL experiments: quick presets run end to end through `reslab reproduce`, and the
verdict rules turn numbers into the right verdicts."""
from __future__ import annotations

import json

import pytest

from reslab.cli import main
from reslab.experiments import VERDICTS, experiments, get_experiment


def test_registry_lists_every_experiment_with_three_presets():
    exps = experiments()
    for name in ("ancre-linear", "ancre-lm", "ancre-depth", "laurel-lm", "laurel-vision"):
        assert name in exps and set(exps[name].presets) >= {"quick", "cpu", "gpu"}
    with pytest.raises(ValueError, match="unknown experiment 'ancre-lnear'; valid: ancre-linear"):
        get_experiment("ancre-lnear")


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
    import gzip

    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)

    def idx(path, arr, magic):
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())

    for split, n in (("train", 600), ("t10k", 300)):
        labels = rng.integers(0, 10, n)
        images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 19).clip(0, 255)
        idx(data / f"{split}-images-idx3-ubyte.gz", images, 2051)
        idx(data / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
    monkeypatch.setenv("RESLAB_DATA", str(data))
    out = tmp_path / "out"
    assert main(["reproduce", "laurel-vision", "--preset", "quick", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["verdict"] in VERDICTS
    arms = [r["arm"] for r in s["results"]["rows"]]
    assert arms[:2] == ["baseline", "baseline + 1 block"] and len(arms) == 5


def _row(arm, losses, params=1000, steps=100, metric=None):
    import statistics

    return {"arm": arm, "val_loss": losses, "val_loss_mean": statistics.fmean(losses),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0, "params": params,
            "extra_params": params - 1000, "steps_to_target": steps, "welch_p_vs_baseline": None,
            "metric_per_seed": metric or [], "metric_mean": statistics.fmean(metric) if metric else None,
            "metric_std": statistics.stdev(metric) if metric and len(metric) > 1 else 0.0}


def test_ancre_lm_verdict_rules():
    v = get_experiment("ancre-lm").verdict
    base = _row("residual", [2.00, 2.01, 2.02], steps=800)
    good = _row("ancre(tau=0.01)", [1.90, 1.91, 1.92], params=1035, steps=500)
    worse = _row("ancre(tau=0.01)", [2.10, 2.11, 2.12], params=1035, steps=None)
    lower_slow = _row("ancre(tau=0.01)", [1.995, 2.0, 2.01], params=1035, steps=800)
    assert v({"rows": [base, good]})[0] == "reproduced"
    assert v({"rows": [base, worse]})[0] == "not reproduced"
    assert v({"rows": [base, lower_slow]})[0] == "partial"


def test_laurel_vision_verdict_needs_a_gain_to_recover():
    v = get_experiment("laurel-vision").verdict
    acc = lambda a: [a - 0.001, a, a + 0.001]  # noqa: E731
    rows = [_row("baseline", [0.5] * 3, metric=acc(0.80)),
            _row("baseline + 1 block", [0.5] * 3, params=11000, metric=acc(0.82)),
            _row("laurel(rw)", [0.5] * 3, params=1000, metric=acc(0.815)),
            _row("laurel(rw, lr, rank=4)", [0.5] * 3, params=2000, metric=acc(0.821)),
            _row("laurel(rw, lr, pa, rank=4)", [0.5] * 3, params=3000, metric=acc(0.822))]
    rows[2]["extra_params"] = 0  # RW: < 0.01% of the baseline's parameters
    assert v({"rows": rows, "rank": 4})[0] == "reproduced"
    rows[2]["metric_mean"] = 0.805  # RW recovers only 25% of the gain
    assert v({"rows": rows, "rank": 4})[0] == "partial"
    rows[1]["metric_mean"] = 0.79  # the extra block does not help: no premise
    assert v({"rows": rows, "rank": 4})[0] == "not reproduced"


def test_ancre_depth_verdict():
    v = get_experiment("ancre-depth").verdict
    deep = _row("mlp64 residual", [0.10, 0.11, 0.12])
    shallow = _row("mlp16 residual", [0.2, 0.2, 0.2])
    assert v({"rows": [deep, _row("mlp16+ancre", [0.09, 0.1, 0.11]), shallow]})[0] == "reproduced"
    assert v({"rows": [deep, _row("mlp16+ancre", [0.105, 0.115, 0.125]), shallow]})[0] == "partial"
    assert v({"rows": [deep, _row("mlp16+ancre", [0.5, 0.6, 0.7]), shallow]})[0] == "not reproduced"
