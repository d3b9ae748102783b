"""Image degradations of the GenImage robustness protocol, applied to the decoded image before the
encoder's preprocessing (``gendet extract --degrade SPEC``).

The protocol (GenImage Table 5, GenDet Table 4) trains on clean images and tests on degraded ones:

``jpeg:65``, ``jpeg:30``
    Re-encode as JPEG at that quality with Pillow (default 4:2:0 chroma subsampling), decode again:
    CNNDetection's ``pil_jpg``, which GenImage's detector code inherits.
``blur:3``, ``blur:5``
    Gaussian blur with that standard deviation in pixels, each channel separately
    (``scipy.ndimage.gaussian_filter``, reflect borders, kernel truncated at 4 sigma): CNNDetection's
    ``gaussian_blur``.
``resize:112``, ``resize:64``
    Low resolution ("the images are resized to 112 and 64"): the image is downscaled with Pillow's
    bicubic filter (antialiased) so that its *shorter* side is that many pixels, keeping the aspect
    ratio; images already that small are left alone. Nothing here scales back up: the encoder's
    preprocessing does, exactly as it would for any small image (open_clip resizes the shorter side
    to 224 and center-crops; ``spectrum:v1`` upscales to 128). The detail lost is what is measured.

Other values of the same kinds are accepted (``jpeg:1..100``, ``blur:<sigma>``, ``resize:<px>``).
Every degradation is deterministic, and ``Degradation.spec`` is the canonical spec string stored in
the feature store's ``degrade`` column (``""`` for none).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gendet import GendetError

PROTOCOL = ("jpeg:65", "jpeg:30", "blur:3", "blur:5", "resize:112", "resize:64")
KINDS = ("jpeg", "blur", "resize")


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: float) -> Image.Image:
    with Image.open(io.BytesIO(jpeg_bytes(image, int(quality)))) as decoded:
        return decoded.convert("RGB")


def _blur(image: Image.Image, sigma: float) -> Image.Image:
    from scipy.ndimage import gaussian_filter

    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    blurred = np.stack([gaussian_filter(array[..., c], sigma=sigma, mode="reflect") for c in range(3)], -1)
    return Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))


def _resize(image: Image.Image, shorter: float) -> Image.Image:
    image = image.convert("RGB")
    w, h, n = *image.size, int(shorter)
    if min(w, h) <= n:
        return image
    size = (n, max(1, round(h * n / w))) if w <= h else (max(1, round(w * n / h)), n)
    return image.resize(size, Image.Resampling.BICUBIC)


_APPLY = {"jpeg": _jpeg, "blur": _blur, "resize": _resize}


@dataclass(frozen=True, slots=True)
class Degradation:
    """One degradation; ``kind == ""`` is the identity. Call it on a PIL image, get an RGB PIL image."""

    kind: str = ""
    value: float = 0.0

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.value:g}" if self.kind else ""

    def __call__(self, image: Image.Image) -> Image.Image:
        if not self.kind:
            return image if image.mode == "RGB" else image.convert("RGB")
        return _APPLY[self.kind](image, self.value)


def _invalid(spec: str, why: str) -> GendetError:
    return GendetError(f"--degrade {spec!r}: {why}; valid: {', '.join(PROTOCOL)} (GenImage protocol), "
                       f"or jpeg:<quality 1-100>, blur:<sigma>, resize:<shorter side px>, or empty for none")


def parse_degrade(spec: str | None) -> Degradation:
    """``"jpeg:65"`` -> Degradation("jpeg", 65); ``None``/``""``/``"none"`` -> the identity."""
    text = (spec or "").strip().lower()
    if text in ("", "none"):
        return Degradation()
    kind, _, raw = text.partition(":")
    if kind not in KINDS:
        raise _invalid(spec, f"unknown kind {kind!r}")
    try:
        value = float(raw)
    except ValueError:
        raise _invalid(spec, f"{raw!r} is not a number") from None
    if kind == "jpeg" and not (1 <= value <= 100 and value.is_integer()):
        raise _invalid(spec, "JPEG quality must be an integer from 1 to 100")
    if kind == "blur" and not 0 < value <= 50:
        raise _invalid(spec, "blur sigma must be in (0, 50]")
    if kind == "resize" and not (8 <= value <= 4096 and value.is_integer()):
        raise _invalid(spec, "resize must be a whole number of pixels from 8 to 4096")
    return Degradation(kind, value)
