"""Scoring a GAMMA model on token rows: the CONTRACTS.md ``metrics.json`` dict (image level, per
subset, as every method has it) plus pixel F1 and IoU of its masks (issue 13), and the overlay figure.

Pixel metrics are taken on the **token canvas**: a [rows x ``CANVAS_CELL``, cols x ``CANVAS_CELL``]
picture of the token grid (the store keeps each image's mask only through its tokens, not at its
own pixel size). The true mask of a row is ``token_mask >= 0.5``, each token a block of the canvas
(nearest upsampling); the predicted one is ``GammaDetector.masks`` of head 1's token probabilities
at the same canvas (bilinear, then the model's ``mask_threshold``). They are scored
(``gendet.eval.pixel``) on the rows that have a mask (``has_mask``: partial fakes, and reals that
came with an all-zero mask); each subset with such rows gets ``pixel_f1``, ``pixel_iou`` (means
over its images with something to find), ``n_masked`` and ``real_false_pixel_rate``; the report's
``pixel`` holds the same per family (the ``family`` column, else the subset) and ``mean_pixel_f1``
/ ``mean_pixel_iou`` average the subsets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gendet.eval.metrics import json_safe, metrics_report, nanmean
from gendet.eval.pixel import pixel_metrics
from gendet.eval.tables import table
from gendet.method.gamma.detector import GammaDetector

CANVAS_CELL = 16
"""Pixels per token side on the canvas pixel metrics are taken on."""
PIXEL_KEYS = ("pixel_f1", "pixel_iou")


def token_canvas(grid: tuple[int, int]) -> tuple[int, int]:
    return grid[0] * CANVAS_CELL, grid[1] * CANVAS_CELL


def true_masks(token_mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """bool [N, H, W] on the token canvas: ``token_mask >= 0.5`` per token, as blocks."""
    blocks = np.asarray(token_mask).reshape(-1, *grid) >= 0.5
    return blocks.repeat(CANVAS_CELL, axis=1).repeat(CANVAS_CELL, axis=2)


def pixel_families(rows) -> np.ndarray:
    return np.where(rows.family != "", rows.family, rows.subset).astype(object)


def gamma_report(det: GammaDetector, rows, *, model: str = "gamma", batch_size: int = 512) -> tuple[dict[str, Any], dict]:
    """(metrics.json dict with the pixel metrics of the module docstring, ``det.localize`` of the rows)."""
    from gendet.encoders.tokens import model_tokens

    loc = det.localize(model_tokens(rows.tokens, det.encoder, det.token_dim), batch_size=batch_size)
    report = metrics_report(loc["score"], rows.labels, rows.subset, threshold=0.5,
                            calibrated_threshold=det.threshold if det.target_fpr else None, target_fpr=det.target_fpr,
                            model=model, encoder=det.encoder)
    masked = np.flatnonzero(rows.has_mask)
    if "token_probs" not in loc or not masked.size:
        return report, loc
    canvas = token_canvas(det.grid)
    pred = det.masks(loc["token_probs"][masked], canvas)
    true = true_masks(rows.token_mask[masked], det.grid)
    subsets, families = rows.subset[masked], pixel_families(rows)[masked]
    for subset in sorted(set(subsets)):
        picked = subsets == subset
        scores = pixel_metrics(pred[picked], true[picked], [subset] * int(picked.sum()))["families"][subset]
        report["subsets"][subset].update({"pixel_f1": scores["f1"], "pixel_iou": scores["iou"], "n_masked": scores["n"],
                                          "real_false_pixel_rate": scores["real_false_pixel_rate"]})
    by_family = pixel_metrics(pred, true, families)
    report["pixel"] = {"canvas": list(canvas), "families": by_family["families"], "mean_f1": by_family["mean_f1"],
                       "mean_iou": by_family["mean_iou"]}
    for key in PIXEL_KEYS:
        report["mean_" + key] = nanmean([s.get(key) for s in report["subsets"].values()])
    return json_safe(report), loc


def masked_subsets(report: dict[str, Any]) -> list[str]:
    return sorted(s for s, m in report["subsets"].items() if m.get("pixel_f1") is not None or m.get("n_masked"))


def report_table(report: dict[str, Any], name: str = "gamma") -> str:
    """The per-subset accuracy table, then pixel F1 and IoU over the subsets that have masks."""
    text = table({name: report})
    masked = masked_subsets(report)
    for key in PIXEL_KEYS if masked else ():
        text += "\n\n" + table({name: report}, metric=key, mean_key="mean_" + key, subsets=masked)
    return text


def overlay_figure(det: GammaDetector, rows, token_probs: np.ndarray, *, limit: int = 4):
    """True against predicted masks of up to ``limit`` partial fakes (a mask neither empty nor
    whole), on the token canvas; the picture under them is each token's feature norm. None when
    there is no such row."""
    from gendet.eval.overlays import overlay_grid

    share = (rows.token_mask >= 0.5).mean(1)
    picked = np.flatnonzero(rows.has_mask & (share > 0) & (share < 1))[:limit]
    if not picked.size:
        return None
    norms = np.linalg.norm(rows.tokens[picked], axis=2)
    lo, hi = norms.min(1, keepdims=True), norms.max(1, keepdims=True)
    grey = ((norms - lo) / np.maximum(hi - lo, 1e-6)).reshape(-1, *det.grid)
    grey = grey.repeat(CANVAS_CELL, axis=1).repeat(CANVAS_CELL, axis=2)
    images = [np.repeat(g[..., None], 3, axis=2) for g in grey]
    pred = det.masks(token_probs[picked], token_canvas(det.grid))
    true = true_masks(rows.token_mask[picked], det.grid)
    titles = [str(rows.key[i])[-28:] for i in picked]
    return overlay_grid(images, list(true), list(pred), titles)


def check_token_variant(det: GammaDetector, variant) -> None:
    """The model must read this token variant: same grid and token width, same preprocessing,
    weights digest and precision where both recorded them (``check_variant``)."""
    from gendet import GendetError
    from gendet.encoders.tokens import reads_tokens
    from gendet.features.store import check_variant

    if tuple(variant.token_grid) != det.grid or not reads_tokens(variant.encoder, variant.token_dim, det.token_dim) or (
            det.preprocess_hash and det.preprocess_hash != variant.preprocess_hash):
        raise GendetError(f"{variant.url}: {variant.token_grid[0]}x{variant.token_grid[1]} tokens of {variant.token_dim} from "
                          f"{variant.encoder}; the GAMMA model reads {det.grid[0]}x{det.grid[1]} tokens of {det.token_dim} "
                          f"from {det.encoder}: extract with `gendet extract --tokens --encoder {det.encoder} --token-grid "
                          f"{det.grid[0]}x{det.grid[1]}`")
    check_variant(variant, det)
