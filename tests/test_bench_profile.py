"""`reslab bench profile`: the profiler's self times partition the step into kinds of work, the optimizer's own ATen
ops count as the optimizer's, and each arm's extra time is read against residual in the same run."""
from __future__ import annotations

import json

import pytest

from reslab.bench import step_profile as pf
from reslab.cli import main


@pytest.mark.parametrize("name, kind", [
    ("aten::mm", "matmul/conv"), ("aten::addmm", "matmul/conv"), ("aten::convolution_backward", "matmul/conv"),
    ("aten::mkldnn_convolution", "matmul/conv"), ("aten::_scaled_dot_product_flash_attention_for_cpu", "matmul/conv"),
    ("aten::mul", "eager elementwise/reductions"), ("aten::sum", "eager elementwise/reductions"),
    ("aten::mm_backward_helper_not_dense", "eager elementwise/reductions"),
    ("cpp_fused_add_mul_sum_3", "compiled kernels"), ("aten::sqrt" + pf.OPTIMIZER_TAG, "optimizer"),
    ("Optimizer.step#AdamW.step", "optimizer"), ("aten::_foreach_mul_", "optimizer"),
    ("autograd::engine::evaluate_function: MulBackward0", "other"), ("Torch-Compiled Region: 0/0", "other")])
def test_every_event_lands_in_one_kind_of_work(name, kind):
    assert pf.category(name) == kind


def test_differences_by_hand():
    profiles = {"residual": {"events": {"aten::mm": 10.0, "aten::add": 1.0}, "total_ms": 11.0,
                             "categories": {c: 0.0 for c in pf.CATEGORIES} | {"matmul/conv": 10.0,
                                                                               "eager elementwise/reductions": 1.0}},
                "rezero": {"events": {"aten::mm": 10.0, "aten::add": 1.0, "aten::mul": 0.5, "aten::sum": 0.3},
                           "total_ms": 11.8,
                           "categories": {c: 0.0 for c in pf.CATEGORIES} | {"matmul/conv": 10.0,
                                                                             "eager elementwise/reductions": 1.8}}}
    d = pf.differences(profiles)["rezero"]
    assert d["extra_ms"] == pytest.approx(0.8) and d["ratio"] == pytest.approx(11.8 / 11.0)
    assert d["categories"]["eager elementwise/reductions"] == pytest.approx(0.8)
    assert [n for n, _ in d["top"]] == ["aten::mul", "aten::sum"]  # an event only the arm has counts in full


def test_paired_round_ranges_separate_drift_from_added_work():
    """Round 1 ran slower for both arms (drift), round 2 faster: the convolutions' paired difference straddles 0
    while the arm's own elementwise work is positive in every round."""
    def cats(conv, elem):
        return {c: 0.0 for c in pf.CATEGORIES} | {"matmul/conv": conv, "eager elementwise/reductions": elem}

    def prof(rounds):
        mean = {c: sum(r[c] for r in rounds) / len(rounds) for c in pf.CATEGORIES}
        return {"events": {}, "categories": mean, "total_ms": sum(mean.values()), "rounds": rounds}

    profiles = {"residual": prof([cats(100.0, 10.0), cats(80.0, 10.0)]),
                "ancre": prof([cats(95.0, 12.0), cats(84.0, 13.0)])}
    r = pf.differences(profiles)["ancre"]["range"]
    assert r["matmul/conv"] == [-5.0, 4.0]
    assert r["eager elementwise/reductions"] == [2.0, 3.0]
    assert r["total"] == [-3.0, 7.0]
    m = pf.differences(profiles)["ancre"]["median"]
    assert m["eager elementwise/reductions"] == pytest.approx(2.5) and m["total"] == pytest.approx(2.0)
    md = pf.markdown({"path": "eager", "size": "tiny", "steps": 1, "warmup": 0, "rounds": 2, "threads": 1,
                      "machine": {}, "models": {"resnet": {"profiles": profiles,
                                                           "differences": pf.differences(profiles)}}})
    assert "(+2.50 [+2.0, +3.0])" in md and "straddles 0" in md


def test_profile_cli_partitions_each_step(tmp_path, capsys):
    assert main(["bench", "profile", "--model", "resnet", "--size", "tiny", "--connections", "rezero", "--steps", "1", "--warmup", "1",
                 "--rounds", "2", "--threads", "1", "--busy-ok", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "profile.json").read_text())
    profiles = res["models"]["resnet"]["profiles"]
    assert all(len(p["rounds"]) == 2 for p in profiles.values())
    assert res["models"]["resnet"]["differences"]["rezero"]["range"]["total"][0] <= \
        res["models"]["resnet"]["differences"]["rezero"]["range"]["total"][1]
    assert list(profiles) == ["residual", "rezero"]
    for prof in profiles.values():
        assert sum(prof["categories"].values()) == pytest.approx(prof["total_ms"])
        assert prof["categories"]["matmul/conv"] > 0 and prof["categories"]["optimizer"] > 0
        assert any(n.endswith(pf.OPTIMIZER_TAG) for n in prof["events"])  # AdamW's ops counted as the optimizer's
    assert "rezero" in res["models"]["resnet"]["differences"]
    md = (tmp_path / "profile.md").read_text()
    assert "| `rezero` |" in md and "grew most against `residual`" in md


def test_profile_cli_compiled_names_its_path(tmp_path):
    assert main(["bench", "profile", "--model", "vit", "--size", "tiny", "--connections", "scaled", "--steps", "1", "--warmup", "1",
                 "--compile", "--compile-backend", "aot_eager", "--threads", "1", "--busy-ok", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "profile.json").read_text())
    assert res["path"] == "compiled (aot_eager)" and set(res["models"]["vit"]["profiles"]) == {"residual", "scaled"}


def test_profile_bad_input_is_one_line(capsys):
    assert main(["bench", "profile", "--steps", "0"]) != 0
    err = capsys.readouterr().err
    assert "--steps and --rounds must be >= 1" in err and "Traceback" not in err


def test_profile_refuses_a_busy_machine(monkeypatch, tmp_path, capsys):
    from reslab.bench import machine

    monkeypatch.setattr(machine, "load_average", lambda: 5.0)
    assert main(["bench", "profile", "--out", str(tmp_path)]) == 3
    assert "load average 5.00 > 0.5" in capsys.readouterr().err and not (tmp_path / "profile.json").exists()


def test_compiled_event_names_compare_across_arms():
    """Two arms' compiled graphs name the same kernel with their own graph index, kernel index and hash: those are
    dropped, so a kernel both arms run is compared, not counted in full for each."""
    assert pf.event_name("graph_3_cpp_fused_add_copy__threshold_backward_16") == "cpp_fused_add_copy__threshold_backward"
    assert pf.event_name("graph_12_cpp_fused_add_copy__threshold_backward_2") == "cpp_fused_add_copy__threshold_backward"
    assert pf.event_name("## Call CompiledFxGraph f5ipj4xajkpsxzc2guhd4t5") == "## Call CompiledFxGraph"
    assert pf.event_name("aten::mm") == "aten::mm" and pf.event_name("aten::_foreach_mul_") == "aten::_foreach_mul_"
