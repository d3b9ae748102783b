"""Pixel-level metrics of predicted fake-region masks: F1 and IoU per image, and their means per
family (issue 13). Image-level metrics stay in ``gendet.eval.metrics``.

Conventions:
* Masks are [H, W] of {0, 1} or bool, 1 = manipulated; prediction and truth of one image have one
  shape (upsample predictions first: ``gendet.method.gamma.pixel_masks``).
* Per image, with the pixels as samples: F1 = 2 TP / (2 TP + FP + FN) and IoU (Jaccard) =
  TP / (TP + FP + FN) (scikit-learn's ``f1_score`` and ``jaccard_score``). An image whose truth and
  prediction are both empty scores 1 (nothing to find, nothing claimed); truth empty and a
  non-empty prediction scores 0.
* Means per family are over the images that have something to find (truth not empty: partial and
  whole-image fakes), as localisation benchmarks report them; reals enter as their false-alarm
  rate (``real_false_pixel_rate``: the share of their pixels predicted manipulated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, jaccard_score

from gendet.eval.metrics import json_safe, nanmean


def image_pixel_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """{"f1", "iou"} of one image's predicted mask against its true one (module conventions)."""
    pred, true = np.asarray(pred).astype(bool).ravel(), np.asarray(true).astype(bool).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: predicted {np.asarray(pred).shape}, true {np.asarray(true).shape}")
    return {"f1": float(f1_score(true, pred, zero_division=1.0)),
            "iou": float(jaccard_score(true, pred, zero_division=1.0))}


def pixel_metrics(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], families: Sequence[str]) -> dict[str, Any]:
    """Per image and per family pixel scores: ``{"images": [{"family", "f1", "iou", "true_fraction",
    "pred_fraction"}], "families": {name: {"n", "f1", "iou", "n_real", "real_false_pixel_rate"}},
    "mean_f1", "mean_iou"}`` (means over families; strict-JSON ready)."""
    if not len(preds) == len(trues) == len(families):
        raise ValueError(f"pixel_metrics: {len(preds)} predictions, {len(trues)} true masks, {len(families)} families")
    images, per_family = [], {}
    for pred, true, family in zip(preds, trues, families):
        true_fraction = float(np.asarray(true).astype(bool).mean())
        pred_fraction = float(np.asarray(pred).astype(bool).mean())
        row = {"family": str(family), **image_pixel_scores(pred, true), "true_fraction": true_fraction,
               "pred_fraction": pred_fraction}
        images.append(row)
        per_family.setdefault(str(family), []).append(row)
    families_out = {}
    for name, rows in sorted(per_family.items()):
        fakes = [r for r in rows if r["true_fraction"] > 0]
        reals = [r for r in rows if r["true_fraction"] == 0]
        families_out[name] = {"n": len(fakes), "f1": nanmean([r["f1"] for r in fakes]),
                              "iou": nanmean([r["iou"] for r in fakes]), "n_real": len(reals),
                              "real_false_pixel_rate": nanmean([r["pred_fraction"] for r in reals])}
    return json_safe({"images": images, "families": families_out,
                      "mean_f1": nanmean([f["f1"] for f in families_out.values()]),
                      "mean_iou": nanmean([f["iou"] for f in families_out.values()])})
