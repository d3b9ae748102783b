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


def test_one_spec_per_value_applied():
    """The spec names the store variant: two values applied never share one, one value has one spelling."""
    assert parse_degrade("blur:1.50").spec == "blur:1.5" != parse_degrade("blur:15").spec
    assert parse_degrade("blur:1.2345678").spec == "blur:1.2345678" != parse_degrade("blur:1.2345679").spec
    for spec in ("blur:1.2345678", "blur:0.1", "jpeg:7", "resize:112"):
        d = parse_degrade(spec)
        assert parse_degrade(d.spec) == d


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


def _crops(photo: Image.Image, size: int, count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    w, h = photo.size
    return [photo.crop((x, y, x + size, y + size)) for x, y in
            zip(rng.integers(0, w - size, count), rng.integers(0, h - size, count))]


def test_aug_spec_is_canonical_and_checked():
    assert parse_degrade("AUG:0.50").spec == "aug:0.5" and parse_degrade("aug:1").spec == "aug:1"
    for bad in ("aug:0", "aug:1.5", "aug:-0.2", "aug:often"):
        with pytest.raises(GendetError, match="aug"):
            parse_degrade(bad)


def test_aug_is_a_function_of_the_pixels(photo):
    aug = parse_degrade("aug:0.5")
    again = pickle.loads(pickle.dumps(aug))  # a decode worker's copy draws the same
    for crop in _crops(photo, 128, 20):
        assert np.array_equal(np.asarray(aug(crop)), np.asarray(again(crop.copy())))


def test_aug_changes_about_its_share_and_uses_every_kind(photo):
    crops = _crops(photo, 128, 200)
    outs = [parse_degrade("aug:0.5")(c) for c in crops]
    changed = [o.size != c.size or not np.array_equal(np.asarray(o), np.asarray(c)) for o, c in zip(outs, crops)]
    assert 0.35 < np.mean(changed) < 0.65  # independent draws per image, at the asked probability
    smaller = [o for o in outs if o.size != (128, 128)]
    assert smaller and all(min(o.size) >= 64 for o in smaller)  # downscales and crops, never under 64 px
    jpeg_like = [o for o, c, ch in zip(outs, crops, changed) if ch and o.size == c.size]
    assert jpeg_like  # same size, other pixels: a JPEG round trip
    always = [parse_degrade("aug:1")(c) for c in crops[:30]]
    assert all(o.size != (128, 128) or not np.array_equal(np.asarray(o), np.asarray(c)) for o, c in zip(always, crops))


def test_aug_never_makes_a_64px_image_smaller(photo):
    for crop in _crops(photo, 64, 40):
        out = parse_degrade("aug:1")(crop)
        assert out.size == (64, 64) and out.mode == "RGB"  # only JPEG fits: v2 would upscale anything smaller
        assert not np.array_equal(np.asarray(out), np.asarray(crop))
