"""The figures: bars carry the metrics.json numbers, histograms count the right images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gendet.eval import plots
from gendet.eval.metrics import metrics_report
from helpers.histories import short_training_history


def _report(acc_by_subset: dict[str, float]) -> dict:
    return {"subsets": {s: {"acc": a} for s, a in acc_by_subset.items()}}


def test_accuracy_bars_heights_are_the_reported_accuracies():
    reports = {"linear_probe": _report({"sd14": 0.5, "vqdm": 0.75}),
               "gendet": _report({"sd14": 0.875, "vqdm": 1.0, "wukong": 0.25})}
    fig = plots.accuracy_bars(reports)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    # groups sd14, vqdm, wukong, mean; one bar container per method, in the order given
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sd14", "vqdm", "wukong", "mean"]
    probe, gendet = heights[:4], heights[4:]
    assert probe[:2] == [0.5, 0.75] and np.isnan(probe[2]) and probe[3] == pytest.approx(0.625)
    assert gendet == pytest.approx([0.875, 1.0, 0.25, 0.708333333])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["linear_probe", "gendet"]


def test_score_histograms_split_real_and_fake_per_subset(tmp_path):
    rng = np.random.default_rng(1)
    subsets = ["sd14"] * 30 + ["vqdm"] * 20
    labels = (["real"] * 10 + ["fake"] * 20) + (["real"] * 15 + ["fake"] * 5)
    scores = rng.random(50)
    fig = plots.score_histograms(scores, labels, subsets, bins=10, threshold=0.5)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["sd14", "vqdm"]
    for ax, (n_real, n_fake) in zip(visible, [(10, 20), (15, 5)]):
        real_bars, fake_bars = ax.containers
        assert sum(p.get_height() for p in real_bars) == n_real
        assert sum(p.get_height() for p in fake_bars) == n_fake
    out = plots.save_png(fig, str(tmp_path / "plots" / "hist.png"))
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 100


def test_score_histograms_refuse_unequal_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        plots.score_histograms([0.1, 0.2], ["real"], ["sd14", "sd14"])


def test_accuracy_bars_from_real_metrics_reports():
    labels = np.array(["real", "fake"] * 8)
    subsets = np.array(["a"] * 8 + ["b"] * 8)
    good = np.where(labels == "fake", 0.9, 0.1)
    report = metrics_report(good, labels, subsets, calibrated_threshold=0.5, target_fpr=0.05,
                            model="m", encoder="spectrum:v1")
    fig = plots.accuracy_bars({"gendet": report}, metric="acc_calibrated")
    assert [p.get_height() for p in fig.axes[0].patches] == [1.0, 1.0, 1.0]
    assert fig.axes[0].get_ylabel() == "acc_calibrated"


@pytest.fixture(scope="module")
def short_history():
    """A real short training run's history: every rung, three rotations."""
    return short_training_history(rotations=3)


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def test_training_diagnostics_has_its_panels_with_a_point_per_rotation(short_history, tmp_path):
    fig = plots.training_diagnostics(short_history)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert list(panels) == list(plots.DIAGNOSTIC_PANELS)
    eq1, eq2, eq3, shift, gap = (_lines(panels[p]) for p in plots.DIAGNOSTIC_PANELS)
    rotations = [1, 2, 3]
    assert set(eq1) == {"ts_real", "ts_fake", "gendet"} and set(eq2) == {"ts_fake", "gendet"}
    assert set(eq3) == set(shift) == {"gendet"} and set(gap) == {"ts_fake", "gendet"}
    for lines in (eq1, eq2, eq3, shift, gap):
        assert all(xs == rotations for xs, _ in lines.values())
    rows = {(r["stage"], r["job"]): r for r in short_history}
    for i, r in enumerate(("r01", "r02", "r03")):
        assert eq1["gendet"][1][i] == pytest.approx(rows[(f"{r}.a", "real.gendet")]["mean_loss"])
        assert eq2["gendet"][1][i] == pytest.approx(rows[(f"{r}.b", "fake.gendet")]["hinge"])
        assert eq3["gendet"][1][i] == pytest.approx(rows[(f"{r}.c", "augmenter")]["mean_loss"])
        assert 0 < shift["gendet"][1][i] <= 0.5 + 1e-6  # TrainConfig.augmenter_bound
        for m in ("ts_fake", "gendet"):
            assert gap[m][1][i] == pytest.approx(rows[(f"{r}.b", f"fake.{m}")]["discrepancy"]
                                                 - rows[(f"{r}.a", f"real.{m}")]["discrepancy"])
    # the unweighted hinge is Eq. 2 itself: alpha * hinge is the stage's loss for ts_fake (raw fakes)
    from gendet.method.gendet.config import preset

    alpha = preset("debug").alpha
    assert rows[("r01.b", "fake.ts_fake")]["mean_loss"] == pytest.approx(alpha * rows[("r01.b", "fake.ts_fake")]["hinge"],
                                                                         rel=1e-4)
    out = plots.save_png(fig, str(tmp_path / "diag.png"))
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 1000


def test_training_diagnostics_marks_panels_a_run_does_not_have(short_history):
    no_gendet = [r for r in short_history if not r["job"].endswith("gendet") and r["job"] != "augmenter"]
    panels = {ax.get_title(): ax for ax in plots.training_diagnostics(no_gendet).axes if ax.get_visible()}
    for panel in plots.DIAGNOSTIC_PANELS[2:4]:  # Eq. 3 and G's shift: no augmenter without gendet
        assert not _lines(panels[panel]) and [t.get_text() for t in panels[panel].texts] == ["not in this run"]
    assert set(_lines(panels[plots.DIAGNOSTIC_PANELS[4]])) == {"ts_fake"}
