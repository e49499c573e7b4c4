"""Verdict rules: every rule can fail, uses significance over seeds, handles its premise, and the committed
results re-verify: re-applying each experiment's verdict() to its committed summary.json gives its verdict."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from reslab.experiments import VERDICTS, get_experiment
from reslab.experiments.common import decide, depth_premise, noninferior, significantly

RESULTS = Path(__file__).resolve().parent.parent / "results"
SUMMARIES = sorted(p for p in RESULTS.glob("*/summary.json") if json.loads(p.read_text()).get("experiment"))


@pytest.mark.parametrize("path", SUMMARIES, ids=[p.parent.name for p in SUMMARIES])
def test_committed_summary_reverifies(path):
    """The committed verdict is what the experiment's current rule gives on the committed per-seed values."""
    s = json.loads(path.read_text())
    v, why = get_experiment(s["experiment"]).verdict(s["results"])
    assert v in VERDICTS
    assert (v, why) == (s["verdict"], s["explanation"]), (
        f"{path}: rule gives {v!r}, summary says {s['verdict']!r}; run `reslab reproduce {s['experiment']} "
        f"--preset {s['preset']} --resummarize` (or re-run it)")


@pytest.mark.parametrize("path", SUMMARIES, ids=[p.parent.name for p in SUMMARIES])
def test_committed_pages_name_the_command_behind_their_numbers(path):
    """Every published page of an experiment (README.md, results.md) says, under its title, the command that
    produced it: the summary's own command."""
    s = json.loads(path.read_text())
    pages = [p for p in (path.parent / "README.md", path.parent / "results.md") if p.exists()]
    assert pages, f"{path.parent}: no published page"
    for page in pages:
        assert f"Reproduce: `{s['command']}`" in page.read_text(), (
            f"{page}: no 'Reproduce:' line; run `reslab reproduce {s['experiment']} --preset {s['preset']} --resummarize`")


def test_stamp_command_puts_one_line_under_the_title(tmp_path):
    from reslab.experiments import stamp_command

    (tmp_path / "results.md").write_text("# Title\n\n| a |\n")
    stamp_command(tmp_path, "reslab reproduce x --preset cpu")
    stamp_command(tmp_path, "reslab reproduce x --preset cpu --part 1 && reslab reproduce x --preset cpu --part 2")
    lines = (tmp_path / "results.md").read_text().split("\n")
    assert lines[0] == "# Title" and lines[2].startswith("Reproduce: `reslab reproduce x --preset cpu --part 1 && ")
    assert sum(x.startswith("Reproduce: ") for x in lines) == 1 and "| a |" in lines


def test_committed_results_hold_no_raw_runs():
    """results/ is outputs for readers: no per-seed run folders, logs or checkpoints (those live under runs/)."""
    raw = [p for p in RESULTS.rglob("*") if p.is_file() and (p.suffix in (".pt", ".jsonl") or "seed" in p.parent.name)]
    assert raw == []


