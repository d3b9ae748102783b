"""Two detectors on the same images: is one worse than the other per family, beyond noise?

The promotion gate compares a challenger with the champion on the same val images. A retrain
flips a few images each way (measured on the demo: 1-4 % per family), so a point difference of a
few points on ~100 images per family is noise, and a fixed "no family may fall 2 points" rule
refused good fixes at random. Here each family's difference in accuracy at each model's deployed
(calibrated) threshold, ``challenger - champion``, gets a **paired bootstrap** interval: images of
the family are resampled with replacement and both models' correctness on the same draw compared,
so what is shared (hard images both miss) cancels and only the discordant images count.

Intervals are simultaneous over the families tested (Bonferroni): with ``k`` families the upper
bound of each is at level ``1 - alpha / k``, so a challenger equal to the champion on every
family is refused for a "fall" with probability at most ``alpha`` in all. ``benchmarks/gate_power.py``
measures how often the gate promotes challengers of a known true drop.

Each model's deployed threshold is itself an estimate: the quantile of its calibration reals' scores
at its target false-positive rate. When those reals are among the compared images (calibration and
the gate both on val), ``deployed_intervals`` refits each threshold on every resample, so the interval
also holds the threshold's own noise: two models fitted to the same 5 % target on a few hundred reals
land at, say, 4.3 % and 5.2 %, and that alone moves every family's real accuracy by about a point.
Measured on the demo's fixes: ``experiments/results/fix-shots-cpu2.md``.

Crops of one photo are resampled as independent images (the store keeps no photo id per row):
with few photos per split the intervals are narrower than a photo-level bootstrap's would be.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gendet import GendetError
from gendet.eval.metrics import as_fake_labels

ALPHA = 0.05  # the chance, over all families together, that an unchanged challenger is called worse
RESAMPLES = 2000


def correct(scores: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per image: did a detector deployed at ``threshold`` (fake when score > threshold) get it right?
    ``labels``: 1/"fake" fake, 0/"real" real (the metrics' rule, ``subset_metrics``)."""
    return (np.asarray(scores, dtype=np.float64) > threshold) == (as_fake_labels(labels) == 1)


