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
    assert "accuracy.png" in s["published"] and (out / "accuracy.png").stat().st_size > 0  # the claim's metric
    assert "](accuracy.png)" in (out / "results.md").read_text()  # and the published table shows it


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


# ---- presets split into parts (each part fits the hour; the last one to finish writes the summary) ----

def _tiny(**kw):
    from reslab.experiments.common import train_config

    return train_config("teacher", "mlp", task_args={"in_dim": 4, "out_dim": 1, "n_train": 64, "n_val": 32},
                        model_args={"width": 8, "n_blocks": 2}, steps=4, batch_size=16, eval_every=2, eval_batches=1,
                        warmup_steps=1, threads=1, **kw)


@pytest.mark.parametrize("seeds", [1, 2, 3, 7, 10, 14])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_seed_parts_cover_every_seed_once(seeds, count):
    from reslab.compare import SeedPart

    if count > seeds:
        return
    taken = [i for k in range(1, count + 1) for i in range(seeds)[SeedPart(k, count).slice(seeds)]]
    assert taken == list(range(seeds))
    assert all(len(range(seeds)[SeedPart(k, count).slice(seeds)]) >= 1 for k in range(1, count + 1))


def test_a_part_that_does_not_exist_is_refused():
    from reslab.compare import SeedPart

    for k in (0, 3, -1):
        with pytest.raises(ValueError, match=f"part {k} of 2 does not exist: parts are numbered 1 to 2"):
            SeedPart(k, 2)


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_arms_in_parts_trains_each_slice_once_and_reports_when_complete(tmp_path, jobs):
    """Part 1 trains the tuning runs and its seeds, then raises PartIncomplete naming the others' seeds; part 2
    trains the rest, reuses part 1's runs (not retrained: their files are untouched) and reports every seed in
    order, exactly as one whole run would."""
    from reslab.compare import PartIncomplete, SeedPart, run_arms, seed_part

    configs = {"residual": _tiny(), "plain": _tiny(connection="plain")}
    msgs = []
    with seed_part(SeedPart(1, 2)), pytest.raises(PartIncomplete) as e:
        run_arms(configs, 3, tmp_path / "split", "residual", tune={"lr": [1e-3, 3e-3]}, log=msgs.append, jobs=jobs)
    assert sorted(e.value.missing) == ["plain seed 1", "plain seed 2", "residual seed 1", "residual seed 2"]
    assert not (tmp_path / "split" / "results.json").exists()
    first = tmp_path / "split" / "plain" / "seed0" / "summary.json"
    stamp = first.stat().st_mtime_ns
    msgs.clear()
    with seed_part(SeedPart(2, 2)):
        rep = run_arms(configs, 3, tmp_path / "split", "residual", tune={"lr": [1e-3, 3e-3]}, log=msgs.append,
                       jobs=jobs)
    assert first.stat().st_mtime_ns == stamp
    assert not any("[tune" in m and "training" in m for m in msgs)  # tuning runs reused, not retrained
    if jobs == 1:
        assert any("seed 0] reusing the run another part finished" in m for m in msgs)
    assert [len(rep["runs"][arm]) for arm in configs] == [3, 3]
    whole = run_arms(configs, 3, tmp_path / "whole", "residual", tune={"lr": [1e-3, 3e-3]}, log=lambda m: None)
    for arm in configs:
        assert [r["final_val_loss"] for r in rep["runs"][arm]] == [r["final_val_loss"] for r in whole["runs"][arm]]


def test_run_cells_trains_every_cell_of_a_part_before_it_stops(tmp_path):
    from reslab.compare import PartIncomplete, SeedPart, seed_part
    from reslab.experiments.runner import run_cells

    cells = {"a": {"residual": _tiny()}, "b": {"residual": _tiny(connection="plain")}}
    with seed_part(SeedPart(2, 2)), pytest.raises(PartIncomplete) as e:
        run_cells(cells, 2, tmp_path, "residual", log=lambda m: None)
    assert sorted(e.value.missing) == ["a: residual seed 0", "b: residual seed 0"]
    assert (tmp_path / "a" / "residual" / "seed1" / "summary.json").exists()
    assert (tmp_path / "b" / "residual" / "seed1" / "summary.json").exists()


