"""Benchmarks: `reslab bench overhead` at a tiny size (JSON structure, every registered connection present in
every family, ratios against residual of the same run, refusal of noisy or busy-machine ratios, the compiled
and fused paths; no timing assertions) and the scoreboard on fixture summaries."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from reslab.bench import machine
from reslab.bench import overhead as ov
from reslab.bench import overhead_runs as runs
from reslab.bench import scoreboard as sb
from reslab.cli import main
from reslab.connections import list_connections


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("overhead")
    result = ov.run_overhead(ov.MODELS, size="tiny", repeats=3, warmup=1, memory=False, out_dir=out,
                             log=None)
    return out, result


def test_overhead_json_has_every_registered_connection(tiny_run):
    out, result = tiny_run
    on_disk = json.loads((out / "overhead.json").read_text())
    assert on_disk["models"].keys() == {"gpt", "resnet", "vit"}
    want = {ov.canonical_spec(i.example) for i in list_connections()} | {"laurel(rw)", "laurel(rw, lr)"}
    assert "laurel(rw, lr)" == ov.canonical_spec("laurel(rw, lr, rank=16)")  # the rank=16 arm
    for m, res in on_disk["models"].items():
        assert set(res["arms"]) == want, m
        assert list(res["arms"])[0] == "residual"
        for a, r in res["arms"].items():
            assert len(r["times_s"]) == 3 and all(t > 0 for t in r["times_s"])
            assert r["times_s"] == r["wall_times_s"] and len(r["cpu_times_s"]) == 3  # default clock: wall
            assert r["params"] > 0 and r["units_per_step"] == (2 * 8 if m == "gpt" else 2)
    for key in ("load_before", "load_after", "others_cpu", "busy", "path"):
        assert key in on_disk
    assert on_disk["machine"]["cpu_model"] and on_disk["machine"]["threads"] == on_disk["threads"]
    assert on_disk["path"] == "eager" and not on_disk["compile"] and not on_disk["fused"]
    md = (out / "overhead.md").read_text()
    assert all(f"`{a}`" in md for a in want)


def test_overhead_ratios_are_against_residual_of_the_same_run(tiny_run):
    _, result = tiny_run
    for m, res in result["models"].items():
        arms = res["arms"]
        base = arms["residual"]
        assert base["time_ratio"] == 1.0 and base["extra_params"] == 0
        for a, r in arms.items():
            assert r["time_s_median"] == statistics.median(r["times_s"])
            assert r["time_ratio"] == pytest.approx(r["time_s_median"] / statistics.median(base["times_s"]))
            assert r["throughput"] == pytest.approx(r["units_per_step"] / r["time_s_median"])
            paired = [x / y for x, y in zip(r["times_s"], base["times_s"])]
            assert r["time_ratio_paired_median"] == pytest.approx(statistics.median(paired))
            assert r["extra_params"] == r["params"] - base["params"]
        # the connection's own parameters: ANCRe has K(K+1)/2 - 1 per stack, plain none
        assert arms["plain"]["connection_params"] == 0
    # gpt tiny: K = 2 layers -> 2 ancre logits; resnet tiny (depth 8): stacks of 1, 0, 0 blocks -> 0
    assert result["models"]["gpt"]["arms"]["ancre"]["connection_params"] == 2
    assert result["models"]["resnet"]["arms"]["ancre"]["connection_params"] == 0


def test_overhead_targets_table_is_computed(tiny_run):
    _, result = tiny_run
    rows = result["targets"]
    assert len(rows) == len(ov.TARGETS) * 3
    for t in rows:
        r = result["models"][t["model"]]["arms"][t["arm"]]
        if t["metric"] == "time":
            assert t["ratio"] == r["time_ratio"]
            iqr = r["time_ratio_paired_q3"] - r["time_ratio_paired_q1"]
            assert t["paired_iqr"] == pytest.approx(iqr)
            why = ov.refusal(iqr, t["limit"], result["busy"])
            assert t["refused"] == why
            assert t["status"] == ("refused" if why else "pass" if t["ratio"] <= t["limit"] else "miss")
        else:  # memory was not measured in this run
            assert t["ratio"] is None and t["status"] is None


def test_summarize_and_targets_by_hand():
    raw = {
        "residual": {"wall_times_s": [1.0, 2.0, 3.0], "cpu_times_s": [2.0, 2.0, 2.0], "units_per_step": 10,
                     "params": 100, "connection_params": 0, "peak_step_memory_bytes": 1000},
        "ancre": {"wall_times_s": [1.1, 2.2, 3.3], "cpu_times_s": [2.0, 2.1, 2.2], "units_per_step": 10,
                  "params": 105, "connection_params": 5, "peak_step_memory_bytes": 1005},
    }
    s = ov.summarize(raw)
    assert s["ancre"]["time_ratio_cpu"] == pytest.approx(1.05) and s["ancre"]["time_ratio_wall"] == pytest.approx(1.1)
    c = ov.summarize(raw, clock="cpu")
    assert c["ancre"]["time_ratio"] == pytest.approx(1.05) and c["ancre"]["times_s"] == [2.0, 2.1, 2.2]
    with pytest.raises(ValueError, match="clock"):
        ov.summarize(raw, clock="gpu")
    assert s["ancre"]["time_ratio"] == pytest.approx(1.1)
    assert s["ancre"]["throughput"] == pytest.approx(10 / 2.2)
    assert s["ancre"]["time_ratio_paired_median"] == pytest.approx(1.1)  # per-round ratios 1.1, 1.1, 1.1: IQR 0
    assert s["ancre"]["memory_ratio"] == pytest.approx(1.005)
    assert s["ancre"]["extra_params"] == 5
    rows = {(t["target"], t["metric"]): t for t in ov.evaluate_targets({"gpt": {"arms": s}})}
    assert rows[("ancre", "time")]["status"] == "miss"  # 1.1 > 1.03
    assert rows[("ancre", "memory")]["status"] == "pass"  # 1.005 <= 1.01
    assert rows[("rezero", "time")]["status"] is None  # arm not measured


def test_unique_arms_and_bad_input():
    assert ov.unique_arms(["ancre", "laurel(rw, lr, rank=16)", "laurel(rw,lr)"]) == ["residual", "ancre",
                                                                                     "laurel(rw, lr)"]
    with pytest.raises(ValueError, match="ancer"):
        ov.unique_arms(["ancer"])
    with pytest.raises(ValueError, match="unknown model"):
        ov.run_overhead(("mlp",), size="tiny", log=None)
    with pytest.raises(ValueError, match="warmup"):
        ov.run_overhead(("gpt",), size="tiny", warmup=0, compile="aot_eager", log=None)
    with pytest.raises(ValueError, match="unknown size"):
        ov.run_overhead(("gpt",), size="huge", log=None)
    with pytest.raises(ValueError, match="repeats"):
        ov.run_overhead(("gpt",), size="tiny", repeats=0, log=None)
    with pytest.raises(ValueError, match="steps_per_round"):
        ov.run_overhead(("gpt",), size="tiny", steps_per_round=0, log=None)


def test_steps_per_round_times_the_mean_of_consecutive_steps(monkeypatch):
    """With k steps per round every arm takes k optimizer steps per round and each sample is their mean."""
    calls = []
    real = ov.train_step
    monkeypatch.setattr(ov, "train_step", lambda net, opt, x, y: (calls.append(id(opt)), real(net, opt, x, y)))
    raw = ov.time_arms("gpt", "tiny", ["residual", "rezero"], repeats=2, warmup=1, device=torch.device("cpu"),
                       log=None, steps_per_round=3)
    assert len(calls) == 2 * (1 + 2) * 3 and len(set(calls)) == 2  # 2 arms x 3 rounds x 3 steps
    assert all(len(raw[a]["wall_times_s"]) == 2 and len(raw[a]["cpu_times_s"]) == 2 for a in raw)


def test_cli_overhead_with_memory_probe(tmp_path, capsys):
    rc = main(["bench", "overhead", "--model", "resnet", "--size", "tiny", "--repeats", "1", "--warmup", "0",
               "--connections", "plain", "--out", str(tmp_path), "--clock", "cpu", "--max-load", "-1"])
    assert rc == 0
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["clock"] == "cpu" and "**cpu** clock" in (tmp_path / "overhead.md").read_text()
    res = data["models"]["resnet"]
    assert list(res["arms"]) == ["residual", "plain"]  # residual is always added, first
    for r in res["arms"].values():  # measured in the probe process; tiny tensors may stay under 1 page
        assert isinstance(r["peak_step_memory_bytes"], int) and r["peak_step_memory_bytes"] >= 0
    assert "RSS" in res["memory_method"] or "ru_maxrss" in res["memory_method"]
    out = capsys.readouterr().out
    assert "| target |" in out and "Machine: " in out and "load average" in out


def test_refusal_rules_by_hand():
    assert ov.refusal(0.009, 1.01) is None
    assert ov.refusal(0.02, 1.01) == ("paired IQR 0.020 is wider than the target's margin 0.010: rerun on a quiet "
                                      "machine")
    assert ov.refusal(0.0, 1.05, busy="load average 4.00 > 0.5 before the run").endswith("rerun on a quiet machine")
    assert machine.busy_reason(0.2, [0.1, None], 0.5) is None
    assert "load average 0.90" in machine.busy_reason(0.9, [0.1], 0.5)
    assert "1.20 cores" in machine.busy_reason(0.2, [0.1, 1.2], 0.5)
    assert machine.busy_reason(9.0, [9.0], None) is None  # no limit asked for
    raw = {a: {"wall_times_s": w, "cpu_times_s": w, "units_per_step": 1, "params": 1, "connection_params": 0,
               "peak_step_memory_bytes": None}
           for a, w in {"residual": [1.0, 1.0, 1.0, 1.0], "scaled": [1.0, 1.0, 1.1, 1.2],
                        "rezero": [1.0, 1.0, 1.0, 1.0]}.items()}
    rows = {(t["arm"], t["metric"]): t for t in ov.evaluate_targets({"gpt": {"arms": ov.summarize(raw)}})}
    assert rows[("scaled", "time")]["status"] == "refused" and "IQR" in rows[("scaled", "time")]["refused"]
    assert rows[("rezero", "time")]["status"] == "pass"
    rows = ov.evaluate_targets({"gpt": {"arms": ov.summarize(raw)}}, busy="load average 3.00 > 0.5 before the run")
    assert all(t["status"] == "refused" for t in rows if t["metric"] == "time" and t["ratio"] is not None)
    md = ov.target_table({"targets": rows})
    assert "refused: load average 3.00" in md and "1.000×" not in md  # a refused ratio is not printed


def test_cli_refuses_to_start_on_a_busy_machine(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(machine, "load_average", lambda: 7.5)
    rc = main(["bench", "overhead", "--model", "gpt", "--size", "tiny", "--out", str(tmp_path)])
    assert rc == 3 and not (tmp_path / "overhead.json").exists()
    assert "load average 7.50 > 0.5" in capsys.readouterr().err


def test_compiled_and_fused_paths(tmp_path):
    """--compile (aot_eager here: inductor compiles for minutes on CPU) and --fused run end to end, and the
    compiled run's default arms are residual + the targets' arms."""
    assert ov.target_arms()[0] == "residual" and "laurel(rw, lr)" in ov.target_arms() and "mhc" in ov.target_arms()
    res = ov.run_overhead(("gpt",), size="tiny", repeats=1, warmup=1, connections=["ancre"], memory=False,
                          compile="aot_eager", log=None, max_load=None)
    assert res["path"] == "compiled (aot_eager)" and list(res["models"]["gpt"]["arms"]) == ["residual", "ancre"]
    res = ov.run_overhead(("vit",), size="tiny", repeats=1, warmup=1, connections=["denseformer"], memory=True,
                          fused=True, log=None, max_load=None)
    assert res["path"] == "eager, fused stream sums" and res["busy"] is None
    assert all(r["peak_step_memory_bytes"] is not None for r in res["models"]["vit"]["arms"].values())


# ---------------------------------------------------------------------------------------------
# scoreboard


def _summary(name, verdict, stats=True, preset="cpu", **kw):
    row = {"arm": "residual", "val_loss_mean": 1.0}
    if stats:
        row |= {"val_loss_std": 0.1, "welch_p_vs_baseline": 0.03, "steps_to_target": 400}
    return {"experiment": name, "paper": f"Paper of {name}", "claim": f"{name} beats residual | by a lot",
            "paper_number": "+1.2 points", "preset": preset, "verdict": verdict,
            "explanation": f"ours: {verdict} with Δ=0.4", "command": f"reslab reproduce {name} --preset {preset}",
            "results": {"rows": [row]}} | kw


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    for d, s in {"alpha": _summary("alpha", "reproduced"),
                 "beta": _summary("beta", "partial", stats=False),
                 "gamma": _summary("gamma", "not reproduced"),
                 "gamma-gpu": _summary("gamma", "reproduced", preset="gpu")}.items():
        (root / d).mkdir(parents=True)
        (root / d / "summary.json").write_text(json.dumps(s))
    (root / "bench-overhead").mkdir()
    (root / "bench-overhead" / "overhead.json").write_text(json.dumps({
        "device": "cpu", "size": "default", "command": "reslab bench overhead",
        "targets": [{"target": "ancre", "model": "gpt", "metric": "time", "limit": 1.03, "ratio": 1.01,
                     "paired_iqr": 0.005, "status": "pass"},
                    {"target": "rezero", "model": "gpt", "metric": "time", "limit": 1.01, "ratio": 1.05,
                     "paired_iqr": 0.005, "status": "miss"}]}))
    (root / "notes").mkdir()  # a folder without summary.json is ignored
    return root


def test_scoreboard_table_from_fixture_summaries(results_dir):
    out = sb.write_scoreboard(results_dir, log=lambda *_: None)
    text = out.read_text()
    assert out == results_dir / "README.md"
    assert "4 result(s): 2 reproduced, 1 partial, 1 not reproduced" in text
    lines = [l for l in text.splitlines() if l.startswith("| [")]
    assert [l.split("]")[0] for l in lines] == ["| [alpha", "| [beta", "| [gamma", "| [gamma"]  # cpu before gpu
    gamma_cpu = lines[2]
    assert "**not reproduced**" in gamma_cpu and "+1.2 points" in gamma_cpu and "Paper of gamma" in gamma_cpu
    assert "`reslab reproduce gamma --preset cpu`" in gamma_cpu and "ours: not reproduced with Δ=0.4" in gamma_cpu
    assert "beats residual \\| by a lot" in gamma_cpu  # a '|' in a claim cannot break the table
    assert "missing: mean ± std, Welch p, steps-to-target" in lines[1] and "| ✓ |" in lines[0]
    assert ": 1 of 2 met, 1 missed" in text and "| `rezero` | gpt | time | ≤ 1.01× | 1.050× | **miss** |" in text


def test_missing_stats_reads_any_results_shape():
    assert sb.missing_stats({"results": {"arms": {"a": {"acc_std": 0.1, "steps_to_target_per_seed": [3, 4]}}}}) == [
        "Welch p"]
    assert sb.missing_stats({"results": [{"welch_p_fd_cls": 0.2}]}) == ["mean ± std", "steps-to-target"]
    assert sb.missing_stats({}) == list(sb.STATS)


def test_scoreboard_rewrites_only_the_marked_readme_block(results_dir):
    top = results_dir.parent / "README.md"
    top.write_text("# Title\nintro\n<!-- scoreboard:start -->\nold rows\n<!-- scoreboard:end -->\ntail\n")
    assert main(["bench", "scoreboard", "--results", str(results_dir), "--readme"]) == 0
    text = top.read_text()
    assert text.startswith("# Title\nintro\n<!-- scoreboard:start -->\n") and text.endswith("<!-- scoreboard:end -->\ntail\n")
    assert "old rows" not in text
    assert "| [gamma](results/gamma/) |" in text and "**not reproduced** (cpu); reproduced (gpu)" in text
    # every headline row names the command behind each of its verdicts
    assert "`reslab reproduce gamma --preset cpu`<br>`reslab reproduce gamma --preset gpu` |" in text
    assert "[results/README.md](results/README.md)" in text and ": 1 of 2 met, 1 missed" in text
    sb.write_scoreboard(results_dir, readme=True, log=lambda *_: None)
    assert top.read_text() == text  # idempotent


def test_scoreboard_without_markers_leaves_readme_alone(results_dir):
    top = results_dir.parent / "README.md"
    top.write_text("# Title\nno markers here\n")
    msgs = []
    sb.write_scoreboard(results_dir, readme=True, log=msgs.append)
    assert top.read_text() == "# Title\nno markers here\n"
    assert any("left unchanged" in m for m in msgs)
    assert (results_dir / "README.md").exists()


def test_scoreboard_bad_summaries_are_named(results_dir):
    (results_dir / "broken").mkdir()
    (results_dir / "broken" / "summary.json").write_text(json.dumps({"experiment": "broken", "claim": "x"}))
    with pytest.raises(ValueError, match=r"broken.*lacks verdict, command"):
        sb.load_summaries(results_dir)
    (results_dir / "broken" / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sb.load_summaries(results_dir)
    with pytest.raises(ValueError, match="does not exist"):
        sb.load_summaries(results_dir / "nowhere")


# ---------------------------------------------------------------------------------------------
# the fused stream ops the overhead work introduced (reslab/connections/_fused.py): same values as the
# plain expressions (bit for bit forward), same gradients


def _chain(fused: bool, xs0, W, blocks_w):
    """A 3-call ANCRe-like chain: h_{j+1} = (h_j + f_j(h_j)) + sum_{i<=j} W[j, i] h_i, f_j(h) = tanh(h * w_j)."""
    from reslab.connections._fused import _plain_sum, weighted_sum

    hs, h, pending = [xs0], xs0, {}
    for j, w in enumerate(blocks_w):
        out = torch.tanh(h * w)
        if fused:
            h = weighted_sum([h, out], W[j, : j + 1], hs, pending, [(i, i == j) for i in range(j + 1)],
                             last_call=j == len(blocks_w) - 1)
        else:
            h = _plain_sum([h, out], W[j, : j + 1], hs)
        hs.append(h)
    return h, hs


def test_weighted_sum_matches_plain_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    res = {}
    for fused in (False, True):
        y, _ = _chain(fused, x, W, ws)
        grads = torch.autograd.grad((y.sin()).sum(), [x, W, *ws])
        res[fused] = (y, grads)
    assert torch.equal(res[True][0], res[False][0])  # same sums in the same order
    for a, b in zip(res[True][1], res[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # a backward pass cut short (gradient w.r.t. an inner state, so the calls that would hand sources
    # 0 and 1 their sums never run) must not leak into the next pass over the same graph
    y, hs = _chain(True, x, W, ws)
    torch.autograd.grad(y.sum(), [hs[2]], retain_graph=True)
    full = torch.autograd.grad((y.sin()).sum(), [x, W, *ws])
    for a, b in zip(full, res[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_scaled_add_matches_plain_autograd():
    from reslab.connections._fused import scaled_add

    g = torch.Generator().manual_seed(1)
    x, f = (torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    a, b = (torch.randn((), generator=g, requires_grad=True) for _ in range(2))  # float32 scalars, as in LAuReL
    for fused, plain in ((scaled_add(x, f, a, b), b * x + a * f), (scaled_add(x, f, a), x + a * f)):
        # addcmul may fuse the multiply-add (one rounding instead of two): equal to the last bit or so
        torch.testing.assert_close(fused, plain, rtol=1e-15, atol=1e-15)
        assert fused.dtype == torch.float64
        gf = torch.autograd.grad(fused.pow(2).sum(), [x, f, a, b], allow_unused=True)
        gp = torch.autograd.grad(plain.pow(2).sum(), [x, f, a, b], allow_unused=True)
        for u, v in zip(gf, gp):
            assert (u is None) == (v is None)
            if u is not None:
                assert u.dtype == v.dtype
                torch.testing.assert_close(u, v)


def test_combined_table_over_runs(tiny_run, tmp_path, capsys):
    out, result = tiny_run
    compiled = json.loads((out / "overhead.json").read_text()) | {"path": "compiled (inductor)", "busy": None}
    for t in compiled["targets"]:
        t["status"] = "pass" if t["metric"] == "time" and t["ratio"] is not None else t["status"]
    compiled["targets"][0]["status"] = "refused"  # ancre on gpt: refused in this run
    (tmp_path / "c.json").write_text(json.dumps(compiled))
    assert main(["bench", "overhead", "--table-from", str(out / "overhead.json"), str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    rows = {l.split("|")[1].strip(): l for l in text.splitlines() if l.startswith("| `")}
    assert set(rows) == {f"`{a}`" for a in result["arms"]}
    header = next(l for l in text.splitlines() if l.startswith("| connection"))
    assert header.count("|") == 2 + 6 and "compiled (inductor)" in header  # 3 families x 2 runs
    ancre = rows["`ancre`"].split("|")[2:-1]
    first_busy = bool(result["busy"])
    assert ancre[3].strip().startswith("refused")  # gpt column of the compiled run
    assert ancre[0].strip().startswith("refused") == (first_busy or any(
        t["arm"] == "ancre" and t["model"] == "gpt" and t["status"] == "refused" for t in result["targets"]))


def test_combined_table_merges_runs_of_the_same_kind(tiny_run, tmp_path, capsys):
    """A second compiled run that measured other schemes fills their rows in the compiled columns (no new
    columns); each cell is that run's own ratio; a scheme both runs judged keeps the first run's cell."""
    out, _ = tiny_run
    base = json.loads((out / "overhead.json").read_text()) | {"path": "compiled (inductor)", "busy": None}

    def run_with(arms: dict[str, float]) -> dict:
        r = json.loads(json.dumps(base))
        r["arms"] = list(arms)
        r["targets"] = []
        for m in r["models"].values():
            m["arms"] = {a: {"time_ratio": t, "memory_ratio": t + 0.5} for a, t in arms.items()}
        return r

    (tmp_path / "a.json").write_text(json.dumps(run_with({"residual": 1.0, "ancre": 1.25})))
    (tmp_path / "b.json").write_text(json.dumps(run_with({"residual": 1.0, "ancre": 9.0, "frac": 2.125})))
    assert main(["bench", "overhead", "--table-from", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    text = capsys.readouterr().out
    header = next(l for l in text.splitlines() if l.startswith("| connection"))
    assert header.count("|") == 2 + 3  # one column per family: both runs are compiled, same threads
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]] for l in text.splitlines()
            if l.startswith("| `")}
    assert list(rows) == ["`residual`", "`ancre`", "`frac`"]
    assert rows["`ancre`"] == ["1.250× / 1.750×"] * 3  # the first run's cell
    assert rows["`frac`"] == ["2.125× / 2.625×"] * 3  # only the second run measured it


def test_combined_table_takes_each_time_from_the_most_precise_run(tiny_run, tmp_path, capsys):
    """Runs of one kind (path, size) share columns; a cell's time is the ratio of the run that timed the most steps,
    refused or not (a short run that happened to be judged never replaces a refused long one); a time measured at
    other threads than the column's first run says so; memory comes from the first run that measured it; another
    size gets its own columns."""
    out, _ = tiny_run
    base = json.loads((out / "overhead.json").read_text()) | {"busy": None, "repeats": 6}

    def run_with(path, threads, size, steps, arms, refused=(), memory=True):
        r = json.loads(json.dumps(base)) | {"path": path, "threads": threads, "size": size, "steps_per_round": steps}
        r["arms"] = list(arms)
        r["targets"] = [{"arm": a, "model": m, "metric": "time", "status": "refused" if a in refused else "pass",
                         "paired_iqr": 0.001} for a in arms for m in r["models"] if a != "residual"]
        for m in r["models"].values():
            m["arms"] = {a: {"time_ratio": t, "memory_ratio": (t + 0.5) if memory else None} for a, t in arms.items()}
        return r

    runs = [run_with("eager", 2, "default", 1, {"residual": 1.0, "ancre": 1.5, "scaled": 1.0}, refused=["ancre"]),
            run_with("eager", 2, "default", 25, {"residual": 1.0, "ancre": 1.25, "scaled": 1.25},
                     refused=["scaled"], memory=False),
            run_with("compiled (inductor)", 1, "default", 1, {"residual": 1.0, "ancre": 3.0, "frac": 2.0},
                     refused=["ancre"]),
            run_with("compiled (inductor)", 2, "default", 25, {"residual": 1.0, "ancre": 1.125}, memory=False),
            run_with("eager", 2, "wide", 12, {"residual": 1.0, "ancre": 1.0625}, memory=False)]
    files = []
    for i, r in enumerate(runs):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(r))
    assert main(["bench", "overhead", "--table-from", *map(str, files)]) == 0
    text = capsys.readouterr().out
    header = [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| connection")).split("|")[2:-1]]
    assert header == [f"{m} ({kind})" for kind in ("eager, 2 thr", "compiled (inductor), 1 thr", "eager, size wide, 2 thr")
                      for m in ("gpt", "resnet", "vit")]

    def row(arm):
        cells = next(l for l in text.splitlines() if l.startswith(f"| `{arm}`")).split("|")[2:-1]
        return dict(zip(header, (c.strip() for c in cells)))

    ancre = row("ancre")
    assert ancre["gpt (eager, 2 thr)"] == "1.250× / 2.000×"  # time of the 25-step run, memory of the other
    assert row("scaled")["gpt (eager, 2 thr)"] == "refused / 1.500×"  # the 25-step run refused it: so is the cell
    assert ancre["gpt (compiled (inductor), 1 thr)"] == "1.125× (2 thr) / 3.500×"  # timed at 2 threads, says so
    assert ancre["gpt (eager, size wide, 2 thr)"] == "1.062× / —"  # no wide run measured memory
    assert row("frac")["gpt (compiled (inductor), 1 thr)"] == "2.000× / 2.500×"
    # a refused cell shows the paired spread that was too wide, when the run recorded it (not for a busy run)
    runs[1]["models"]["gpt"]["arms"]["scaled"] |= {"time_ratio_paired_q1": 1.021, "time_ratio_paired_q3": 1.046}
    runs[1]["models"]["resnet"]["arms"]["scaled"] |= {"time_ratio_paired_q1": 1.021, "time_ratio_paired_q3": 1.046}
    files[1].write_text(json.dumps(runs[1]))
    runs[3]["models"]["gpt"]["arms"]["ancre"] |= {"time_ratio_paired_q1": 1.0, "time_ratio_paired_q3": 1.5}
    files[3].write_text(json.dumps(runs[3] | {"busy": "load average 2.0 > 0.5"}))
    assert main(["bench", "overhead", "--table-from", *map(str, files)]) == 0
    text = capsys.readouterr().out
    assert row("scaled")["gpt (eager, 2 thr)"] == "refused [1.021, 1.046] / 1.500×"
    assert row("scaled")["resnet (eager, 2 thr)"] == "refused [1.021, 1.046] / 1.500×"
    assert row("scaled")["vit (eager, 2 thr)"] == "refused / 1.500×"  # no spread recorded for this family
    assert row("ancre")["gpt (compiled (inductor), 1 thr)"] == "refused / 3.500×"  # busy: no spread shown


def test_combined_table_takes_memory_from_the_latest_commit(tiny_run):
    """Two runs of one kind that both measured memory: the cell's memory is the later commit's (the scoreboard's
    rule), whichever was given first; without an order (or on a tie) the first given."""
    out, _ = tiny_run
    base = json.loads((out / "overhead.json").read_text())

    def run_at(git, memory):
        r = json.loads(json.dumps(base)) | {"git": git}
        for m in r["models"].values():
            m["arms"]["scaled"]["memory_ratio"] = memory
        return r

    def scaled_gpt(table):
        header = [c.strip() for c in next(l for l in table.splitlines() if l.startswith("| connection")).split("|")[2:-1]]
        cells = next(l for l in table.splitlines() if l.startswith("| `scaled`")).split("|")[2:-1]
        return dict(zip(header, (c.strip() for c in cells)))[header[0]].split(" / ")[1]

    old, new = run_at("aaa", 1.25), run_at("bbb", 1.5)
    order = {"aaa": 1, "bbb": 2}
    assert scaled_gpt(runs.combined_table([old, new], lambda r: order[r["git"]])) == "1.500×"
    assert scaled_gpt(runs.combined_table([new, old], lambda r: order[r["git"]])) == "1.500×"
    assert scaled_gpt(runs.combined_table([old, new])) == "1.250×"
    assert scaled_gpt(runs.combined_table([old, new], lambda r: 0)) == "1.250×"
    asked = []  # the order may cost a git call: asked once per run, not once per cell
    runs.combined_table([old, new], lambda r: asked.append(r["git"]) or order[r["git"]])
    assert sorted(asked) == ["aaa", "bbb"]


def test_overhead_line_counts_refused_targets_apart_from_met_and_missed():
    t = lambda target, status, ratio, kind="eager, 2 thr": {  # noqa: E731
        "target": target, "model": "gpt", "metric": "time", "limit": 1.03, "ratio": ratio, "status": status,
        "kind": kind}
    line = sb.overhead_line([t("ancre", "pass", 1.01), t("denseformer", "miss", 1.08), t("rezero", "refused", 1.0),
                             t("ancre", "miss", 1.2, "compiled (inductor), 2 thr")], "x.md")
    assert "eager, 2 thr: 1 of 3 met, 1 missed, 1 refused" in line
    assert "compiled (inductor), 2 thr: 0 of 1 met, 1 missed" in line
    line = sb.overhead_line([t("ancre", "pass", 1.01), t("rezero", "refused", 1.0, "eager, 1 thr")], "x.md")
    assert "1 other kind(s) of run judged none (eager, 1 thr)" in line and "eager, 1 thr:" not in line
    assert sb.overhead_line([], "x.md") == ""


def test_judged_targets_takes_each_target_from_its_most_precise_run(tmp_path):
    """The run that timed the most steps wins, whatever it found (a short run that happened to be judged does not
    replace a refused long one); kinds (path, threads, size, clock) stay apart; a time ratio recorded without its
    paired IQR (older than the refusal rule) counts as refused."""
    def run(d, steps, targets, **kind):
        r = {"device": "cpu", "path": "eager", "threads": 2, "size": "default", "repeats": 6,
             "steps_per_round": steps, "git": None, "targets": targets} | kind
        (tmp_path / "bench-overhead" / d).mkdir(parents=True, exist_ok=True)
        (tmp_path / "bench-overhead" / d / "overhead.json").write_text(json.dumps(r))

    def t(target, status, ratio, metric="time", iqr=0.005):
        return {"target": target, "model": "gpt", "metric": metric, "limit": 1.03, "ratio": ratio, "status": status,
                "paired_iqr": iqr if metric == "time" else None}

    run(".", 1, [t("ancre", "refused", 0.9), t("rezero", "pass", 1.0), t("ancre", "miss", 1.04, "memory"),
                 t("laurel", "pass", 1.0)])
    run("steps4", 4, [t("ancre", "pass", 1.02), t("rezero", "miss", 1.05), t("laurel", "refused", 1.1)])
    run("steps25", 25, [t("ancre", "miss", 1.10), t("denseformer", "refused", 1.5)])
    run("compiled", 25, [t("ancre", "pass", 1.0)], path="compiled (inductor)")
    run("wide", 12, [t("ancre", "pass", 1.01)], size="wide")
    run("old", 1, [t("ancre", "pass", 1.0, iqr=None)], threads=1, clock="cpu")
    rows = sb.judged_targets(sb.load_overhead_runs(tmp_path), tmp_path)
    got = {(r["kind"], r["target"], r["metric"]): (r["status"], r["run"]) for r in rows}
    assert got[("eager, 2 thr", "ancre", "time")] == ("miss", "bench-overhead/steps25")  # most steps, worse ratio
    assert got[("eager, 2 thr", "rezero", "time")] == ("miss", "bench-overhead/steps4")
    assert got[("eager, 2 thr", "laurel", "time")] == ("refused", "bench-overhead/steps4")  # not the judged short run
    assert got[("eager, 2 thr", "denseformer", "time")] == ("refused", "bench-overhead/steps25")
    assert got[("eager, 2 thr", "ancre", "memory")] == ("miss", "bench-overhead")
    assert got[("compiled (inductor), 2 thr", "ancre", "time")] == ("pass", "bench-overhead/compiled")
    assert got[("eager, 2 thr, size wide", "ancre", "time")] == ("pass", "bench-overhead/wide")
    assert got[("eager, 1 thr, cpu clock", "ancre", "time")] == ("refused", "bench-overhead/old")  # no paired IQR
    assert [r["kind"] for r in rows][0] == "eager, 2 thr"  # eager default first in the headline
    assert sb.commit_order("no-such-revision", tmp_path) == 0  # git cannot tell: no order, no error
    md = sb.scoreboard_markdown([], rows)
    assert "| eager, 2 thr | `ancre` | gpt | time | ≤ 1.03× | 1.100× | **miss** | [bench-overhead/steps25]" in md
    assert "| eager, 2 thr | `denseformer` | gpt | time | ≤ 1.03× | — | refused |" in md


def _errata_run(tmp_path, run, errata=None, name="compiled"):
    d = tmp_path / "bench-overhead" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "overhead.json").write_text(json.dumps(run))
    if errata is not None:
        (d / "ERRATA.json").write_text(json.dumps(errata))
    return d / "overhead.json"


def test_an_errata_file_beside_a_run_drops_the_arms_it_names_from_tables_and_scoreboard(tmp_path):
    """ERRATA.json next to an overhead.json names arms the run did not measure as it says (hyper/mhc that ran eagerly
    in a compiled run): load_run drops them from every family and the targets, the scoreboard and --table-from no
    longer see them, the other arms stay, and the output file itself is untouched. An erratum about another run
    (another git revision: a new run written into the folder) is skipped; malformed errata are a clear error."""
    from reslab.bench import scoreboard as sb

    arm = {"time_ratio": 1.0, "memory_ratio": 1.5, "time_ratio_paired_iqr": 0.0}
    run = {"device": "cpu", "path": "compiled (inductor)", "threads": 1, "size": "default", "repeats": 3,
           "steps_per_round": 1, "git": "abc1234", "arms": ["residual", "ancre", "mhc"],
           "models": {"resnet": {"arms": {"residual": arm, "ancre": arm, "mhc": arm}}},
           "targets": [{"target": "ancre", "arm": "ancre", "model": "resnet", "metric": "memory", "limit": 1.01,
                        "ratio": 1.5, "status": "miss", "paired_iqr": None},
                       {"target": "mhc", "arm": "mhc", "model": "resnet", "metric": "memory", "limit": 4.0,
                        "ratio": 1.5, "status": "pass", "paired_iqr": None}]}
    path = _errata_run(tmp_path, run)
    assert "mhc" in runs.load_run(path)["arms"]  # no errata yet: read as written
    _errata_run(tmp_path, run, [{"arms": ["mhc"], "git": "abc1234", "reason": "ran eagerly"}])
    fixed = runs.load_run(path)
    assert fixed["arms"] == ["residual", "ancre"] and list(fixed["models"]["resnet"]["arms"]) == ["residual", "ancre"]
    assert [t["arm"] for t in fixed["targets"]] == ["ancre"] and fixed["errata"][0]["reason"] == "ran eagerly"
    assert json.loads(path.read_text()) == run
    rows = sb.judged_targets(sb.load_overhead_runs(tmp_path), tmp_path)
    assert {(r["target"], r["status"]) for r in rows} == {("ancre", "miss")}
    table = runs.combined_table([fixed])
    assert "`ancre`" in table and "`mhc`" not in table
    # a later run written into the same folder is not the run the erratum is about: read as written
    later = runs.load_run(_errata_run(tmp_path, run | {"git": "def5678"}))
    assert "mhc" in later["arms"] and "errata" not in later
    _errata_run(tmp_path, run)
    for bad in ({"arms": "mhc"},  # not a list of errata
                [{"arms": ["mhc"], "reason": "no revision"}],
                [{"reason": "neither arms nor rename", "git": "abc1234"}],
                [{"arms": ["mhc"], "rename": {"mhc": "hyper"}, "git": "abc1234", "reason": "both"}]):
        (path.parent / "ERRATA.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="ERRATA.json is not a list of"):
            runs.load_run(path)
    (path.parent / "ERRATA.json").write_text("[{")
    with pytest.raises(ValueError, match="ERRATA.json is not valid JSON"):
        runs.load_run(path)


def _mhc_forms_run(**extra):
    def arm(memory, q1=0.99, q3=1.01):
        return {"time_ratio": 1.0, "memory_ratio": memory, "time_ratio_paired_q1": q1, "time_ratio_paired_q3": q3}

    return {"device": "cpu", "path": "eager", "threads": 2, "size": "default", "repeats": 3, "steps_per_round": 1,
            "git": "abc1234", "arms": ["residual", "ancre", "mhc", "mhc(sinkhorn_form=scalings)"],
            "models": {"resnet": {"arms": {"residual": arm(1.0), "ancre": arm(1.2), "mhc": arm(4.4),
                                           "mhc(sinkhorn_form=scalings)": arm(2.3)}},
                       # the GPT ran without the scalings arm: a rename must not invent one there
                       "gpt": {"arms": {"residual": arm(1.0), "ancre": arm(1.0), "mhc": arm(1.5)}}},
            "targets": [{"target": "ancre", "arm": "ancre", "model": m, "metric": "memory", "limit": 1.01,
                         "ratio": r, "status": "miss" if r > 1.01 else "pass", "paired_iqr": None}
                        for m, r in (("resnet", 1.2), ("gpt", 1.0))]
                       + [{"target": "mhc", "arm": "mhc", "model": m, "metric": "memory", "limit": 4.0, "ratio": r,
                           "status": "miss" if r > 4 else "pass", "paired_iqr": None}
                          for m, r in (("resnet", 4.4), ("gpt", 1.5))]} | extra


SWAP = {"mhc": "mhc(sinkhorn_form=matrix)", "mhc(sinkhorn_form=scalings)": "mhc"}


def test_a_rename_erratum_relabels_arms_whose_default_changed_and_judges_their_targets_again(tmp_path):
    """A run made when mhc's Sinkhorn form defaulted to the matrix: ERRATA.json renames its `mhc` to
    `mhc(sinkhorn_form=matrix)` and its `mhc(sinkhorn_form=scalings)` to `mhc` at once. The tables and the
    scoreboard then see the measured code under today's names: the memory target (mhc <= 4x) is judged on the arm
    now called mhc in each family that measured it, the matrix form has none, other arms and their rows stay, and
    the output file is untouched."""
    from reslab.bench import scoreboard as sb

    run = _mhc_forms_run()
    path = _errata_run(tmp_path, run, [{"rename": SWAP, "git": "abc1234", "reason": "the default form changed"}],
                       name="mhc-forms")
    fixed = runs.load_run(path)
    assert fixed["arms"] == ["residual", "ancre", "mhc(sinkhorn_form=matrix)", "mhc"]
    arms = fixed["models"]["resnet"]["arms"]
    assert arms["mhc"]["memory_ratio"] == 2.3 and arms["mhc(sinkhorn_form=matrix)"]["memory_ratio"] == 4.4
    assert set(fixed["models"]["gpt"]["arms"]) == {"residual", "ancre", "mhc(sinkhorn_form=matrix)"}
    assert {(t["arm"], t["model"], t["ratio"], t["status"]) for t in fixed["targets"]} == {
        ("ancre", "resnet", 1.2, "miss"), ("ancre", "gpt", 1.0, "pass"), ("mhc", "resnet", 2.3, "pass")}
    assert json.loads(path.read_text()) == run
    rows = sb.judged_targets(sb.load_overhead_runs(tmp_path), tmp_path)
    assert {(r["target"], r["model"], r["ratio"], r["status"]) for r in rows} == {
        ("ancre", "resnet", 1.2, "miss"), ("ancre", "gpt", 1.0, "pass"), ("mhc", "resnet", 2.3, "pass")}
    table = runs.combined_table([fixed])
    assert "| `mhc(sinkhorn_form=matrix)` | 1.000× / 4.400× | 1.000× / 1.500× |" in table  # resnet, then gpt
    assert "| `mhc` | 1.000× / 2.300× | — / — |" in table


def test_rename_errata_swap_at_once_compose_with_drops_and_rejudge_time_targets(tmp_path):
    """Renames apply at once (a true swap a <-> b keeps both measurements, each under the other's name); a drop
    before a rename composes; a renamed arm's time target is judged again by the current rule (a busy run refuses
    it, a run without paired quartiles refuses it); an erratum naming an arm the run no longer has, a rename that
    merges two arms, or a non-canonical new name is a clear error, not a silent no-op."""
    ancre_mem = {"time_ratio": 1.0, "memory_ratio": 1.2, "time_ratio_paired_q1": 0.99, "time_ratio_paired_q3": 1.01}
    dense_mem = ancre_mem | {"memory_ratio": 1.7}
    run = {"device": "cpu", "path": "eager", "threads": 2, "size": "default", "repeats": 3, "steps_per_round": 1,
           "git": "abc1234", "arms": ["residual", "ancre", "denseformer", "mhc"],
           "models": {"gpt": {"arms": {"residual": ancre_mem, "ancre": ancre_mem, "denseformer": dense_mem,
                                       "mhc": ancre_mem}}},
           "targets": []}
    swap = {"ancre": "denseformer", "denseformer": "ancre"}
    fixed = runs.load_run(_errata_run(tmp_path, run, [{"arms": ["mhc"], "git": "abc1234", "reason": "x"},
                                                   {"rename": swap, "git": "abc1234", "reason": "y"}]))
    arms = fixed["models"]["gpt"]["arms"]
    assert arms["ancre"]["memory_ratio"] == 1.7 and arms["denseformer"]["memory_ratio"] == 1.2
    assert fixed["arms"] == ["residual", "denseformer", "ancre"] and len(fixed["errata"]) == 2
    rows = {(t["arm"], t["metric"]): t for t in fixed["targets"]}
    assert rows[("ancre", "memory")]["ratio"] == 1.7 and rows[("ancre", "memory")]["status"] == "miss"
    assert rows[("ancre", "time")]["status"] == "pass" and rows[("denseformer", "time")]["status"] == "pass"
    busy = runs.load_run(_errata_run(tmp_path, run | {"busy": "load 1.9"}, [{"rename": swap, "git": "abc1234",
                                                                            "reason": "y"}], name="busy"))
    assert {t["status"] for t in busy["targets"] if t["metric"] == "time"} == {"refused"}
    old = {a: {"time_ratio": 1.0, "memory_ratio": 1.0} for a in run["arms"]}  # no paired quartiles recorded
    aged = runs.load_run(_errata_run(tmp_path, run | {"models": {"gpt": {"arms": old}}},
                                   [{"rename": swap, "git": "abc1234", "reason": "y"}], name="aged"))
    time_rows = [t for t in aged["targets"] if t["metric"] == "time"]
    assert time_rows and all(t["status"] == "refused" and "no paired IQR" in t["refused"] for t in time_rows)
    for errata, message in (
            ([{"rename": {"mhc": "ancre"}, "git": "abc1234", "reason": "x"}], "makes two arms of the run one"),
            ([{"rename": {"hyper": "x"}, "git": "abc1234", "reason": "x"}], r"\['hyper'\] not among the arms"),
            ([{"rename": swap, "git": "abc1234", "reason": "x"}, {"arms": ["ancre", "mhc(n=2)"], "git": "abc1234",
                                                                  "reason": "y"}], r"\['mhc\(n=2\)'\] not among"),
            ([{"rename": {"mhc": "mhc(sinkhorn_chunk=0, sinkhorn_form=matrix)"}, "git": "abc1234", "reason": "x"}],
             "not canonical; write 'mhc\\(sinkhorn_form=matrix\\)'")):
        with pytest.raises(ValueError, match=message):
            runs.load_run(_errata_run(tmp_path, run, errata, name="bad"))
