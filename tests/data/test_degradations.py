"""Degradations of the GenImage protocol: each changes a real photo the way it should."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from gendet import GendetError
from gendet.data.degradations import PROTOCOL, jpeg_bytes, parse_degrade


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from pathlib import Path

    import skimage.data

    with Image.open(Path(skimage.data.__file__).parent / "chelsea.png") as img:  # 451 x 300 photo
        return img.convert("RGB")


def _high_frequency_energy(image: Image.Image) -> float:
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    return float(np.mean(np.diff(grey, axis=0) ** 2) + np.mean(np.diff(grey, axis=1) ** 2))


def _psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def test_parse_canonical_specs():
    assert [parse_degrade(s).spec for s in PROTOCOL] == list(PROTOCOL)
    assert parse_degrade(" JPEG:65 ").spec == "jpeg:65"
    assert parse_degrade("blur:3.0").spec == "blur:3"
    assert parse_degrade("blur:1.5").spec == "blur:1.5"
    assert parse_degrade(None).spec == parse_degrade("").spec == parse_degrade("none").spec == ""


@pytest.mark.parametrize("bad", ["sharpen:2", "jpeg:high", "jpeg:0", "jpeg:65.5", "blur:-1", "resize:2", "resize"])
def test_invalid_specs_list_the_valid_ones(bad):
    with pytest.raises(GendetError) as err:
        parse_degrade(bad)
    message = str(err.value)
    assert repr(bad) in message and "jpeg:65, jpeg:30, blur:3, blur:5, resize:112, resize:64" in message


def test_identity_converts_to_rgb_only(photo):
    grey = photo.convert("L")
    out = parse_degrade("")(grey)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out)[..., 0], np.asarray(grey))


def test_jpeg_quality_orders_size_and_fidelity(photo):
    q65, q30 = parse_degrade("jpeg:65")(photo), parse_degrade("jpeg:30")(photo)
    assert q65.size == q30.size == photo.size and q65.mode == "RGB"
    assert len(jpeg_bytes(photo, 30)) < len(jpeg_bytes(photo, 65)) < len(jpeg_bytes(photo, 95))
    assert 25 < _psnr(photo, q30) < _psnr(photo, q65) < 60
    # the degraded pixels are exactly a JPEG decode at that quality (what the protocol measures)
    with Image.open(io.BytesIO(jpeg_bytes(photo, 65))) as decoded:
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(q65))


def test_blur_lowers_high_frequency_energy(photo):
    e0 = _high_frequency_energy(photo)
    e3, e5 = (_high_frequency_energy(parse_degrade(s)(photo)) for s in ("blur:3", "blur:5"))
    assert e5 < e3 < 0.2 * e0
    blurred = np.asarray(parse_degrade("blur:3")(photo), dtype=np.float64)
    assert abs(blurred.mean() - np.asarray(photo, dtype=np.float64).mean()) < 2  # blur keeps brightness


def test_resize_sets_the_shorter_side(photo):
    w, h = photo.size  # 451 x 300: height is the shorter side
    assert parse_degrade("resize:112")(photo).size == (round(w * 112 / h), 112)
    assert parse_degrade("resize:64")(photo).size == (round(w * 64 / h), 64)
    tall = photo.transpose(Image.Transpose.ROTATE_90)
    assert parse_degrade("resize:64")(tall).size == (64, round(w * 64 / h))
    small = photo.resize((80, 60))
    assert parse_degrade("resize:112")(small).size == (80, 60)  # never upscaled


def test_deterministic_and_picklable(photo):
    for spec in PROTOCOL:
        d = parse_degrade(spec)
        again = pickle.loads(pickle.dumps(d))  # our own bytes: shipped to decode workers
        assert np.array_equal(np.asarray(d(photo)), np.asarray(again(photo)))
