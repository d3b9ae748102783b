"""The gate's paired evidence: intervals of challenger - champion per family, with each model's
threshold refitted on every resample when it was fitted on the compared images."""

import warnings

import numpy as np
import pytest

from gendet import GendetError
from gendet.eval.metrics import calibrated_threshold
from gendet.eval.paired import Deployed, correct, deployed_intervals, fallen, family_intervals


def test_paired_intervals_count_only_discordant_images():
    assert correct(np.array([0.9, 0.2, 0.6]), np.array(["fake", "fake", "real"]), 0.5).tolist() == [True, False, False]
    subsets = np.array(["a"] * 400 + ["b"] * 400)
    champion = np.ones(800, dtype=bool)
    challenger = champion.copy()
    challenger[:40] = False  # family a: 10 % of its images lost; b unchanged
    iv = family_intervals(subsets, challenger, champion, resamples=2000, seed=0)
    assert iv["a"]["diff"] == pytest.approx(-0.1) and iv["a"]["hi"] < -0.05 and iv["b"] == {
        "n": 400, "challenger": 1.0, "champion": 1.0, "diff": 0.0, "lo": 0.0, "hi": 0.0, "refit": False}
    assert set(fallen(iv)) == {"a"} and fallen(iv, tolerance=0.2) == {}
    with pytest.raises(GendetError, match="must match"):
        family_intervals(subsets[:3], challenger, champion)


def _world(seed: int, n: int = 400, families: int = 5):
    """Scores of two retrains of one detector (shared image difficulty, a little noise each) on
    ``families`` families of ``n`` images, half reals; each threshold at 5 % FPR on its own reals."""
    rng = np.random.default_rng(seed)
    subsets = np.repeat([f"f{i}" for i in range(families)], n)
    fake = np.tile(np.arange(n) >= n // 2, families)
    shared = rng.normal(size=subsets.size) + 3.5 * fake
    return subsets, fake, shared + 0.1 * rng.normal(size=subsets.size), shared + 0.1 * rng.normal(size=subsets.size)


def _deployed(scores, fit):
    return Deployed(scores, calibrated_threshold(scores[fit], 0.05), fit, 0.05)


def test_refitting_thresholds_holds_their_noise_and_cancels_between_identical_models():
    subsets, fake, chal, champ = _world(0)
    champ_fit = (subsets == "f0") & ~fake                          # the champion: the training family's reals
    chal_fit = np.isin(subsets, ["f0", "f4"]) & ~fake             # the challenger: those and a new family's
    a, b = _deployed(chal, chal_fit), _deployed(champ, champ_fit)
    refit = deployed_intervals(subsets, fake, a, b, resamples=1000, seed=1)
    fixed = deployed_intervals(subsets, fake, a._replace(refit=None), b._replace(refit=None), resamples=1000, seed=1)
    # the same point difference (the deployed thresholds), a wider interval on a family neither fitted on
    assert all(refit[f]["diff"] == fixed[f]["diff"] for f in refit) and refit["f2"]["refit"] and not fixed["f2"]["refit"]
    assert refit["f2"]["hi"] - refit["f2"]["lo"] > 1.2 * (fixed["f2"]["hi"] - fixed["f2"]["lo"])
    # one model against itself: every resample refits both thresholds alike, so nothing differs
    same = deployed_intervals(subsets, fake, b, b, resamples=300, seed=1)
    assert all(v["lo"] == v["hi"] == v["diff"] == 0.0 for v in same.values())
    # a resample that draws none of a model's calibration reals keeps its deployed threshold, quietly
    one = np.zeros(subsets.size, dtype=bool)
    one[np.flatnonzero(~fake)[0]] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lonely = deployed_intervals(subsets, fake, a._replace(refit=one), b, resamples=200, seed=2)
    assert lonely["f0"]["lo"] <= lonely["f0"]["diff"] <= lonely["f0"]["hi"]
    with pytest.raises(GendetError, match="target_fpr"):
        deployed_intervals(subsets, fake, a._replace(target_fpr=None), b)


def test_refitted_intervals_promote_unchanged_retrains_and_refuse_a_real_fall():
    """Retrains of an unchanged detector whose thresholds come from different pools of reals are
    promoted (at most alpha of them refused); a 10-point fall of one family's fakes is refused."""
    refused = 0
    for seed in range(6):
        subsets, fake, chal, champ = _world(seed)
        a = _deployed(chal, np.isin(subsets, ["f0", "f4"]) & ~fake)
        b = _deployed(champ, (subsets == "f0") & ~fake)
        refused += bool(fallen(deployed_intervals(subsets, fake, a, b, resamples=300, seed=seed)))
        lost = (subsets == "f2") & fake & (np.random.default_rng(seed).random(subsets.size) < 0.2)
        worse = a._replace(scores=np.where(lost, a.scores - 10, a.scores))
        assert "f2" in fallen(deployed_intervals(subsets, fake, worse, b, resamples=300, seed=seed))
    assert refused <= 1, refused  # alpha 0.05: one in six is already unlikely
