"""An image's score does not depend on the batch it is scored in (gendet.serve.scorer): flat,
single-colour and tiny images are common uploads, and a detector's answer for one must not move
with its neighbours."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from gendet.encoders.registry import load_encoder
from gendet.method.gendet.detector import Detector, build_method_nets
from gendet.method.gendet.networks import Arch
from gendet.serve.scorer import ImageScorer


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _degenerate() -> list[bytes]:
    rng = np.random.default_rng(1)
    ramp = np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (90, 1, 3))
    return [_png(Image.new("RGB", (64, 64))), _png(Image.new("RGB", (300, 200), (200, 30, 90))),
            _png(Image.new("RGB", (8, 8), (255, 255, 255))), _png(Image.fromarray(ramp)),
            _png(Image.new("L", (40, 70), 128)), _png(Image.new("RGB", (512, 16), (0, 0, 255)), "JPEG"),
            _png(Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)))]


def _photos() -> list[bytes]:
    rng = np.random.default_rng(0)
    return [_png(Image.fromarray(rng.integers(0, 256, (96 + 8 * i, 80, 3), dtype=np.uint8))) for i in range(5)]


@pytest.mark.parametrize("name", ["spectrum:v1", "spectrum:v2"])
def test_an_images_score_is_the_same_alone_and_in_any_batch(name):
    torch.manual_seed(0)
    encoder = load_encoder(name)
    arch = Arch(feature_dim=encoder.dim, layers=1, heads=2)
    det = Detector(method="gendet", arch=arch, nets=build_method_nets("gendet", arch), encoder=encoder.name,
                   preprocess_hash=encoder.preprocess_hash)
    scorer = ImageScorer(det, encoder)
    odd, photos = _degenerate(), _photos()
    alone = [scorer.score_bytes([item])[0]["score"] for item in odd]
    mixed = scorer.score_bytes([*photos[:2], *odd, *photos[2:]])[2:2 + len(odd)]
    reversed_ = scorer.score_bytes([*reversed(odd), *photos])[:len(odd)][::-1]
    for single, a, b in zip(alone, mixed, reversed_):
        assert single == pytest.approx(a["score"], abs=1e-5) and single == pytest.approx(b["score"], abs=1e-5)


def test_a_non_finite_score_is_an_error_row_and_predict_writes_strict_json(tiny_detector_dir, tmp_path, capsys):
    import json

    from pipelines import predict

    scorer = ImageScorer.from_detector(__import__("gendet.method.gendet.detector", fromlist=["Detector"]).Detector.load(
        tiny_detector_dir))
    nan = scorer.result(float("nan"))
    assert nan["verdict"] == "error" and nan["probability"] is None and nan["is_fake"] is None
    assert nan["error"] == "non_finite_score: the model gave nan; the image or the model is broken"
    assert scorer.result(1.5)["verdict"] == "error" and scorer.result(0.25)["probability"] == 0.25
    image = tmp_path / "a.png"
    image.write_bytes(_png(Image.new("RGB", (32, 32), (1, 2, 3))))
    assert predict.run(predict.PredictJob(inputs=(str(image), str(tmp_path / "gone.png")), model=tiny_detector_dir)) == 1
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}")) for line in lines]
    assert len(rows) == 2 and "score" in rows[0] and rows[1]["error"] == "not found"