def test_reproduce_in_parts_publishes_only_when_every_part_is_done(tmp_path, monkeypatch, capsys):
    quick = get_experiment("laurel-lm").presets["quick"]
    monkeypatch.setitem(quick, "parts", 2)
    out = tmp_path / "lm"
    assert main(["reproduce", "laurel-lm", "--preset", "quick", "--out", str(out), "--part", "2"]) == 0
    said = capsys.readouterr().out
    assert "part 2 of 2 done" in said and "--part 1" in said and "Nothing was published" in said
    assert not (out / "summary.json").exists() and not list(out.glob("*.md"))
    assert main(["reproduce", "laurel-lm", "--preset", "quick", "--out", str(out), "--part", "1"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["command"] == ("reslab reproduce laurel-lm --preset quick --part 1 && "
                            "reslab reproduce laurel-lm --preset quick --part 2")
    assert set(s["part_wall_time_s"]) == {"1", "2"} and s["verdict"] in VERDICTS
    assert all(len(r["val_loss"]) == quick["seeds"] for r in s["results"]["rows"])
    assert not (out / "runs" / "parts.json").exists()


def test_reproduce_part_errors_are_one_line(tmp_path, monkeypatch, capsys):
    assert main(["reproduce", "laurel-lm", "--preset", "quick", "--out", str(tmp_path), "--part", "1"]) == 2
    assert "is not split into parts: drop --part" in capsys.readouterr().err
    monkeypatch.setitem(get_experiment("laurel-lm").presets["quick"], "parts", 2)
    assert main(["reproduce", "laurel-lm", "--preset", "quick", "--out", str(tmp_path), "--part", "3"]) == 2
    assert "part 3 of 2 does not exist" in capsys.readouterr().err


def test_split_cpu_presets_fit_their_parts():
    """Every part of a split preset trains at least two seeds of every arm, in an experiment that can be split."""
    for name, exp in experiments().items():
        for preset, s in exp.presets.items():
            if s.get("parts", 1) > 1:
                assert s["seeds"] // s["parts"] >= 2 and exp.splittable, (name, preset)


def test_pending_parts_let_every_step_train_before_the_part_stops():
    from reslab.compare import PartIncomplete, PendingParts

    pending, ran = PendingParts(), []
    for step in ("a", "b", "c"):
        with pending.step(f"{step}: "):
            ran.append(step)
            if step != "b":
                raise PartIncomplete([f"x seed {step}"])
            ran.append("b done")
    assert ran == ["a", "b", "b done", "c"]
    with pytest.raises(PartIncomplete) as e:
        pending.raise_if_any()
    assert e.value.missing == ["a: x seed a", "c: x seed c"]
    PendingParts().raise_if_any()  # nothing pending: no error


def test_an_experiment_with_its_own_loop_refuses_parts(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(get_experiment("pnnh-dissipation").presets["quick"], "parts", 2)
    assert main(["reproduce", "pnnh-dissipation", "--preset", "quick", "--out", str(tmp_path), "--part", "1"]) == 2
    assert "trains its runs in its own loop, which cannot be split by seed" in capsys.readouterr().err


def test_a_run_retrained_over_a_stale_one_is_reused_next_time(tmp_path, monkeypatch):
    """A finished run of older code is retrained afresh (resume=false); the run that replaces it is reused by the
    next call asking for the same run (resume is how a run starts, not what it trains)."""
    import dataclasses

    from reslab import compare

    cfg = dataclasses.replace(_tiny(), out_dir=str(tmp_path / "run"))
    msgs = []
    compare.train_or_reuse(cfg, msgs.append)
    record = tmp_path / "run" / compare.RUN_RECORD
    record.write_text(json.dumps(json.loads(record.read_text()) | {"code_revision": "older"}))
    compare.train_or_reuse(cfg, msgs.append)  # stale: trained again, afresh
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["config"]["resume"] is False
    msgs.clear()
    compare.train_or_reuse(cfg, msgs.append)
    assert any("reusing finished run" in m for m in msgs) and not any("training" in m for m in msgs)


def test_two_processes_needing_one_run_train_it_once(tmp_path):
    """Parts of a split preset started side by side both need the shared tuning runs: the run folder's lock makes
    the second caller wait for the first and reuse its finished run, never train into the same folder at once."""
    import dataclasses
    import threading

    from reslab import compare

    cfg = dataclasses.replace(_tiny(), out_dir=str(tmp_path / "run"))
    logs: dict[str, list[str]] = {"a": [], "b": []}
    held = compare.run_lock(cfg.out_dir, lambda m: None)
    held.__enter__()  # a first process holds the run: the callers below must wait for it
    threads = [threading.Thread(target=compare.train_or_reuse, args=(cfg, logs[k].append, f"[{k}]")) for k in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=0.5)
    assert all(t.is_alive() for t in threads)  # blocked on the lock, not training
    assert all(any("waiting: another process is training" in m for m in ms) for ms in logs.values())
    held.__exit__(None, None, None)
    for t in threads:
        t.join(timeout=120)
    trained = [k for k, ms in logs.items() if any("training" in m and "waiting" not in m for m in ms)]
    reused = [k for k, ms in logs.items() if any("reusing finished run" in m for m in ms)]
    assert len(trained) == 1 and len(reused) == 1 and set(trained + reused) == set(logs)


def test_parts_side_by_side_start_at_different_cells_and_visit_every_cell():
    from reslab.compare import SeedPart, seed_part
    from reslab.experiments.runner import part_order

    names = ["d8", "d20", "d32", "d56", "w0.25", "w0.5", "w1"]
    assert part_order(names) == names
    orders = []
    for k in (1, 2, 3):
        with seed_part(SeedPart(k, 3)):
            orders.append(part_order(names))
    assert [o[0] for o in orders] == ["d8", "d32", "w0.25"]
    assert all(sorted(o) == sorted(names) for o in orders)


def test_ancre_linear_records_every_gd_run_and_reuses_it(tmp_path, monkeypatch):
    """The GD loop's runs are recorded like Trainer runs (the summary lists each with its code revision and wall
    time) and reused by the next reproduce; a changed setting trains afresh."""
    from reslab.compare import RUN_RECORD
    from reslab.experiments import ancre_linear, reproduce

    stale = tmp_path / "a" / "runs" / "an-older-preset" / "seed0"  # left in the raw folder by an older preset
    stale.mkdir(parents=True)
    (stale / RUN_RECORD).write_text(json.dumps({"code_revision": "old", "status": "completed", "wall_time_s": 999.0}))
    first = reproduce("ancre-linear", "quick", tmp_path / "a", log=lambda m: None)
    assert first["runs"] and all(r["code_revision"] and r["wall_time_s"] >= 0 for r in first["runs"])
    assert not any("an-older-preset" in r["run"] for r in first["runs"])  # only the runs this result read
    assert first["training_wall_time_s"] < 999
    from reslab.compare import slug

    assert {r["run"].split("/")[2] for r in first["runs"]} == {slug(n) for n in ancre_linear.LAYOUTS[3]}
    calls = []
    real = ancre_linear.run_one
    monkeypatch.setattr(ancre_linear, "run_one", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = reproduce("ancre-linear", "quick", tmp_path / "a", log=lambda m: None)
    assert calls == [] and again["results"]["K"] == first["results"]["K"]
    monkeypatch.setitem(get_experiment("ancre-linear").presets["quick"], "target", 1e-6)
    reproduce("ancre-linear", "quick", tmp_path / "a", log=lambda m: None)
    assert calls  # another target: not the recorded runs
