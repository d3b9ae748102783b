"""Image bytes -> RGB image, decoded the one way every path decodes (extraction, predict, serving).

Bad bytes never crash a job: ``decode_image`` raises ``BadImage`` whose ``reason`` is the
quarantine reason extraction records and predict reports (``empty_image``, ``not_an_image``,
``truncated_image``, ``corrupt_image``, ``decompression_bomb``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is the quarantine reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. 16-bit and float images are scaled to 8 bits first (PIL's own
    conversion clips them, which turns most 16-bit photos white); alpha is dropped as
    open_clip's ``_convert_to_rgb`` does."""
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" and arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes | None, *, max_pixels: int | None = None) -> Image.Image:
    """Image bytes -> fully decoded RGB image, or ``BadImage`` naming why not.

    Images over PIL's ``Image.MAX_IMAGE_PIXELS`` are refused (PIL only warns below twice the
    limit; the warning is turned into the same ``decompression_bomb`` reason); with ``max_pixels``
    (serving), images over that many pixels are refused as ``too_large`` from their header, before
    any pixel is decoded."""
    if not data:
        raise BadImage("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise BadImage("too_large", f"{img.width}x{img.height} pixels, over the limit of {max_pixels}")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError as exc:
        raise BadImage("not_an_image", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated_image" if "truncated" in str(exc) or isinstance(exc, EOFError) else "corrupt_image"
        raise BadImage(reason, str(exc)) from None
    return to_rgb(img)


class BadImage(BadSample):
    """Image bytes that do not decode to a usable image."""
