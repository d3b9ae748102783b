"""Manipulations that keep real content around an edited region, each with its pixel mask (GAMMA,
issue 13). Generator-agnostic: they work on any real image, with any generated image as donor
(GenImage fakes into their reals, zoo fakes into zoo reals); the inpainting kind, which needs a
generator, is ``gendet.zoo.manipulate``.

What the mask means (decided): **manipulated vs authentic**, not "generated vs real". A pixel is 1
when its value was not captured there by the camera of this image as delivered: pasted from a
generated image (``splice``), regenerated (``inpaint``), copied from elsewhere in the same photo
(``copy_move``: not generated, but not where it was taken) or processed apart from the rest
(``perturb``: a region re-encoded as JPEG, blurred or resampled). Which pixels a *generator* made is
the separate ``generated_fraction`` (0 for copy-move and perturb), which is what the attribution
head of ``gendet.method.gamma`` learns per token; the manipulation head learns the mask.

Every function takes a ``numpy.random.Generator`` and is deterministic for a given one; each
returns a ``Manipulated``: the image (uint8 [H, W, 3]), the mask (uint8 [H, W], {0, 1}), the kind,
the manipulated fraction (mask mean) and the generated fraction. Pixels outside the mask are the
input's exactly, except where ``feather`` blends a splice's edge (only pixels where the donor
weighs less than one half stay 0 in the mask) and after ``global_perturbation``, which by design
touches every pixel and changes no mask.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

KINDS = ("copy_move", "splice", "perturb")
"""Generator-agnostic kinds (``inpaint`` lives in the zoo layer)."""
GENERATED_KINDS = ("splice", "inpaint")
"""Kinds whose masked pixels come from a generator (the attribution head's family class)."""
PERTURBATIONS = ("jpeg", "blur", "resample")
MASK_AREA = (0.15, 0.5)
"""Share of the image a region covers: the zoo's inpainting masks (``inpaint_f8``)."""


@dataclass(frozen=True, slots=True)
class Manipulated:
    image: np.ndarray
    """uint8 [H, W, 3]."""
    mask: np.ndarray
    """uint8 [H, W], 1 = manipulated, 0 = authentic (module docstring)."""
    kind: str
    fraction: float
    """Share of pixels manipulated (the mask's mean)."""
    generated_fraction: float
    """Share of pixels a generator made: ``fraction`` for splice/inpaint, 0 otherwise."""
    detail: dict[str, Any] = field(default_factory=dict)
    """What was drawn (perturbation, quality, offsets): written to the sample's json."""


def _check_image(image: np.ndarray, what: str = "image") -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"{what} of {image.shape[:2]} px is too small to manipulate (need >= 8 px a side)")


def region_masks(count: int, height: int, width: int, rng: np.random.Generator,
                 area: tuple[float, float] = MASK_AREA) -> np.ndarray:
    """bool [count, height, width]: one axis-aligned rectangle or ellipse each (one blob, as
    inpainting masks usually are), covering a share of the image drawn from ``area``. For a
    square image this draws exactly what the zoo drew for its ``inpaint_f8`` masks (same numbers
    from ``rng`` in the same order), so the zoo calls it."""
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"mask area {area}: need 0 < low <= high <= 1")
    yy, xx = np.mgrid[0:height, 0:width]
    masks = np.zeros((count, height, width), dtype=bool)
    for i in range(count):
        frac = rng.uniform(*area)
        aspect = rng.uniform(0.5, 2.0)
        h = min(height, max(2, int(round(height * np.sqrt(frac * aspect)))))
        w = min(width, max(2, int(round(width * np.sqrt(frac / aspect)))))
        top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        if rng.random() < 0.5:
            masks[i, top:top + h, left:left + w] = True
        else:
            cy, cx = top + h / 2, left + w / 2
            masks[i] = ((yy + 0.5 - cy) / (h / 2)) ** 2 + ((xx + 0.5 - cx) / (w / 2)) ** 2 <= 1.0
    return masks


def _result(image: np.ndarray, mask: np.ndarray, kind: str, detail: dict[str, Any]) -> Manipulated:
    mask = mask.astype(np.uint8)
    fraction = round(float(mask.mean()), 6)
    return Manipulated(image=image, mask=mask, kind=kind, fraction=fraction,
                       generated_fraction=fraction if kind in GENERATED_KINDS else 0.0, detail=detail)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1] + 1 - rows[0]), int(cols[-1] + 1 - cols[0])


def copy_move(image: np.ndarray, rng: np.random.Generator, *, area: tuple[float, float] = MASK_AREA,
              mask: np.ndarray | None = None) -> Manipulated:
    """A region of ``image`` pasted elsewhere in it (from the original pixels, so overlapping
    source and destination are fine). The mask is the destination region."""
    _check_image(image)
    height, width = image.shape[:2]
    dst = region_masks(1, height, width, rng, area)[0] if mask is None else mask.astype(bool)
    top, left, h, w = _bbox(dst)
    # every other position the region's box fits at; never the same one (a copy onto itself)
    cols = width - w + 1
    count = (height - h + 1) * cols
    if count < 2:
        raise ValueError(f"copy_move: a {h}x{w} region fills the {height}x{width} image; draw a smaller area")
    index = int(rng.integers(count - 1))
    index += index >= top * cols + left  # skip the destination itself
    sy, sx = divmod(index, cols)
    out = image.copy()
    window = dst[top:top + h, left:left + w]
    out[top:top + h, left:left + w][window] = image[sy:sy + h, sx:sx + w][window]
    return _result(out, dst, "copy_move", {"source_offset": [sy, sx], "offset": [top, left]})


