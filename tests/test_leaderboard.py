"""The leaderboards: quick presets run end to end through `reslab reproduce`, and the ranking rule (Welch vs residual,
Holm across schemes per depth) gives every verdict on synthetic per-seed values: it can come out either way."""
from __future__ import annotations

import json
import statistics

import pytest
from conftest import write_fake_fashion_mnist

from reslab.cli import main
from reslab.experiments import VERDICTS, get_experiment
from reslab.experiments.leaderboard_lm import depth_standing, holm, leaderboard_verdict, registry_schemes


def _row(arm, losses):
    return {"arm": arm, "val_loss": losses, "val_loss_mean": statistics.fmean(losses),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0}


BASE = [2.00, 2.01, 2.02]
SAME = [[2.005, 2.015, 2.00], [1.99, 2.03, 2.01], [2.02, 2.00, 2.012]]  # seed noise around residual


NOISY = [[1.90, 2.10, 2.02], [2.08, 1.93, 1.99], [1.95, 2.06, 2.12]]  # 10x the noise: a 2 % gain would not show


def _depth(better=False, worse=False, base=BASE, noisy=False):
    base = [1.92, 2.09, 2.0] if noisy else base
    rows = [_row("residual", base)] + [_row(f"noise{i}", v) for i, v in enumerate(NOISY if noisy else SAME)]
    if better:
        rows.append(_row("good", [1.80, 1.801, 1.802]))
    if worse:
        rows.append(_row("bad", [2.50, 2.501, 2.502]))
    return {"rows": rows}


def _res(*depths):
    return {"baseline": "residual", "depths": {f"L={i}": d for i, d in enumerate(depths)}}


def test_rule_gives_every_verdict():
    v = get_experiment("leaderboard-lm").verdict
    assert v(_res(_depth(better=True), _depth(better=True, worse=True)))[0] == "reproduced"
    verdict, text = v(_res(_depth(better=True), _depth()))
    assert verdict == "partial" and "L=0: BEATEN" in text and "L=1: HOLDS" in text and "good" in text
    assert v(_res(_depth(), _depth()))[0] == "not reproduced"  # a 2 % gain would have shown
    # no scheme beats residual, but seed noise hides a 2 % gain: underpowered, even with a much worse scheme present
    verdict, text = v(_res(_depth(worse=True, noisy=True), _depth(noisy=True)))
    assert verdict == "inconclusive" and "L=0: UNDERPOWERED" in text and "cannot resolve gains" in text
    assert v(_res(_depth(better=True), _depth(noisy=True)))[0] == "partial"
    assert get_experiment("leaderboard-vision").verdict(_res(_depth(better=True), _depth()))[0] == "partial"


def test_one_seed_is_untestable_never_a_win():
    one = _res({"rows": [_row("residual", [2.0]), _row("good", [1.0])]})
    verdict, text = leaderboard_verdict(one)
    assert verdict == "inconclusive" and "Holm over 0 schemes" in text
    assert depth_standing(one["depths"]["L=0"]["rows"])["schemes"]["good"]["call"] == "untestable"


def test_holm_correction_can_take_a_raw_win_away():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": None})
    # a scheme at raw p ~ 0.03 beats residual alone, not among many noise schemes
    edge = _row("edge", [1.98, 1.985, 1.99])
    alone = depth_standing([_row("residual", BASE), edge])["schemes"]["edge"]
    assert alone["p"] < 0.05 and alone["call"] == "better"
    many = depth_standing([_row("residual", BASE), edge] + [_row(f"n{i}", v) for i, v in enumerate(SAME)])
    assert many["schemes"]["edge"]["p_holm"] >= 0.05 and many["schemes"]["edge"]["call"] == "n.s."
    assert many["outcome"] == "holds" and many["resolvable"] <= many["effect"]
    noisy = depth_standing([_row("residual", [1.92, 2.09, 2.0])] + [_row(f"n{i}", v) for i, v in enumerate(NOISY)])
    assert noisy["outcome"] == "underpowered" and noisy["resolvable"] > noisy["effect"]


def test_every_registered_scheme_is_on_the_board():
    import reslab

    specs = registry_schemes()
    assert specs[0] == "residual" and len(specs) == len(reslab.connection_names())
    for name in ("leaderboard-lm", "leaderboard-vision"):
        exp = get_experiment(name)
        assert set(exp.presets) >= {"quick", "cpu", "gpu"}
        assert "schemes" not in exp.presets["cpu"] and "schemes" not in exp.presets["gpu"]  # all of them
        assert exp.presets["cpu"]["seeds"] >= 3 and exp.presets["gpu"]["seeds"] >= 3
        assert len(exp.presets["cpu"]["tune"]["lr"]) >= 2


@pytest.mark.slow
def test_lm_quick_preset_runs_end_to_end(tmp_path):
    assert main(["reproduce", "leaderboard-lm", "--preset", "quick", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["verdict"] in VERDICTS and s["experiment"] == "leaderboard-lm"
    assert (s["verdict"], s["explanation"]) == get_experiment("leaderboard-lm").verdict(s["results"])
    depths = s["results"]["depths"]
    assert list(depths) == ["L=1", "L=2"]
    for d in depths.values():
        arms = [r["arm"] for r in d["rows"]]
        assert arms[0] == "residual" and set(arms) == {"residual", "plain", "hyper"}
        assert all(r["tuned"]["lr"] in (3e-3, 1e-2) and r["tokens_per_s"] > 0 and len(r["val_loss"]) == 2
                   for r in d["rows"])
    assert {"results.md", "leaderboard.png", "speed.png", "curves_L=1.png", "curves_L=2.png"} <= set(s["published"])
    assert "| rank | scheme |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_vision_quick_preset_runs_on_tiny_idx_files(tmp_path, monkeypatch):
    data = write_fake_fashion_mnist(tmp_path / "data", 300, 100)
    monkeypatch.setenv("RESLAB_DATA", str(data))
    out = tmp_path / "out"
    assert main(["reproduce", "leaderboard-vision", "--preset", "quick", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["verdict"] in VERDICTS
    rows = s["results"]["depths"]["n_layer=2"]["rows"]
    assert rows[0]["arm"] == "residual" and all(r["images_per_s"] > 0 for r in rows)
    assert "leaderboard.png" in s["published"]
