"""Scoring GAMMA on token rows (gendet/method/gamma_eval.py): metrics.json with pixel F1/IoU on
the token canvas, the table, the overlay figure, the variant check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gendet import GendetError
from gendet.features.tokens import load_token_rows
from gendet.method.gamma.config import GammaConfig
from gendet.method.gamma.eval import (
    CANVAS_CELL,
    check_token_variant,
    gamma_report,
    overlay_figure,
    report_table,
    true_masks,
)
from gendet.method.gamma.trainer import fit_gamma, trained_detector
from helpers.token_store import write_token_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    root = str(tmp_path_factory.mktemp("tokens"))
    write_token_store(root, grid=(8, 8), dim=6, per_split={"train": 48, "val": 16, "test": 16})
    train = load_token_rows(root, splits=["train"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~1 s alone; threads fighting over a busy box's cores take 40
    try:
        trainer, sources = fit_gamma(train, GammaConfig(width=32, layers=1, heads=4, epochs=20, batch_size=16, lr=1e-2))
    finally:
        torch.set_num_threads(threads)
    det = trained_detector(trainer, sources, **train.detector_fields())
    val = load_token_rows(root, splits=["val"])
    det.calibrate(val.tokens, val.labels, 0.1, split="val")
    return det, load_token_rows(root, splits=["test"]), train.variant


def test_true_masks_are_token_blocks():
    m = true_masks(np.array([[0.0, 0.6, 0.4, 1.0]]), (2, 2))
    assert m.shape == (1, 2 * CANVAS_CELL, 2 * CANVAS_CELL)
    assert not m[0, :CANVAS_CELL, :CANVAS_CELL].any() and m[0, :CANVAS_CELL, CANVAS_CELL:].all()
    assert not m[0, CANVAS_CELL:, :CANVAS_CELL].any() and m[0, CANVAS_CELL:, CANVAS_CELL:].all()


def test_report_has_image_and_pixel_metrics_of_a_model_that_learned(trained):
    det, rows, _ = trained
    report, loc = gamma_report(det, rows, model="m")
    assert set(report["subsets"]) == {"sd", "inpaint-inpaint_f8"} and report["target_fpr"] == 0.1
    assert report["mean_acc"] > 0.8  # the synthetic shifts are learnable
    masked = report["subsets"]["inpaint-inpaint_f8"]
    assert masked["n_masked"] == 8 and masked["pixel_f1"] > 0.6 and 0 < masked["pixel_iou"] <= masked["pixel_f1"]
    assert masked["real_false_pixel_rate"] < 0.2
    assert "pixel_f1" not in report["subsets"]["sd"]  # no masks stored there
    assert report["mean_pixel_f1"] == masked["pixel_f1"] and report["pixel"]["families"]["inpaint_f8"]["n"] == 8
    assert report["pixel"]["canvas"] == [8 * CANVAS_CELL, 8 * CANVAS_CELL]
    text = report_table(report)
    assert "mean_pixel_f1" in text and "mean_pixel_iou" in text and text.count("inpaint-inpaint_f8") == 3
    fig = overlay_figure(det, rows, loc["token_probs"], limit=3)
    assert len(fig.axes) == 9


def test_a_variant_of_another_grid_is_refused(trained):
    det, _, variant = trained
    check_token_variant(det, variant)
    with pytest.raises(GendetError, match="--token-grid 8x8"):
        check_token_variant(det, dataclasses.replace(variant, token_grid=(4, 4)))


def test_a_model_of_0_5_spectrum_tokens_scores_a_store_of_todays(tmp_path):
    """`evaluate` and the promotion gate score a GAMMA model trained on 0.5's 96-wide spectrum tokens
    on a store of today's 288: it reads their first 96 columns, the same numbers 0.5 stored."""
    import torch

    from gendet.encoders.tokens import PATCH_DIM, TOKEN_DIM
    from gendet.method.gamma.detector import GammaDetector
    from gendet.method.gamma.networks import GammaNet

    write_token_store(str(tmp_path), grid=(4, 4), dim=TOKEN_DIM, per_split={"test": 8}, encoder="spectrum:v2")
    rows = load_token_rows(str(tmp_path), splits=["test"])
    torch.manual_seed(0)

    def model(width: int) -> GammaDetector:
        net = GammaNet(width, (4, 4), 3, GammaConfig(width=16, layers=1, heads=2)).eval()
        return GammaDetector(net=net, sources=("camera", "inpaint_f8", "sd"), **rows.detector_fields())

    old = model(PATCH_DIM)
    check_token_variant(old, rows.variant)
    _, loc = gamma_report(old, rows)
    np.testing.assert_allclose(loc["score"], old.localize(rows.tokens[..., :PATCH_DIM])["score"], rtol=1e-6)
    with pytest.raises(GendetError, match="tokens of 288"):
        check_token_variant(model(PATCH_DIM + 1), rows.variant)  # any other width is refused
