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

Crops of one photo are resampled as independent images (the store keeps no photo id per row):
with few photos per split the intervals are narrower than a photo-level bootstrap's would be.
"""

from __future__ import annotations

from typing import Any

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
    """{family: {"n", "challenger", "champion", "diff", "lo", "hi"}}: both models' accuracies on the
    family's images, their difference ``challenger - champion`` and its paired bootstrap interval
    ``[lo, hi]`` at simultaneous level ``1 - alpha`` over the families (each bound one-sided at
    ``alpha / k``). ``challenger[i]`` and ``champion[i]`` are the two models' correctness on image ``i``."""
    subsets = np.asarray(subsets).astype(str)
    a, b = np.asarray(challenger, dtype=bool), np.asarray(champion, dtype=bool)
    if not (a.shape == b.shape == subsets.shape) or a.ndim != 1:
        raise GendetError(f"paired comparison: per-image arrays must be equal-length 1-D; got {subsets.shape}, "
                          f"{a.shape}, {b.shape}")
    if not 0 < alpha < 1 or resamples < 100:
        raise GendetError(f"paired comparison: alpha {alpha} must be in (0, 1) and resamples {resamples} >= 100")
    families = sorted(set(subsets.tolist()))
    tail = alpha / max(1, len(families))
    rng = np.random.default_rng(seed)
    out = {}
    for family in families:
        rows = np.flatnonzero(subsets == family)
        diff = a[rows].astype(np.int8) - b[rows].astype(np.int8)  # +1 only the challenger right, -1 only the champion
        n = int(rows.size)
        if diff.any():
            means = np.empty(resamples)
            for start in range(0, resamples, 256):  # bounded memory: 256 x n draws at a time
                stop = min(resamples, start + 256)
                means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
            lo, hi = (float(q) for q in np.quantile(means, [tail, 1 - tail]))
        else:  # the same answer on every image: no evidence of any difference
            lo = hi = 0.0
        out[family] = {"n": n, "challenger": float(a[rows].mean()), "champion": float(b[rows].mean()),
                       "diff": float(diff.mean()), "lo": lo, "hi": hi}
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
