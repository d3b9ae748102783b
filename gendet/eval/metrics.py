"""Per-subset detection metrics and the ``metrics.json`` dict of CONTRACTS.md.

Conventions
-----------
* Scores are P(fake); an image is called fake when ``score > threshold`` (at every threshold).
* Subsets: CONTRACTS.md gives a real image the subset of the generator it is paired with, so each
  subset normally holds its own reals and fakes. A subset may lack one side (a generator shipped
  without paired reals, a store of reals only). By default its metrics that need both sides
  (``acc``, ``ap``, ``best_acc``, ``acc_calibrated``) are NaN, as is ``real_acc*`` with no reals or
  ``fake_acc*`` with no fakes; NaN is written as JSON ``null`` and skipped by the means. With
  ``pool_reals=True`` a subset without reals is instead scored against the pool of every real
  image in the data (its ``n_real`` then counts the pool), the usual choice when one real set is
  shared by all generators.
* ``acc`` is plain accuracy over the subset's images at 0.5 (GenImage); ``best_acc`` is the best
  accuracy over all thresholds for that subset (UniversalFakeDetect's oracle figure).
* Calibrated threshold: the ``1 - target_fpr`` quantile of held-out real scores, taking the
  next real score up (``numpy.quantile(..., method="higher")``), so that with ``score > t`` at most
  ``target_fpr`` of those reals are called fake. On new reals the rate drifts; the ``*_calibrated``
  figures show it.
* Uncertain band (``band_low``): the lower edge ``low`` below the threshold ``high``. An image is
  ``real`` at ``score <= low``, ``fake`` at ``score > high``, ``uncertain`` between; ``low`` is just
  under the ``floor(target_miss * n)``-th smallest held-out fake score (0-based), so at most
  ``target_miss`` of those fakes are called real, and never above ``high`` (a model that separates
  its calibration rows that well has no band: every verdict is ``fake`` or ``real``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gendet.io import redact

NAN = float("nan")


def calibrated_threshold(real_scores: np.ndarray, target_fpr: float) -> float:
    """Threshold t with mean(real_scores > t) <= target_fpr (the rule above)."""
    real_scores = np.asarray(real_scores, dtype=np.float64)
    if real_scores.size == 0:
        raise ValueError("calibrated_threshold: no real scores to calibrate on")
    return float(np.quantile(real_scores, 1.0 - target_fpr, method="higher"))


def band_low(fake_scores: np.ndarray, target_miss: float, threshold: float) -> float:
    """The band's lower edge (the rule above): mean(fake_scores <= low) <= target_miss, low <= threshold."""
    fake_scores = np.sort(np.asarray(fake_scores, dtype=np.float64))
    if fake_scores.size == 0:
        raise ValueError("band_low: no fake scores to calibrate on")
    k = int(math.floor(target_miss * fake_scores.size + 1e-9))
    low = float(np.nextafter(fake_scores[k], -np.inf)) if k < fake_scores.size else float(fake_scores[-1])
    return min(low, float(threshold))  # may sit a hair below 0: then no score is called real


def verdict(score: float, low: float, high: float) -> str:
    """``fake`` above ``high``, ``real`` at or below ``low``, ``uncertain`` between (the band above)."""
    return "fake" if score > high else "real" if score <= low else "uncertain"


def as_fake_labels(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """0/1 labels (1 = fake) from ints/bools or ``"real"``/``"fake"`` strings."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "UO":
        bad = set(np.unique(arr)) - {"real", "fake"}
        if bad:
            raise ValueError(f"labels: unexpected values {sorted(map(str, bad))}; use real/fake or 0/1")
        return (arr == "fake").astype(np.int64)
    return arr.astype(np.int64)


def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy at the best threshold (both classes must be present)."""
    from sklearn.metrics import roc_curve  # sklearn loads when a number is computed, not with every verb's --help

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    n_fake = int(labels.sum())
    n_real = labels.size - n_fake
    return float(np.max((tpr * n_fake + (1.0 - fpr) * n_real) / labels.size))


def _rate(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else NAN


def subset_metrics(scores: np.ndarray, labels: np.ndarray, *, threshold: float, calibrated_threshold: float) -> dict[str, Any]:
    """The CONTRACTS.md metrics of one subset; NaN where a side is missing (module docstring)."""
    from sklearn.metrics import accuracy_score, average_precision_score

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    real, fake = scores[labels == 0], scores[labels == 1]
    both = real.size > 0 and fake.size > 0
    out: dict[str, Any] = {"n_real": int(real.size), "n_fake": int(fake.size)}
    for suffix, t in (("", threshold), ("_calibrated", calibrated_threshold)):
        t = NAN if t is None else t
        out["acc" + suffix] = accuracy_score(labels, scores > t) if both and not math.isnan(t) else NAN
        out["real_acc" + suffix] = _rate(real <= t) if not math.isnan(t) else NAN
        out["fake_acc" + suffix] = _rate(fake > t) if not math.isnan(t) else NAN
    out["ap"] = float(average_precision_score(labels, scores)) if both else NAN
    out["best_acc"] = best_accuracy(scores, labels) if both else NAN
    for name, fpr in (("tpr_at_1fpr", 0.01), ("tpr_at_5fpr", 0.05)):
        out[name] = tpr_at_fpr(scores, labels, fpr) if both else NAN
    return out


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr_max: float) -> float:
    """The share of fakes caught at the best threshold whose false-positive rate on these reals
    is at most ``fpr_max`` (the operating point trust-and-safety teams set)."""
    from sklearn.metrics import roc_curve  # sklearn loads when a number is computed, not with every verb's --help

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    ok = fpr <= fpr_max + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def nanmean(values: list[float | None]) -> float:
    """Mean of the values that are neither None (JSON null) nor NaN; NaN when none is left."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else NAN


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python and URLs' credentials -> ``***@``, recursively:
    strict JSON, fit to be written down."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def metrics_report(scores: np.ndarray, labels: Sequence[Any] | np.ndarray, subsets: Sequence[str] | np.ndarray, *,
                   threshold: float = 0.5, calibrated_threshold: float | None, target_fpr: float | None,
                   model: str, encoder: str, pool_reals: bool = False) -> dict[str, Any]:
    """The whole ``metrics.json`` dict (CONTRACTS.md), strict-JSON ready (NaN -> null)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels, subsets = as_fake_labels(labels), np.asarray(subsets).astype(str)
    if not (scores.shape == labels.shape == subsets.shape) or scores.ndim != 1:
        raise ValueError(f"metrics_report: scores, labels and subsets must be equal-length 1-D; got "
                         f"{scores.shape}, {labels.shape}, {subsets.shape}")
    pool = labels == 0
    per_subset = {}
    for name in sorted(set(subsets.tolist())):
        rows = subsets == name
        if pool_reals and not (rows & pool).any():
            rows = rows | pool
        per_subset[name] = subset_metrics(scores[rows], labels[rows], threshold=threshold,
                                          calibrated_threshold=calibrated_threshold)
    report = {"model": model, "encoder": encoder, "threshold": threshold,
              "calibrated_threshold": calibrated_threshold, "target_fpr": target_fpr, "subsets": per_subset,
              "mean_acc": nanmean([m["acc"] for m in per_subset.values()]),
              "mAP": nanmean([m["ap"] for m in per_subset.values()]),
              "mean_acc_calibrated": nanmean([m["acc_calibrated"] for m in per_subset.values()])}
    return json_safe(report)
