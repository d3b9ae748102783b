"""Image decoding: the one path extraction, predict and serving share (gendet.data.decode)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gendet.data.decode import BadImage, decode_image
from helpers.bad_shards import image_bytes


def test_modes_become_rgb_and_16_bit_keeps_its_range():
    img = decode_image(image_bytes(6, mode="I;16"))
    assert img.mode == "RGB" and 100 < np.asarray(img).mean() < 155  # uniform noise: mid-grey, not clipped white
    for mode in ("L", "RGBA", "CMYK", "P"):
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        assert decode_image(image_bytes(3, mode=mode, fmt=fmt)).mode == "RGB"


def test_decompression_bomb_just_over_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 40 - 1)  # PIL itself only warns below 2x
    with pytest.raises(BadImage) as err:
        decode_image(image_bytes(0))
    assert err.value.reason == "decompression_bomb"