def family_intervals(subsets: np.ndarray, challenger: np.ndarray, champion: np.ndarray, *,
                     alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{family: {"n", "challenger", "champion", "diff", "lo", "hi", "refit"}}: both models' accuracies on
    the family's images, their difference ``challenger - champion`` and its paired bootstrap interval
    ``[lo, hi]`` at simultaneous level ``1 - alpha`` over the families (each bound one-sided at
    ``alpha / k``), from each image's correctness (``challenger[i]``, ``champion[i]``) at thresholds
    taken as fixed. ``deployed_intervals`` with its models' scores also refits the thresholds."""
    right = np.ones(np.shape(subsets), dtype=np.int64)  # "fake" everywhere: score 1 (> 0.5) is a right answer
    return deployed_intervals(subsets, right, Deployed(np.asarray(challenger, dtype=np.float64), 0.5),
                              Deployed(np.asarray(champion, dtype=np.float64), 0.5), alpha=alpha, resamples=resamples,
                              seed=seed)


class Deployed(NamedTuple):
    """A model as the gate judges it: its scores on the compared images and its deployed threshold,
    and, when that threshold was fitted on some of those images, which (a boolean mask of the reals
    it was fitted on) and at what false-positive rate, so that every resample refits it."""

    scores: np.ndarray
    threshold: float
    refit: np.ndarray | None = None
    target_fpr: float | None = None

    def correct(self, rows: np.ndarray, fake: np.ndarray) -> np.ndarray:
        """Right or wrong on images ``rows`` ([resamples, n] indices, repeats allowed), the threshold of
        each resample refitted on the calibration reals drawn in it when ``refit`` is set."""
        scores, threshold = self.scores[rows], np.full((rows.shape[0], 1), self.threshold)
        if self.refit is not None:
            mine = self.refit[rows]
            drew = mine.any(axis=1)  # a resample without any calibration real keeps the deployed threshold
            cols = mine.any(axis=0)  # only the columns that can hold a calibration real: fewer to sort
            threshold[drew] = np.nanquantile(np.where(mine[drew][:, cols], scores[drew][:, cols], np.nan),
                                             1.0 - float(self.target_fpr), axis=1, method="higher",
                                             keepdims=True)  # calibrated_threshold, per resample
        return (scores > threshold) == fake[rows]


def deployed_intervals(subsets: np.ndarray, labels: np.ndarray, challenger: Deployed, champion: Deployed, *,
                       alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``family_intervals``' record for two deployed models: the bootstrap resamples every family's
    images at once (each family keeps its size) and refits each model's threshold on the resample
    where the model says how (``Deployed.refit``). ``diff`` is at the deployed thresholds; the interval
    is the bootstrap's around it (shifted by any gap between the deployed threshold and its refit on
    all the images, so a threshold fitted on other rows or in another precision does not bias it).
    Each family's record says whether a threshold was refitted (``refit``)."""
    subsets = np.asarray(subsets).astype(str)
    fake = as_fake_labels(labels) == 1
    models = [m._replace(scores=np.asarray(m.scores, dtype=np.float64)) for m in (challenger, champion)]
    for m in models:
        if m.scores.shape != subsets.shape or subsets.ndim != 1 or fake.shape != subsets.shape or (
                m.refit is not None and (np.shape(m.refit) != subsets.shape or m.target_fpr is None)):
            raise GendetError(f"paired comparison: scores {m.scores.shape}, labels {fake.shape} and refit rows must "
                              f"match the {subsets.shape} images (1-D), and a refit needs its target_fpr")
    if not 0 < alpha < 1 or resamples < 100:
        raise GendetError(f"paired comparison: alpha {alpha} must be in (0, 1) and resamples {resamples} >= 100")
    families, codes = np.unique(subsets, return_inverse=True)
    groups = [np.flatnonzero(codes == i) for i in range(len(families))]
    blocks = np.cumsum([0] + [g.size for g in groups])  # a resample's columns: family after family

    def per_family(rows: np.ndarray) -> np.ndarray:
        a, b = (m.correct(rows, fake) for m in models)
        diff = a.astype(np.int8) - b.astype(np.int8)
        return np.stack([diff[:, lo:hi].mean(axis=1) for lo, hi in zip(blocks[:-1], blocks[1:])], axis=1)

    everything = np.concatenate(groups)[None, :]
    a, b = (m._replace(refit=None).correct(everything, fake)[0] for m in models)  # at the deployed thresholds
    observed = np.array([(a[lo:hi].astype(np.int8) - b[lo:hi]).mean() for lo, hi in zip(blocks[:-1], blocks[1:])])
    shift = observed - per_family(everything)[0]
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, 128):  # bounded memory: 128 x n draws at a time
        count = min(resamples, start + 128) - start
        draws.append(per_family(np.concatenate([g[rng.integers(0, g.size, size=(count, g.size))] for g in groups], axis=1)))
    tail = alpha / max(1, len(families))
    lo, hi = np.quantile(np.concatenate(draws) + shift, [tail, 1 - tail], axis=0)
    refit = any(m.refit is not None for m in models)
    out = {}
    for i, family in enumerate(families):
        cols = slice(blocks[i], blocks[i + 1])
        same = observed[i] == 0 and not refit and (a[cols] == b[cols]).all()  # the same answer on every image
        out[str(family)] = {"n": int(groups[i].size), "challenger": float(a[cols].mean()), "champion": float(b[cols].mean()),
                            "diff": float(observed[i]), "lo": 0.0 if same else float(min(lo[i], observed[i])),
                            "hi": 0.0 if same else float(max(hi[i], observed[i])), "refit": refit}
    return out


def fallen(intervals: dict[str, dict[str, Any]], tolerance: float = 0.0) -> dict[str, dict[str, Any]]:
    """The families on which the challenger is worse than the champion by more than ``tolerance``
    with confidence: the whole interval lies below ``-tolerance``."""
    return {f: iv for f, iv in intervals.items() if iv["hi"] < -tolerance - 1e-12}


def in_points(interval: dict[str, Any] | None) -> str:
    """``-2.0 [-4.1, +0.4]``: the difference and its interval in points; "" when not paired."""
    if not interval:
        return ""
    return f"{interval['diff'] * 100:+.1f} [{interval['lo'] * 100:+.1f}, {interval['hi'] * 100:+.1f}]"


def describe(family: str, interval: dict[str, Any]) -> str:
    """``family: -0.050 [-0.081, -0.021] on 560 images`` (challenger - champion, the interval)."""
    return (f"{family}: {interval['diff']:+.3f} [{interval['lo']:+.3f}, {interval['hi']:+.3f}] "
            f"on {interval['n']} images")
