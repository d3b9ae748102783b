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

``aug:0.5`` is not a test degradation but the augmentation a detector trains with (the feature store
holds features, so it is applied at extraction, into its own variant): with that probability an
image gets one of JPEG at a quality in 60-95, a bicubic downscale by 0.5-1, or a crop of 0.6-1 of
each side, drawn from a hash of its pixels (a rerun writes the same store). Its output is never
under 64 px on a side that was not already (``spectrum:v2`` upscales below 64, and an upsampler's
trace is what v2 avoids), so an image of 64 px or less can only be re-encoded as JPEG.
Every degradation is deterministic, and ``Degradation.spec`` is the canonical spec string stored in
the feature store's ``degrade`` column (``""`` for none).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gendet import GendetError

PROTOCOL = ("jpeg:65", "jpeg:30", "blur:3", "blur:5", "resize:112", "resize:64")
KINDS = ("jpeg", "blur", "resize", "aug")


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


# aug:P, a training augmentation (not a test degradation): with probability P one of JPEG, downscale or
# crop, drawn per image. Never below AUG_MIN_SIDE px, which spectrum:v2 would upscale (an upsampler's
# trace is what v2 exists to avoid); images at that size or under can only be re-encoded as JPEG.
AUG_MIN_SIDE = 64
AUG_JPEG_QUALITY = (60, 95)
AUG_DOWNSCALE = (0.5, 1.0)
AUG_CROP_MIN = 0.6


def _augment(image: Image.Image, probability: float) -> Image.Image:
    """The seed is a hash of the decoded pixels: the same image gets the same draw in every run,
    shard layout and runner (a rerun writes the same store), different images independent ones."""
    image = image.convert("RGB")
    digest = hashlib.blake2b(image.tobytes(), digest_size=8, person=b"gendet-aug")
    digest.update(f"{image.size}:{probability:g}".encode())
    rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
    if rng.random() >= probability:
        return image
    w, h = image.size
    ops = ("jpeg", "downscale", "crop") if min(w, h) > AUG_MIN_SIDE else ("jpeg",)
    op = ops[int(rng.integers(len(ops)))]
    if op == "jpeg":
        return _jpeg(image, int(rng.integers(AUG_JPEG_QUALITY[0], AUG_JPEG_QUALITY[1] + 1)))
    # each side shrinks by at least a pixel (an augmentation drawn is never a no-op) and stays >= 64
    if op == "downscale":
        factor = max(rng.uniform(*AUG_DOWNSCALE), AUG_MIN_SIDE / min(w, h))  # keeps the aspect ratio
        size = [min(n - 1, max(AUG_MIN_SIDE, round(n * factor))) for n in (w, h)]
        return image.resize(size, Image.Resampling.BICUBIC)  # Pillow widens the kernel when shrinking: antialiased
    side = max(rng.uniform(AUG_CROP_MIN, 1.0), AUG_MIN_SIDE / min(w, h))
    cw, ch = (min(n - 1, max(AUG_MIN_SIDE, round(n * side))) for n in (w, h))
    x, y = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


_APPLY = {"jpeg": _jpeg, "blur": _blur, "resize": _resize, "aug": _augment}


@dataclass(frozen=True, slots=True)
class Degradation:
    """One degradation; ``kind == ""`` is the identity. Call it on a PIL image, get an RGB PIL image."""

    kind: str = ""
    value: float = 0.0

    @property
    def spec(self) -> str:
        """``kind:value``, the value as short as it stays exact (``blur:1.5``, ``jpeg:65``): one
        spec per value applied, so two values never share a store variant (``:g`` alone rounds
        ``blur:1.2345678`` to ``blur:1.23457``)."""
        if not self.kind:
            return ""
        short = f"{self.value:g}"
        return f"{self.kind}:{short if float(short) == self.value else repr(self.value)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        if not self.kind:
            return image if image.mode == "RGB" else image.convert("RGB")
        return _APPLY[self.kind](image, self.value)


def _invalid(spec: str, why: str) -> GendetError:
    return GendetError(f"--degrade {spec!r}: {why}; valid: {', '.join(PROTOCOL)} (GenImage protocol), "
                       "or jpeg:<quality 1-100>, blur:<sigma>, resize:<shorter side px>, aug:<probability> (training "
                       "augmentation), or empty for none")


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
    if kind == "aug" and not 0 < value <= 1:
        raise _invalid(spec, "aug takes the probability of augmenting an image, in (0, 1]")
    return Degradation(kind, value)
