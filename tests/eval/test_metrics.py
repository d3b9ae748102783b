"""metrics.json figures against hand-computed cases, including one-sided subsets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gendet.eval.metrics import band_low, best_accuracy, calibrated_threshold, metrics_report, subset_metrics, verdict


def test_subset_metrics_by_hand():
    scores = np.array([0.1, 0.6, 0.3, 0.7, 0.4, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    m = subset_metrics(scores, labels, threshold=0.5, calibrated_threshold=0.65)
    assert (m["n_real"], m["n_fake"]) == (3, 3)
    # at 0.5: reals 0.1, 0.3 right, 0.6 wrong; fakes 0.7, 0.9 right, 0.4 wrong
    assert m["real_acc"] == pytest.approx(2 / 3) and m["fake_acc"] == pytest.approx(2 / 3)
    assert m["acc"] == pytest.approx(4 / 6)
    # at 0.65: all reals right, fakes 0.7 and 0.9 right
    assert m["real_acc_calibrated"] == 1.0 and m["fake_acc_calibrated"] == pytest.approx(2 / 3)
    assert m["acc_calibrated"] == pytest.approx(5 / 6)
    # best threshold (e.g. 0.65) gets 5 of 6
    assert m["best_acc"] == pytest.approx(5 / 6)
    # AP: ranked 0.9 F, 0.7 F, 0.6 R, 0.4 F, ... -> precision at each fake: 1, 1, 3/4
    assert m["ap"] == pytest.approx((1 + 1 + 0.75) / 3)


def test_best_accuracy_perfectly_separable():
    assert best_accuracy(np.array([0.2, 0.3, 0.31, 0.9]), np.array([0, 0, 1, 1])) == 1.0


def test_calibrated_threshold_quantile_rule():
    reals = np.arange(100) / 100.0  # 0.00 .. 0.99
    t = calibrated_threshold(reals, 0.05)
    assert t == pytest.approx(0.95)
    assert np.mean(reals > t) <= 0.05  # 0.96 .. 0.99: 4 %
    assert calibrated_threshold(np.array([0.3]), 0.05) == 0.3


def test_subset_without_reals_or_fakes_gives_nan_then_null():
    scores = np.array([0.2, 0.8, 0.9, 0.7, 0.1])
    labels = np.array(["real", "fake", "fake", "fake", "real"])
    subsets = np.array(["a", "a", "fakes_only", "fakes_only", "reals_only"])
    report = metrics_report(scores, labels, subsets, threshold=0.5, calibrated_threshold=0.85,
                            target_fpr=0.05, model="runs:/x", encoder="enc")
    json.dumps(report, allow_nan=False)  # strict JSON: NaN became null
    fo, ro, a = report["subsets"]["fakes_only"], report["subsets"]["reals_only"], report["subsets"]["a"]
    assert (fo["n_real"], fo["n_fake"], fo["fake_acc"], fo["fake_acc_calibrated"]) == (0, 2, 1.0, 0.5)
    assert fo["acc"] is None and fo["ap"] is None and fo["best_acc"] is None and fo["real_acc"] is None
    assert ro["real_acc"] == 1.0 and ro["fake_acc"] is None and ro["ap"] is None
    assert a["acc"] == 1.0 and a["ap"] == 1.0
    assert report["mean_acc"] == 1.0 and report["mAP"] == 1.0  # only subset "a" has both sides
    assert report["mean_acc_calibrated"] == 0.5  # a at 0.85: real right, fake 0.8 wrong
    assert report["model"] == "runs:/x" and report["calibrated_threshold"] == 0.85


def test_pooled_reals_pair_with_fake_only_subsets():
    scores = np.array([0.1, 0.2, 0.9, 0.3])
    labels = np.array([0, 0, 1, 1])
    subsets = np.array(["photos", "photos", "gan", "diffusion"])
    report = metrics_report(scores, labels, subsets, calibrated_threshold=None, target_fpr=None,
                            model="m", encoder="e", pool_reals=True)
    gan, diffusion = report["subsets"]["gan"], report["subsets"]["diffusion"]
    assert gan["n_real"] == 2 and gan["acc"] == 1.0 and gan["ap"] == 1.0
    assert diffusion["acc"] == pytest.approx(2 / 3) and diffusion["best_acc"] == 1.0
    assert report["subsets"]["photos"]["ap"] is None
    assert report["mean_acc_calibrated"] is None and report["subsets"]["gan"]["acc_calibrated"] is None
    assert math.isclose(report["mean_acc"], (1.0 + 2 / 3) / 2)


def test_mismatched_lengths_fail():
    with pytest.raises(ValueError, match="equal-length"):
        metrics_report(np.zeros(3), np.zeros(2), np.array(["a"] * 3), calibrated_threshold=None,
                       target_fpr=None, model="m", encoder="e")


def test_band_low_calls_at_most_target_miss_of_the_fakes_real_and_never_rises_above_the_threshold():
    fakes = np.array([0.1, 0.2, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    low = band_low(fakes, 0.2, threshold=0.5)  # 2 of 10 may be called real: below the 3rd smallest (0.2, tied)
    assert np.mean(fakes <= low) <= 0.2 and low < 0.2 and low > 0.1
    assert band_low(fakes, 0.05, threshold=0.5) < 0.1  # floor(0.5) = 0: no fake called real
    assert band_low(fakes, 0.45, threshold=0.25) == 0.25  # the band never opens above the threshold
    assert [verdict(s, 0.2, 0.6) for s in (0.1, 0.2, 0.3, 0.6, 0.61)] == ["real", "real", "uncertain", "uncertain", "fake"]
    assert [verdict(s, 0.5, 0.5) for s in (0.5, 0.51)] == ["real", "fake"]  # no band: the threshold's rule
    with pytest.raises(ValueError, match="no fake scores"):
        band_low(np.array([]), 0.1, 0.5)