def _donor_window(donor: np.ndarray, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A ``height`` x ``width`` window of ``donor`` at a random place; a smaller donor is upscaled
    (bicubic, the one resampling here; reported as ``donor_resized``)."""
    dh, dw = donor.shape[:2]
    resized = dh < height or dw < width
    if resized:
        scale = max(height / dh, width / dw)
        size = (max(width, round(dw * scale)), max(height, round(dh * scale)))
        donor = np.asarray(Image.fromarray(donor).resize(size, Image.Resampling.BICUBIC))
        dh, dw = donor.shape[:2]
    y, x = int(rng.integers(dh - height + 1)), int(rng.integers(dw - width + 1))
    return donor[y:y + height, x:x + width], resized


def splice(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator, *, area: tuple[float, float] = MASK_AREA,
           feather: float = 0.0, mask: np.ndarray | None = None) -> Manipulated:
    """A region of a generated ``donor`` pasted into the real ``image`` (a same-size window of the
    donor at a random place, so its pixels keep their native grid). ``feather`` > 0 blends the edge
    with a Gaussian of that many pixels: out = a * donor + (1 - a) * image with a the blurred mask;
    the mask is then a >= 0.5."""
    _check_image(image)
    _check_image(donor, "donor")
    height, width = image.shape[:2]
    region = region_masks(1, height, width, rng, area)[0] if mask is None else mask.astype(bool)
    window, resized = _donor_window(donor, height, width, rng)
    if feather > 0:
        alpha = Image.fromarray(region.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(feather))
        a = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0
        out = np.clip(np.rint(a * window + (1 - a) * image), 0, 255).astype(np.uint8)
        region = a[..., 0] >= 0.5
    else:
        out = np.where(region[..., None], window, image)
    return _result(out, region, "splice", {"feather": feather, "donor_resized": resized})


def perturbed(image: np.ndarray, rng: np.random.Generator, name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The whole image re-encoded as JPEG (quality 30-70), blurred (Gaussian sigma 0.8-2) or
    resampled (bicubic down to 0.4-0.8 of its size and back): processing that keeps the content."""
    name = name or PERTURBATIONS[int(rng.integers(len(PERTURBATIONS)))]
    pil = Image.fromarray(image)
    if name == "jpeg":
        quality = int(rng.integers(30, 71))
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), {"perturbation": name, "quality": quality}
    if name == "blur":
        sigma = round(float(rng.uniform(0.8, 2.0)), 3)
        return np.asarray(pil.filter(ImageFilter.GaussianBlur(sigma))), {"perturbation": name, "sigma": sigma}
    if name == "resample":
        scale = round(float(rng.uniform(0.4, 0.8)), 3)
        small = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.Resampling.BICUBIC)
        return np.asarray(small.resize(pil.size, Image.Resampling.BICUBIC)), {"perturbation": name, "scale": scale}
    raise ValueError(f"unknown perturbation {name!r}; choose from {PERTURBATIONS}")


def perturb(image: np.ndarray, rng: np.random.Generator, *, area: tuple[float, float] = MASK_AREA,
            perturbation: str | None = None, mask: np.ndarray | None = None) -> Manipulated:
    """A region of ``image`` replaced by the same region of a ``perturbed`` copy (content kept,
    local processing changed). Counted as manipulated in the mask, generated fraction 0."""
    _check_image(image)
    region = region_masks(1, *image.shape[:2], rng, area)[0] if mask is None else mask.astype(bool)
    processed, detail = perturbed(image, rng, perturbation)
    return _result(np.where(region[..., None], processed, image), region, "perturb", detail)


def global_perturbation(result: Manipulated, rng: np.random.Generator, name: str | None = None) -> Manipulated:
    """``result`` with its whole image perturbed afterwards (same mask): the authentic and the
    manipulated part share one processing history, so a detector cannot find the region by a
    compression or resampling mismatch alone (GAMMA's consistency between the two)."""
    image, detail = perturbed(result.image, rng, name)
    return Manipulated(image=image, mask=result.mask, kind=result.kind, fraction=result.fraction,
                       generated_fraction=result.generated_fraction,
                       detail={**result.detail, "global": detail})


def manipulate(image: np.ndarray, kind: str, rng: np.random.Generator, *, donor: np.ndarray | None = None,
               area: tuple[float, float] = MASK_AREA, feather: float = 0.0) -> Manipulated:
    """One manipulation of ``kind`` (``KINDS``); ``splice`` needs ``donor``."""
    if kind == "copy_move":
        return copy_move(image, rng, area=area)
    if kind == "splice":
        if donor is None:
            raise ValueError("splice needs a donor (a generated image)")
        return splice(image, donor, rng, area=area, feather=feather)
    if kind == "perturb":
        return perturb(image, rng, area=area)
    raise ValueError(f"unknown manipulation {kind!r}; choose from {KINDS} (inpaint: gendet.zoo.manipulate)")


# --- masks on disk: ``<key>.mask.png`` beside the image (CONTRACTS.md) -----------------------------

MASK_MEMBER = "mask.png"


def encode_mask(mask: np.ndarray) -> bytes:
    """8-bit greyscale PNG, 255 = manipulated, 0 = authentic (viewable as is)."""
    buf = io.BytesIO()
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """uint8 [H, W] {0, 1} from ``encode_mask``'s bytes (any greyscale PNG: > 127 is manipulated)."""
    with Image.open(io.BytesIO(data)) as im:
        return (np.asarray(im.convert("L")) > 127).astype(np.uint8)
