"""The comparison plot's second panel (issue #15): with one arm far from the rest (``plain`` in the demo), the
panel of differences to the baseline must zoom on the others and name the far arm with its gap, instead of
letting it set the axis and squeeze every other curve into a sliver."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reslab.report import _plot_relative, plot_curves  # noqa: E402


def _run(values):
    return {"status": "completed", "curve": [{"step": 50 * (i + 1), "val_loss": v} for i, v in enumerate(values)]}


ARMS = {"residual": [_run([2.40, 2.10, 1.90, 1.80])],
        "ancre": [_run([2.38, 2.07, 1.88, 1.78])],
        "laurel": [_run([2.41, 2.11, 1.91, 1.81])],
        "hyper": [_run([2.39, 2.09, 1.885, 1.79])],
        "plain": [_run([3.45, 3.40, 3.36, 3.34])]}


def test_relative_panel_zooms_on_the_near_arms_and_names_the_far_one():
    fig, ax = plt.subplots()
    _plot_relative(ax, ARMS, "residual", "val_loss")
    lo, hi = ax.get_ylim()
    # the near arms end within ±0.02 of residual; plain is +1.54 away and must not set the range
    assert lo < -0.02 and hi > 0.01 and hi - lo < 0.1, (lo, hi)
    labels = [line.get_label() for line in ax.get_lines()]
    assert "plain (off scale: +1.540)" in labels
    assert {"ancre", "laurel", "hyper", "residual"} <= set(labels)
    plt.close(fig)


def test_comparison_plot_has_the_relative_panel(tmp_path):
    plot_curves(ARMS, tmp_path / "curves.png", title="demo")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    # a single arm has nothing to be relative to: one panel, still written
    plot_curves({"residual": ARMS["residual"]}, tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 1000


def test_every_arm_of_a_big_comparison_gets_its_own_style():
    """14 schemes: matplotlib's 10-colour cycle gave `plain` and `residual` the same blue."""
    from reslab.report import arm_styles

    names = [f"arm{i}" for i in range(14)]
    styles = arm_styles(names)
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == 14


def test_an_accuracy_plot_says_higher_is_better(tmp_path, monkeypatch):
    """Accuracy curves are labelled higher-is-better (vit-compare's accuracy plot said "lower is better")."""
    import reslab.report as report

    labels = []
    monkeypatch.setattr(report, "finish_line_plot", lambda fig, ax, path, xl, yl, title: labels.append(yl))
    acc = {a: [{"status": "completed", "curve": [{"step": r["step"], "val_accuracy": 1 - r["val_loss"] / 4}
                                                 for r in runs[0]["curve"]]}] for a, runs in ARMS.items()}
    plot_curves(acc, tmp_path / "acc.png", key="val_accuracy")
    plot_curves(ARMS, tmp_path / "loss.png")
    assert labels == ["val accuracy (higher is better)", "val loss (lower is better)"]
