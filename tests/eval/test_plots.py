"""The figures: bars carry the metrics.json numbers, histograms count the right images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gendet.eval import plots
from gendet.eval.metrics import metrics_report


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
