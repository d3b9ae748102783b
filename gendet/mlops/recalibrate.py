"""``gendet calibrate``'s library side: move a detector's operating point to a team's own data,
without retraining.

A team whose reals come from another camera mix or another compression sees more of them called
fake at the shipped threshold. ``recalibrate`` refits, on the team's labelled rows of one split,
what training fitted on its own held-out rows (``gendet.method.gendet.detector.calibrate``): Platt
scaling when the rows hold both classes (reals alone keep the model's scaling), then the threshold
at ``target_fpr`` on the reals and the band's lower edge at ``target_miss`` on the fakes. The heads
are untouched. ``measure`` gives the rates a model has on rows (its real FPR and fake miss rate at
its threshold) so a run reports them before and after on rows the fit never read.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from gendet import GendetError
from gendet.eval.metrics import as_fake_labels
from gendet.features.sources import ParquetSource
from gendet.features.store import Variant
from gendet.method.gendet.detector import Detector, calibrate


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Row counts, the share of reals above ``threshold`` (called fake) and of fakes at or below it."""
    fake = as_fake_labels(labels) == 1
    real_scores, fake_scores = scores[~fake], scores[fake]
    return {"real": int(len(real_scores)), "fake": int(len(fake_scores)),
            "real_fpr": float(np.mean(real_scores > threshold)) if len(real_scores) else None,
            "fake_miss": float(np.mean(fake_scores <= threshold)) if len(fake_scores) else None}


def measure(detector: Detector, variant: Variant, subsets: Sequence[str], split: str) -> dict[str, Any] | None:
    """``rates`` of ``detector`` at its threshold on ``split``'s rows of ``subsets``; None without rows."""
    source = ParquetSource(variant.url, subsets=tuple(subsets), splits=(split,), encoder=variant.encoder,
                           preprocess_hash=variant.preprocess_hash)
    parts = [(detector.score(x), np.asarray(y)) for x, y in source.batches("all", 0)]
    if not parts:
        return None
    return rates(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), detector.threshold)


def recalibrate(detector: Detector, variant: Variant, subsets: Sequence[str], split: str, *, target_fpr: float,
                target_miss: float, parent: str) -> Detector:
    """A copy of ``detector`` calibrated on ``split``'s rows of ``subsets`` (module docstring), which
    records those rows and its ``parent`` (``extra["recalibrated_from"]``)."""
    from gendet.method.gendet.trainer import calibration_record

    source = ParquetSource(variant.url, subsets=tuple(subsets), splits=(split,), encoder=variant.encoder,
                           preprocess_hash=variant.preprocess_hash)
    record_subsets, rows = calibration_record(source)
    if not rows or not rows.get("real"):
        raise GendetError(f"{variant.url}: no real rows of {','.join(subsets)} in split {split}; the threshold is fitted "
                          "on reals: pass --subsets and --split that hold your own real images")
    out = copy.deepcopy(detector)
    calibrate(out, source, target_fpr, platt=bool(rows.get("fake")), target_miss=target_miss)
    if not rows.get("fake"):  # reals only: the band cannot be fitted here; keep the parent's, under the new threshold
        out.band_low = None if detector.band_low is None else min(detector.band_low, out.threshold)
    out.calibration_split, out.calibration_subsets, out.calibration_rows = split, record_subsets, rows
    out.extra = {**detector.extra, "recalibrated_from": parent}
    return out
