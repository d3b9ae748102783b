"""Image bytes -> RGB image, decoded the one way every path decodes (extraction, predict, serving).

Bad bytes never crash a job: ``decode_image`` raises ``BadImage`` whose ``reason`` is the
quarantine reason extraction records and predict reports (``empty_image``, ``not_an_image``,
``truncated_image``, ``corrupt_image``, ``decompression_bomb``, ``too_large``). Whatever PIL raises
while decoding becomes ``corrupt_image`` with its type and message: one hostile image is one bad
sample, never a stopped run.

Only the formats of ``image_formats()`` are opened (PIL identifies ~45 by content, whatever the
file is called): JPEG, PNG, WebP, BMP, GIF and TIFF by default, ``GENDET_IMAGE_FORMATS`` (comma
separated PIL format names) to narrow or widen it. An image over ``max_pixels`` (default
``MAX_PIXELS``, ``GENDET_MAX_PIXELS`` to change it) is refused as ``too_large`` from its header,
before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
"""The formats opened by default (``GENDET_IMAGE_FORMATS`` overrides)."""
MAX_PIXELS = 50_000_000
"""The most pixels an image may have (``GENDET_MAX_PIXELS`` overrides): ~7100 x 7100."""


def image_formats() -> tuple[str, ...]:
    """The PIL formats this process opens: ``GENDET_IMAGE_FORMATS`` when set, else ``IMAGE_FORMATS``."""
    text = os.environ.get("GENDET_IMAGE_FORMATS", "").strip()
    return tuple(f.strip().upper() for f in text.split(",") if f.strip()) if text else IMAGE_FORMATS


def max_pixels_default() -> int:
    text = os.environ.get("GENDET_MAX_PIXELS", "").strip()
    try:
        return int(text) if text else MAX_PIXELS
    except ValueError:
        return MAX_PIXELS


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
    """Image bytes -> fully decoded RGB image, or ``BadImage`` naming why not (module docstring).

    Images over ``max_pixels`` (default ``max_pixels_default()``) are refused as ``too_large`` from
    their header; images over PIL's ``Image.MAX_IMAGE_PIXELS`` as ``decompression_bomb`` (PIL only
    warns below twice its limit; the warning is turned into the reason)."""
    if not data:
        raise BadImage("empty_image")
    limit = max_pixels_default() if max_pixels is None else max_pixels
    formats = image_formats()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a hostile file's complaints: its reason says enough
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
            if img.width * img.height > limit:
                raise BadImage("too_large", f"{img.width}x{img.height} pixels, over the limit of {limit}")
            img.load()
            return to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError as exc:
        raise BadImage("not_an_image", f"{exc} (opened formats: {', '.join(formats)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated_image" if "truncated" in str(exc) or isinstance(exc, EOFError) else "corrupt_image"
        raise BadImage(reason, str(exc)) from None
    except MemoryError:
        raise BadImage("too_large", "the decoder ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - a decoder's own bug on hostile bytes: this image, not the run
        raise BadImage("corrupt_image", f"{type(exc).__name__}: {exc}") from None


class BadImage(BadSample):
    """Image bytes that do not decode to a usable image."""
