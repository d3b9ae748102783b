"""Pixel F1 and IoU of predicted masks (gendet/eval/pixel.py)."""

import json

import numpy as np
import pytest

from gendet.eval.pixel import image_pixel_scores, pixel_metrics


def _square(top, left, side, size=10):
    m = np.zeros((size, size), np.uint8)
    m[top:top + side, left:left + side] = 1
    return m


def test_image_scores_by_hand():
    true = _square(0, 0, 4)  # 16 px
    pred = _square(0, 0, 4)
    pred[0, :4] = 0  # 12 true positives, 4 false negatives
    pred[5, 5] = 1  # 1 false positive
    scores = image_pixel_scores(pred, true)
    assert scores["iou"] == pytest.approx(12 / 17)
    assert scores["f1"] == pytest.approx(24 / 29)
    assert image_pixel_scores(true, true) == {"f1": 1.0, "iou": 1.0}
    assert image_pixel_scores(np.zeros((10, 10)), np.zeros((10, 10))) == {"f1": 1.0, "iou": 1.0}
    assert image_pixel_scores(_square(1, 1, 2), np.zeros((10, 10))) == {"f1": 0.0, "iou": 0.0}
    with pytest.raises(ValueError, match="shapes differ"):
        image_pixel_scores(np.zeros((4, 4)), np.zeros((4, 5)))


def test_means_per_family_skip_reals_and_report_their_false_alarms():
    trues = [_square(0, 0, 4), _square(2, 2, 4), np.zeros((10, 10)), _square(0, 0, 10)]
    preds = [_square(0, 0, 4), np.zeros((10, 10)), _square(0, 0, 5), _square(0, 0, 10)]
    out = pixel_metrics(preds, trues, ["inpaint", "inpaint", "inpaint", "gan"])
    inpaint = out["families"]["inpaint"]
    assert inpaint["n"] == 2 and inpaint["n_real"] == 1
    assert inpaint["iou"] == pytest.approx(0.5) and inpaint["f1"] == pytest.approx(0.5)
    assert inpaint["real_false_pixel_rate"] == pytest.approx(0.25)
    assert out["families"]["gan"]["iou"] == 1.0 and out["families"]["gan"]["real_false_pixel_rate"] is None
    assert out["mean_iou"] == pytest.approx(0.75)
    assert len(out["images"]) == 4 and out["images"][2]["true_fraction"] == 0.0
    json.dumps(out, allow_nan=False)
    with pytest.raises(ValueError, match="2 predictions"):
        pixel_metrics(preds[:2], trues, ["a"] * 4)