def test_significance_needs_two_seeds_and_the_right_direction():
    assert significantly([1.0], [2.0], "lower") == (None, None)  # one seed: untestable, never a pass
    ok, p = significantly([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "lower")
    assert ok and p < 0.01
    assert significantly([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "higher")[0] is False
    assert significantly([1.0, 1.5, 0.5], [1.1, 1.6, 0.6], "lower")[0] is False  # lower mean, inside the noise


def test_noninferiority_passes_fails_or_is_untestable():
    assert noninferior([0.90, 0.901, 0.899], [0.90, 0.901, 0.899], 0.01, higher_better=True)[0] is True
    assert noninferior([0.85, 0.851, 0.849], [0.90, 0.901, 0.899], 0.01, higher_better=True)[0] is False
    assert noninferior([0.80, 0.95], [0.90, 0.88], 0.01, higher_better=True)[0] is None  # CI wider than the margin
    # a CI narrower than the margin: the estimate decides between fail (beyond the margin) and untestable (inside it)
    worse, close = [0.8848, 0.8852, 0.8850, 0.8842], [0.8960, 0.8964, 0.8962, 0.8958]
    assert noninferior([x + 0.004 for x in close], [0.8962, 0.8966, 0.8971, 0.8950], 0.01, True)[0] is True
    ok, text = noninferior(worse, [0.8950, 0.8950, 0.8965, 0.8945], 0.01, higher_better=True)  # -0.0105 ± ~0.001
    assert ok is False
    ok, text = noninferior([0.8865, 0.8935, 0.8890, 0.8910], [0.8970, 0.8955, 0.8945, 0.8960], 0.01, True)
    assert ok is None and "estimate inside the margin" in text  # about -0.007 with a CI reaching past -0.01
    assert noninferior([0.9], [0.9], 0.01, higher_better=True)[0] is None


def test_decide_premise_and_untestable():
    assert decide([("a", True, "")], premise=("p", False, ""))[0] == "inconclusive"
    assert decide([("a", True, "")], premise=("p", None, ""))[0] == "inconclusive"
    assert decide([("a", True, ""), ("b", True, "")])[0] == "reproduced"
    assert decide([("a", True, ""), ("b", None, "")])[0] == "partial"
    assert decide([("a", False, ""), ("b", None, "")])[0] == "not reproduced"
    assert decide([("a", None, ""), ("b", None, "")])[0] == "inconclusive"
    assert depth_premise([0.1, 0.11, 0.09], [0.2, 0.21, 0.19], higher_better=False)[0] is True
    assert depth_premise([0.19, 0.2, 0.21], [0.2, 0.21, 0.19], higher_better=False)[0] is False


def _row(arm, losses, params=1000, steps=100, metric=None, base_params=1000, steps_per_seed=None):
    return {"arm": arm, "val_loss": losses, "val_loss_mean": statistics.fmean(losses),
            "steps_to_target_per_seed": steps_per_seed if steps_per_seed is not None else [steps] * len(losses),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0, "params": params,
            "extra_params": params - base_params, "steps_to_target": steps, "welch_p_vs_baseline": None,
            "metric_per_seed": metric or [], "metric_mean": statistics.fmean(metric) if metric else None,
            "metric_std": statistics.stdev(metric) if metric and len(metric) > 1 else 0.0}


def test_ancre_lm_rule_uses_the_papers_steps_and_significance():
    """B is judged per seed: the means' ratio at most 0.657x and the steps significantly fewer (Welch) to pass; it
    fails only when the CI of the difference excludes the paper's 34.3%, else it is untestable."""
    verdict = get_experiment("ancre-lm").verdict

    def v(*rows):
        return verdict({"rows": list(rows), "steps": 800})

    base = _row("residual", [2.00, 2.01, 2.02], steps_per_seed=[800, 800, None])  # unreached: counted at 800
    good = _row("ancre(tau=0.01)", [1.90, 1.91, 1.92], steps_per_seed=[500, 480, 520])  # 0.625x, p << 0.05
    assert v(base, good)[0] == "reproduced"
    # 0.75x, tight: significantly fewer, but the CI of the difference (200 ± 25 steps) excludes 34.3% (274 steps)
    tight = v(base, _row("ancre(tau=0.01)", [1.90, 1.91, 1.92], steps_per_seed=[600, 590, 610]))
    assert tight[0] == "partial" and "FAIL (per seed [600, 590, 610]" in tight[1] and "CI excludes" in tight[1]
    # 0.77x with a CI that still reaches 0.657x: fewer, yet neither shown nor ruled out
    wide = v(base, _row("ancre(tau=0.01)", [1.90, 1.91, 1.92], steps_per_seed=[560, 640, 650]))
    assert "UNTESTABLE (per seed [560, 640, 650]" in wide[1] and "untestable at this scale" in wide[1]
    noisy = v(base, _row("ancre(tau=0.01)", [1.90, 1.91, 1.92], steps_per_seed=[300, 780, 420]))  # 0.625x, p > 0.05
    assert noisy[0] == "partial" and "B ≤ 0.657×" in noisy[1] and "UNTESTABLE (per seed [300, 780, 420]" in noisy[1]
    # no fewer steps at all, tight: the CI excludes the paper's effect
    same = v(base, _row("ancre(tau=0.01)", [1.90, 1.91, 1.92], steps_per_seed=[790, 800, 810]))
    assert "FAIL (per seed [790, 800, 810]" in same[1]
    never = v(base, _row("ancre(tau=0.01)", [1.90, 1.91, 1.92], steps_per_seed=[400, None, 400]))
    assert never[0] == "partial" and "never reach" in never[1]
    diverged = _row("ancre(tau=0.01)", [1.90, 1.91], steps_per_seed=[400, 410]) | {"diverged": 1}
    assert "FAIL (ANCRe seeds that never reach the baseline's final loss or diverged: 1 of 3)" in v(base, diverged)[1]
    assert v(base, _row("ancre(tau=0.01)", [2.10, 2.11, 2.12], steps_per_seed=[None] * 3))[0] == "not reproduced"
    assert v(base, _row("ancre(tau=0.01)", [1.99, 2.03, 2.0], steps_per_seed=[800] * 3))[0] == "not reproduced"
    one = v(_row("residual", [2.0], steps_per_seed=[800]), _row("ancre(tau=0.01)", [1.5], steps_per_seed=[100]))
    assert one[0] == "inconclusive" and one[1].count("UNTESTABLE") == 2  # seeds=1: no significance, no pass
    frozen = _row("ancre(tau=0.01, learn=false)", [1.905, 1.91, 1.915])
    assert "does not matter significantly" in v(base, good, frozen)[1]


def test_ancre_depth_premise_makes_it_inconclusive():
    v = get_experiment("ancre-depth").verdict
    deep = _row("mlp64 residual", [0.10, 0.11, 0.12])
    shallow = _row("mlp16 residual", [0.20, 0.21, 0.2])
    assert v({"rows": [deep, _row("mlp16+ancre", [0.10, 0.105, 0.11]), shallow]})[0] == "reproduced"
    assert v({"rows": [deep, _row("mlp16+ancre", [0.15, 0.155, 0.16]), shallow]})[0] == "partial"
    assert v({"rows": [deep, _row("mlp16+ancre", [0.5, 0.6, 0.7]), shallow]})[0] == "not reproduced"
    flat = _row("mlp16 residual", [0.10, 0.12, 0.11])  # depth does not matter: no premise
    assert v({"rows": [deep, _row("mlp16+ancre", [0.09, 0.1, 0.11]), flat]})[0] == "inconclusive"


def test_laurel_vision_rule_is_on_accuracy_with_a_premise():
    v = get_experiment("laurel-vision").verdict
    acc = lambda a: [a - 0.001, a, a + 0.001]  # noqa: E731
    loss = [0.5, 0.5, 0.5]  # the loss is the same everywhere: only accuracy can decide
    rows = [_row("baseline", loss, metric=acc(0.80), base_params=100_000, params=100_000),
            _row("baseline + 1 block", loss, params=103_000, metric=acc(0.82), base_params=100_000),
            _row("laurel(rw)", loss, params=100_002, metric=acc(0.815), base_params=100_000),
            _row("laurel(rw, lr, rank=16)", loss, params=101_000, metric=acc(0.8205), base_params=100_000)]
    assert v({"rows": rows, "rank": 16})[0] == "reproduced"
    rows[2] = _row("laurel(rw)", loss, params=100_002, metric=acc(0.805), base_params=100_000)  # 25% of the gain
    assert v({"rows": rows, "rank": 16})[0] == "partial"
    rows[1] = _row("baseline + 1 block", loss, params=103_000, metric=acc(0.80), base_params=100_000)
    assert v({"rows": rows, "rank": 16})[0] == "inconclusive"


def test_vit_compare_rule_tests_each_learned_arm_on_accuracy():
    from reslab.experiments.vit_compare import verdict

    def res(**acc):
        return {"skipped": {}, "rows": [{"arm": k.replace("_", "("), "metric_per_seed": v, "diverged": 0}
                                        for k, v in acc.items()]}

    r = [0.880, 0.881, 0.879, 0.880]
    assert verdict(res(residual=r, plain=[0.85, 0.851, 0.849, 0.85], ancre=[0.881, 0.88, 0.882, 0.88]))[0] == "reproduced"
    # the better of two learned arms is not enough: laurel clearly worse fails its own check
    assert verdict(res(residual=r, plain=[0.85, 0.851, 0.849, 0.85], ancre=[0.881, 0.88, 0.882, 0.88],
                       laurel=[0.86, 0.861, 0.859, 0.86]))[0] == "partial"
    assert verdict(res(residual=r, plain=[0.88, 0.881, 0.879, 0.88], ancre=[0.86, 0.861, 0.859, 0.86]))[0] \
        == "not reproduced"


def test_ancre_diffusion_rule_needs_significance():
    from reslab.experiments.ancre_diffusion import verdict

    def arm(mse, fd):
        return {"denoise_loss": mse, "fd_cls": fd, "denoise_loss_mean": statistics.fmean(mse),
                "fd_cls_mean": statistics.fmean(fd), "seeds": list(range(len(mse)))}

    def results(tau):
        return {"baseline": "residual", "per_arm": {"residual": arm([1.0, 1.01, 0.99], [10, 10.1, 9.9]), "ancre": tau},
                "fd_real_floor": 1.0, "paper_relative_fid_gain": 0.049}

    assert verdict(results(arm([0.9, 0.91, 0.89], [9, 9.1, 8.9])))[0] == "reproduced"
    assert verdict(results(arm([0.9, 0.91, 0.89], [9.5, 10.6, 9.8])))[0] == "partial"  # fd lower in mean only
    assert verdict(results(arm([0.99, 1.02, 1.0], [9.9, 10.2, 10])))[0] == "not reproduced"
    # fd_cls 7% lower in the mean, but its CI (~±6) is wider than the paper's effect (4.9% of 10): untestable, not
    # failed; with the denoise loss not lower either, nothing passed and one check failed
    wide = verdict(results(arm([0.99, 1.02, 1.0], [7.0, 9.5, 11.4])))
    assert wide[0] == "not reproduced" and "fd_cls significantly lower" in wide[1] and "UNTESTABLE (best tau)" in wide[1]
    assert "the CI reaches the stated effect" in wide[1]
    assert verdict(results(arm([0.9, 0.91, 0.89], [7.0, 9.5, 11.4])))[0] == "partial"
    # fd_cls significantly *worse*: the CI excludes the stated effect, so the check fails (however wide the CI)
    worse = verdict(results(arm([0.9, 0.91, 0.89], [12.5, 13.5, 12.0])))
    assert worse[0] == "partial" and "fd_cls significantly lower (p < 0.05, Bonferroni over 1 taus): FAIL" in worse[1]
    assert "the CI excludes the stated effect" in worse[1]


def test_pnnh_dissipation_rule_has_no_check_that_always_passes():
    """Only A (plain loses the input) and B (the post-activation residual keeps it) decide; PNNH's identity coder
    and Theorem 3.2 are unit tests and the near-identity scaled net is reported beside. A plain net that keeps its
    input makes A fail; a residual net that loses it makes B fail, however well the scaled net keeps it."""
    from reslab.experiments.pnnh_dissipation import verdict

    def rows(r2_lose, r2_keep):
        return [{"layer": 10, "probe_r2": statistics.fmean(r2_lose), "probe_r2_seeds": r2_lose},
                {"layer": 20, "probe_r2": statistics.fmean(r2_keep), "probe_r2_seeds": r2_keep}]

    def res(plain, residual=(0.7, 0.72, 0.71)):
        return {"per_data": {"synthetic": {"lose_layer": 10, "keep_layer": 20, "init": {
            "plain": {"rows": rows(plain, plain)}, "scaled": {"rows": rows([0.9, 0.91, 0.92], [0.8, 0.81, 0.82])},
            "residual": {"rows": rows(list(residual), list(residual))}, "pnnh": {"rows": rows([1.0] * 3, [1.0] * 3)}}}}}

    assert verdict(res([0.05, 0.06, 0.04]))[0] == "reproduced"
    assert verdict(res([0.9, 0.91, 0.92]))[0] == "not reproduced"
    assert verdict(res([0.05, 0.06, 0.04], residual=(0.12, 0.11, 0.13)))[0] == "partial"  # B fails: residual loses it


def test_parse_tune_and_values():
    from reslab.compare import parse_tune, with_values
    from reslab.train import TrainConfig

    assert parse_tune(["lr=1e-3,3e-3", "model_args.width=16,32"]) == {"lr": [1e-3, 3e-3], "model_args.width": [16, 32]}
    for bad in ("lr", "lr=1e-3", "nosuch=1,2", "seed=1,2", "foo.bar=1,2"):
        with pytest.raises(ValueError):
            parse_tune([bad])
    cfg = with_values(TrainConfig(task="teacher", model="mlp", model_args={"n_blocks": 2}),
                      {"lr": 0.5, "model_args.width": 8})
    assert cfg.lr == 0.5 and cfg.model_args == {"n_blocks": 2, "width": 8}


def test_compare_tune_picks_each_arms_own_value(tmp_path, capsys):
    """Each arm is tuned on the same grid and runs its seeds at its own choice; the table and results.json say it."""
    from reslab.cli import main

    out = tmp_path / "cmp"
    argv = ["compare", "--task", "teacher", "--model", "mlp", "--connections", "residual,plain", "--seeds", "2",
            "--out", str(out), "--tune", "lr=1e-9,3e-2", "steps=12", "eval_every=6", "log_every=6",
            "batch_size=16", "progress=false", "tensorboard=false", "model.width=16", "model.n_blocks=2",
            "task.n_train=128", "task.n_val=32", "task.in_dim=4", "task.out_dim=1"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    for arm in ("residual", "plain"):
        t = res["tuning"][arm]
        assert t["chosen"] == {"lr": 3e-2} and len(t["points"]) == 2 and t["seed"] == 1000  # lr 1e-9 cannot learn
        assert res["configs"][arm]["lr"] == 3e-2
        assert next(r for r in res["rows"] if r["arm"] == arm)["tuned"] == {"lr": 3e-2}
    assert "| tuned |" in (out / "results.md").read_text() and "lr=0.03" in (out / "results.md").read_text()
    runs = list((out / "residual").glob("seed*/reslab_run.json"))
    assert len(runs) == 2 and all(json.loads(p.read_text())["code_revision"] for p in runs)


def _fake_tuning(monkeypatch, best: dict[str, float]):
    """tune_arms against a stand-in trainer whose val loss is (ln lr - ln best[arm])^2; lr > 1 diverges."""
    import math

    from reslab import compare

    trained = []

    def fake(cfg, log=print, tag=""):
        trained.append((cfg.connection, cfg.lr))
        if cfg.lr > 1:
            return {"status": "diverged", "final_val_loss": None}
        return {"status": "completed", "final_val_loss": (math.log(cfg.lr) - math.log(best[cfg.connection])) ** 2}

    monkeypatch.setattr(compare, "train_or_reuse", fake)
    return trained


def test_tuning_extends_the_grid_beyond_an_edge_and_flags_what_stays_there(tmp_path, monkeypatch):
    from reslab.compare import tune_arms, tuning_markdown
    from reslab.train import TrainConfig

    trained = _fake_tuning(monkeypatch, {"residual": 0.05, "plain": 3e-3, "ancre": 1e-5})
    configs = {a: TrainConfig(connection=a) for a in ("residual", "plain", "ancre")}
    tuned, rep = tune_arms(configs, {"lr": [1e-3, 3e-3, 1e-2], "extend": 2}, tmp_path)
    # residual's optimum lies above the grid: 0.03 (edge again), then 0.09 (worse): 0.03 is inside, chosen
    assert rep["residual"]["extended"] == [0.03, 0.09] and rep["residual"]["chosen"] == {"lr": 0.03}
    assert not rep["residual"]["at_edge"] and tuned["residual"].lr == 0.03
    # plain's optimum is inside the grid: nothing added
    assert rep["plain"]["extended"] == [] and rep["plain"]["chosen"] == {"lr": 3e-3} and not rep["plain"]["at_edge"]
    # ancre's lies far below: two points added downwards and it is still at the edge, which the report says
    assert rep["ancre"]["extended"] == [3e-4, 9e-5] and rep["ancre"]["chosen"] == {"lr": 9e-5}
    assert rep["ancre"]["at_edge"] and "at the edge of the grid" in tuning_markdown({"ancre": rep["ancre"]})
    assert [p["values"]["lr"] for p in rep["ancre"]["points"]] == [9e-5, 3e-4, 1e-3, 3e-3, 1e-2]
    assert len(trained) == 3 * 3 + 2 + 0 + 2
    # without extend, an edge choice is still flagged
    _, rep0 = tune_arms({"residual": configs["residual"]}, {"lr": [1e-3, 3e-3, 1e-2]}, tmp_path)
    assert rep0["residual"]["chosen"] == {"lr": 1e-2} and rep0["residual"]["at_edge"]
    assert rep0["residual"]["extended"] == []


def test_tuning_extension_goes_down_when_every_point_diverges(tmp_path, monkeypatch):
    from reslab.compare import tune_arms
    from reslab.train import TrainConfig

    _fake_tuning(monkeypatch, {"residual": 1.0})
    _, rep = tune_arms({"residual": TrainConfig()}, {"lr": [4.0, 8.0], "extend": 2}, tmp_path)
    assert rep["residual"]["extended"] == [2.0, 1.0] and rep["residual"]["chosen"] == {"lr": 1.0}
    with pytest.raises(ValueError, match="extend=2 needs one key"):
        tune_arms({"residual": TrainConfig()}, {"lr": [1e-3, 3e-3], "weight_decay": [0, 0.1], "extend": 2}, tmp_path)
    with pytest.raises(ValueError, match="increasing"):
        tune_arms({"residual": TrainConfig()}, {"lr": [3e-3, 1e-3], "extend": 1}, tmp_path)


def test_tuning_extension_stops_at_the_grids_sign_and_flags_an_arm_nothing_trains(tmp_path, monkeypatch):
    from reslab import compare
    from reslab.train import TrainConfig

    seen = []

    def fake(cfg, log=print, tag=""):  # weight decay 0 is best; every lr above 1 diverges
        seen.append(cfg.weight_decay)
        if cfg.lr > 1:
            return {"status": "diverged", "final_val_loss": None}
        return {"status": "completed", "final_val_loss": 1.0 + cfg.weight_decay}

    monkeypatch.setattr(compare, "train_or_reuse", fake)
    _, rep = compare.tune_arms({"a": TrainConfig()}, {"weight_decay": [0.0, 0.1], "extend": 2}, tmp_path)
    assert rep["a"]["extended"] == [] and rep["a"]["chosen"] == {"weight_decay": 0.0} and rep["a"]["at_edge"]
    assert min(seen) >= 0  # never a negative weight decay
    _, rep = compare.tune_arms({"a": TrainConfig(lr=5.0)}, {"weight_decay": [0.0, 0.1]}, tmp_path)
    assert rep["a"]["all_diverged"] and not rep["a"]["at_edge"]
    assert "every point diverged" in compare.tuning_markdown(rep)
    # two keys: an edge in either is flagged
    _, rep = compare.tune_arms({"a": TrainConfig()}, {"lr": [1e-3, 1e-2], "weight_decay": [0.0, 0.1]}, tmp_path)
    assert rep["a"]["at_edge"]


def test_compare_cli_tune_extend_needs_a_grid(capsys):
    from reslab.cli import main

    assert main(["compare", "--task", "teacher", "--model", "mlp", "--connections", "residual", "--tune-extend",
                 "2"]) != 0
    assert "--tune-extend needs a --tune grid" in capsys.readouterr().err
    assert main(["compare", "--task", "teacher", "--model", "mlp", "--connections", "residual", "--tune",
                 "lr=1e-3,3e-3", "--tune-extend", "-1"]) != 0
    assert "--tune-extend must be >= 0" in capsys.readouterr().err


def test_dissipation_plot_labels_the_moment_ratio_axes(tmp_path, monkeypatch):
    """Both moment-ratio panels carry labelled y ticks inside the data's range: a narrow positive ratio (2-2.5, the
    second moment) on a linear axis, a signed one spanning decades (the mean ratio of a scaled net) on symlog with
    labels on both sides of zero."""
    from reslab.analysis import dissipation as D
    from reslab.report import plt

    rows = [{"layer": l, "survival": 0.5, "cantelli": 0.4, "mean_ratio": (-1) ** l * 10 ** (l / 3),
             "m2_ratio": 2.0 + 0.1 * l, "probe_r2": 0.9, "pairwise_cos": 0.1, "pre_mean": 0.0, "pre_m2": 1.0}
            for l in range(1, 7)]
    seen = {}
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: seen.setdefault("fig", fig) and close(fig))
    D.plot_profiles({"plain": rows}, tmp_path / "p.png")
    fig = seen["fig"]
    fig.canvas.draw()
    titles = dict(D.PLOT_KEYS)
    axes = {ax.get_title(): ax for ax in fig.axes}
    m2, mean = axes[titles["m2_ratio"]], axes[titles["mean_ratio"]]
    assert m2.get_yscale() == "linear" and mean.get_yscale() == "symlog"
    for ax in (m2, mean):
        lo, hi = ax.get_ylim()
        shown = [t for t, lab in zip(ax.get_yticks(), ax.get_yticklabels()) if lo <= t <= hi and lab.get_text()]
        assert len(shown) >= 2, ax.get_title()
    shown = [t for t, lab in zip(mean.get_yticks(), mean.get_yticklabels()) if lab.get_text()]
    assert min(shown) < 0 < max(shown)  # the negative side is labelled too


def _rex_results(sgd: dict, adamw: dict | None = None, depths=(20, 44)) -> dict:
    """rex-normfree results from {arm: {depth: [per-seed accuracy or None for a diverged seed]}} per optimiser."""
    from reslab.experiments.rex_normfree import accuracy_table

    def per_depth(arms):
        return {str(d): {"arms": {a: {"acc": v[d], "status": ["diverged" if x is None else "completed" for x in v[d]],
                                      "tuned": {"lr": 0.04}, "connection": a}
                                  for a, v in arms.items()}} for d in depths}

    opts = {"sgd": sgd} | ({"adamw": adamw} if adamw else {})
    res = {"depths": list(depths), "arms": list(sgd), "baseline": "batchnorm",
           "optimizers": {o: {"per_depth": per_depth(a), "tune": {"lr": [0.01, 0.04]}} for o, a in opts.items()}}
    for o in opts:
        res["optimizers"][o]["table"] = accuracy_table(res, o)
    return res


def test_rex_normfree_rule_is_decided_under_sgd_and_names_each_optimiser():
    v = get_experiment("rex-normfree").verdict
    stable = {20: [0.85, 0.851, 0.849], 44: [0.85, 0.852, 0.848]}
    good = {"batchnorm": stable, "lam=1": {20: [0.84, 0.83, 0.85], 44: [None, None, None]},
            "lam=1/sqrt(n)": stable, "lam=1/n": stable}
    adamw_fine = dict(good, **{"lam=1": stable})  # AdamW + clipping rescues λ = 1
    verdict, why = v(_rex_results(good, adamw_fine))
    assert verdict == "reproduced" and why.startswith("decided under sgd")
    assert "A [sgd]" in why and "Not counted, under adamw: A [adamw] unscaled λ=1 without BN fails or degrades " \
                                "with depth: FAIL" in why
    assert v(_rex_results(adamw_fine, good))[0] == "partial"  # λ = 1 trains under SGD: A fails, B passes
    unstable = dict(good, **{"lam=1/n": {20: [0.85, 0.851, 0.849], 44: [0.80, 0.79, 0.81]}})
    assert v(_rex_results(unstable))[0] == "partial"  # 1/n degrades: B fails
    one_seed = {a: {d: x[:1] for d, x in per.items()} for a, per in adamw_fine.items()}
    assert v(_rex_results(one_seed))[0] == "inconclusive"  # no failure, 1 seed: nothing testable


def test_rex_normfree_fails_needs_most_seeds_failing_at_depth_only():
    """A's 'fails with depth' is judged over seeds: one diverged seed of three is not a failure, a single seed
    never passes, and failing at the shallow depth too is not failing *with depth*."""
    v = get_experiment("rex-normfree").verdict
    stable = {20: [0.85, 0.851, 0.849], 44: [0.85, 0.852, 0.848]}

    def arms(lam1):
        return {"batchnorm": stable, "lam=1": lam1, "lam=1/sqrt(n)": stable, "lam=1/n": stable}

    two_of_three = v(_rex_results(arms({20: [0.84, 0.83, 0.85], 44: [0.7, None, 0.11]})))
    assert two_of_three[0] == "reproduced" and "depth 44 2/3 [fails]" in two_of_three[1]
    one_of_three = v(_rex_results(arms({20: [0.84, 0.83, 0.85], 44: [0.84, None, 0.85]})))
    assert one_of_three[0] == "partial" and "depth 44 1/3" in one_of_three[1] and "[fails]" not in one_of_three[1]
    everywhere = v(_rex_results(arms({20: [None, 0.2, None], 44: [None, None, None]})))
    assert everywhere[0] == "partial" and "depth 20 3/3, depth 44 3/3" in everywhere[1]
    assert "with depth: UNTESTABLE" in everywhere[1] and "not a depth effect" in everywhere[1]
    # a seed of 1/sqrt(n) that completes at chance accuracy did not train stably, as a diverged one: B fails
    collapsed = v(_rex_results({"batchnorm": stable, "lam=1": {20: [0.84, 0.83, 0.85], 44: [None, None, None]},
                                "lam=1/sqrt(n)": {20: [0.85, 0.851, 0.849], 44: [0.85, 0.1, 0.85]}, "lam=1/n": stable}))
    assert collapsed[0] == "partial" and "failed seeds d20 0/3, d44 1/3" in collapsed[1]
    # a large but noisy drop: the CI of the drop still reaches DEGRADE, so A is untestable, not failed
    noisy = v(_rex_results(arms({20: [0.75, 0.76, 0.74, 0.75], 44: [0.7, 0.61, 0.6, 0.23]})))
    assert "with depth: UNTESTABLE" in noisy[1] and "the CI reaches the stated effect" in noisy[1]
    half = v(_rex_results(arms({20: [0.84, 0.83], 44: [0.84, None]})))  # one completed deep seed: no Welch test
    assert "A [sgd] unscaled λ=1 without BN fails or degrades with depth: UNTESTABLE" in half[1]
    single = v(_rex_results({a: {d: x[:1] for d, x in per.items()}
                             for a, per in arms({20: [0.84], 44: [None]}).items()}))
    assert "A [sgd] unscaled λ=1 without BN fails or degrades with depth: UNTESTABLE" in single[1]


def test_dissipation_plot_shows_the_probe_r2_spread_over_seeds(tmp_path, monkeypatch):
    """The verdict's metric (probe R^2) is drawn with a band of ± one std over seeds when the rows carry them."""
    from reslab.analysis import dissipation as D
    from reslab.report import plt

    rows = [{"layer": l, "survival": 0.5, "cantelli": 0.4, "mean_ratio": 0.5, "m2_ratio": 2.0, "probe_r2": 0.9 - 0.1 * l,
             "probe_r2_seeds": [0.85 - 0.1 * l, 0.95 - 0.1 * l], "pairwise_cos": 0.1} for l in range(1, 6)]
    seen = {}
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: seen.setdefault("fig", fig) and close(fig))
    D.plot_profiles({"plain": rows}, tmp_path / "p.png")
    panels = {ax.get_title(): ax for ax in seen["fig"].axes}
    probe = panels["input probe R^2 (held out) (band: ± std over seeds)"]
    (band,) = probe.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert abs(ys.max() - (0.8 + 0.0707)) < 1e-3  # layer 1: mean 0.8 + std of (0.75, 0.85)
    assert len(panels["surviving-neuron ratio P(y>0)"].collections) == 0  # no per-seed values there: no band


def test_resummarize_rewrites_the_summary_and_the_published_readme_verdict(tmp_path):
    """A committed summary re-judged by the current rule: summary.json records it, and the README's verdict line
    follows, saying it was re-summarised (a folder never shows two verdicts)."""
    from reslab.experiments import resummarize

    s = json.loads((RESULTS / "pnnh-dissipation" / "summary.json").read_text())
    s["verdict"], s["explanation"] = "reproduced", "an older rule's text"
    s.pop("resummarized", None)
    (tmp_path / "summary.json").write_text(json.dumps(s))
    (tmp_path / "README.md").write_text("# title\n\n**Verdict: reproduced** — an older rule's text\n\nbody\n")
    out = resummarize(tmp_path / "summary.json", log=lambda *_: None)
    v, why = get_experiment("pnnh-dissipation").verdict(s["results"])
    assert (out["verdict"], out["explanation"]) == (v, why) and out["resummarized"][-1]["previous_verdict"] == "reproduced"
    text = (tmp_path / "README.md").read_text()
    assert f"**Verdict: {v}** — {why} (re-summarised at " in text and "older rule" not in text and "body" in text


@pytest.mark.parametrize("name", ["ancre-lm", "ancre-depth"])
def test_resummarize_draws_the_claims_plots_from_a_committed_summary(name, tmp_path):
    """A plot added after a run is drawn from the summary's per-seed values (nothing trained), linked from the
    folder's page and listed as published; the verdict is untouched."""
    import shutil

    from reslab.experiments import resummarize

    folder = tmp_path / name
    shutil.copytree(RESULTS / name, folder)
    for png in ("final_val_loss.png", "steps_to_target.png"):
        (folder / png).unlink(missing_ok=True)
    before = json.loads((folder / "summary.json").read_text())
    page = (folder / "results.md").read_text().split("\n")  # the page as it was before the hook drew anything
    (folder / "results.md").write_text("\n".join(l for l in page if "final_val_loss" not in l and "steps_to_t" not in l))
    s = resummarize(folder / "summary.json", log=lambda m: None)
    drawn = ["final_val_loss.png"] + (["steps_to_target.png"] if name == "ancre-lm" else [])
    assert all((folder / f).stat().st_size > 1000 and f in s["published"] for f in drawn)
    assert all(f"]({f})" in (folder / "results.md").read_text() for f in drawn)
    assert (s["verdict"], s["explanation"]) == (before["verdict"], before["explanation"])


def test_rex_capacity_b_knows_its_power():
    """B (1/sqrt(n) above 1/n): significant -> pass; not significant with a CI that excludes the stated half-point
    gain -> fail; a CI wide enough to hold that gain -> untestable, never a fail on noise."""
    import copy

    from reslab.experiments.rex_capacity import GAIN_B, verdict

    base = json.loads((RESULTS / "rex-capacity" / "summary.json").read_text())["results"]

    def b_status(mid_acc, low_acc):
        res = copy.deepcopy(base)
        mid = next(e for e in res["per_lam"] if e["lam"] == res["lam_1_over_sqrt_n"])
        mid["acc"], res["per_lam"][0]["acc"] = mid_acc, low_acc
        text = verdict(res)[1]
        return text.split("B accuracy at 1/sqrt(n) above 1/n: ")[1].split(" ")[0]

    low = [0.860, 0.861, 0.859, 0.860]
    assert b_status([x + 2 * GAIN_B for x in low], low) == "PASS"
    assert b_status([x + 0.0005 for x in low], low) == "FAIL"  # tight and no gain: the CI excludes GAIN_B
    assert b_status([0.84, 0.88, 0.85, 0.87], low) == "UNTESTABLE"  # noisy: the CI still holds GAIN_B


def test_committed_scoreboard_is_what_the_summaries_give():
    """results/README.md and the README's scoreboard block are regenerated from the committed summaries and overhead
    runs, never edited by hand: regenerating them here must give the committed text (`reslab bench scoreboard
    --readme` after any change to results/)."""
    from reslab.bench import scoreboard as sb

    summaries = sb.load_summaries(RESULTS)
    overhead = sb.judged_targets(sb.load_overhead_runs(RESULTS), RESULTS)
    notes = (RESULTS / sb.OVERHEAD_DIR / "NOTES.md").exists()
    assert sb.scoreboard_markdown(summaries, overhead, sb._gpu_presets(), overhead_notes=notes) == \
        (RESULTS / "README.md").read_text(), "results/README.md is stale: run `reslab bench scoreboard --readme`"
    top = (RESULTS.parent / "README.md").read_text()
    assert sb.replace_block(top, sb.headline_markdown(summaries, overhead)) == top, \
        "the README's scoreboard block is stale: run `reslab bench scoreboard --readme`"
