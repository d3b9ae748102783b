"""Pictures of where a GAMMA model says an image is fake (issue 13): for people, not metrics.

- ``overlay(image, mask)``: the image with the mask's pixels tinted red and its outline drawn in
  solid red, as a PIL RGB image of the image's size (what ``gendet predict --mask-dir`` writes as
  ``<name>.overlay.png``).
- ``overlay_grid(images, true_masks, pred_masks, titles)``: a matplotlib Figure, one row per image:
  the image, the true mask's overlay (green) and the predicted mask's (red), masks of any size
  (a token grid of probabilities is stretched over its image), for a report
  (``gendet.eval.report.overlay_section``) or ``mlflow.log_figure(fig, "overlays.png")``.

Masks are arrays [H, W] (bool, or numbers where > 0.5 counts as masked; 255-valued PNG masks read
with ``np.asarray(Image.open(p)) > 127``) of the image's size. No pyplot: nothing to close.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageFilter

TINT = (255, 0, 0)
TRUE_EDGE = (0, 200, 0)
ALPHA = 0.45  # share of the tint over a masked pixel: the image stays readable under it


def _rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        array = image if image.dtype == np.uint8 else np.clip(np.rint(np.asarray(image, float) * 255), 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    return image if image.mode == "RGB" else image.convert("RGB")


def _bool(mask: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    m = np.asarray(mask)
    m = m > 127 if m.dtype == np.uint8 else (m.astype(bool) if m.dtype == bool else m > 0.5)
    if m.shape != (size[1], size[0]):
        raise ValueError(f"{what}: mask {m.shape[::-1]} (w, h) is not the image's size {size}")
    return m


def _fit(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask of another size (a token grid [R, C] of probabilities, a canvas mask) resized to ``size``
    (w, h): bilinear on its values in [0, 1] (uint8 masks / 255), so ``> 0.5`` then masks a pixel."""
    m = np.asarray(mask)
    if m.shape == (size[1], size[0]):
        return m
    values = m.astype(np.float32) / (255.0 if m.dtype == np.uint8 else 1.0)
    return np.asarray(Image.fromarray(values, mode="F").resize(size, Image.Resampling.BILINEAR)) > 0.5


def _outline(mask: np.ndarray) -> np.ndarray:
    """Masked pixels with an unmasked 4- or 8-neighbour: a 1-2 px contour (so a thin region still shows)."""
    grey = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    inner = np.asarray(grey.filter(ImageFilter.MinFilter(3))) > 0
    return mask & ~inner


def overlay(image: Image.Image | np.ndarray, mask: np.ndarray, *, color: tuple[int, int, int] = TINT,
            alpha: float = ALPHA, edge: tuple[int, int, int] | None = None) -> Image.Image:
    """``image`` (PIL, or an HxWx3 array: uint8 or floats in [0, 1]) with ``mask``'s pixels tinted
    ``color`` at ``alpha`` and the mask's outline in ``edge`` (default: ``color``); RGB, the image's size."""
    base = _rgb(image)
    m = _bool(mask, base.size, "overlay")
    out = np.array(base, dtype=np.uint8)  # a copy; only masked pixels go through floats (a large image stays uint8)
    if m.any():
        out[m] = np.rint((1 - alpha) * out[m].astype(np.float32) + alpha * np.asarray(color, np.float32)).astype(np.uint8)
    out[_outline(m)] = edge or color
    return Image.fromarray(out, mode="RGB")


def overlay_grid(images: Sequence[Image.Image | np.ndarray], true_masks: Sequence[np.ndarray | None],
                 pred_masks: Sequence[np.ndarray], titles: Sequence[str] | None = None, *,
                 cell_inches: float = 2.4) -> Figure:
    """One row per image: the image | its true mask (green outline over a green tint; "no mask" when
    None) | the predicted mask (red), each mask column titled with its share of the image. ``titles``
    (e.g. ``"inpaint / sdxl"``) head the rows' first panels. All three sequences have one entry per
    image. A mask of another size than its image (a token grid [R, C] of per-token shares or
    probabilities, a mask on the encoder's canvas) is stretched over the whole image (``_fit``)."""
    n = len(images)
    titles = list(titles) if titles is not None else [""] * n
    if not (len(true_masks) == len(pred_masks) == len(titles) == n) or n == 0:
        raise ValueError(f"overlay_grid: {n} images, {len(true_masks)} true masks, {len(pred_masks)} predicted masks "
                         f"and {len(titles)} titles; pass one of each per image (at least one)")
    fig = Figure(figsize=(3 * cell_inches, n * cell_inches + 0.3))
    axes = np.asarray(fig.subplots(n, 3, squeeze=False))
    for row, (image, true, pred, title) in enumerate(zip(images, true_masks, pred_masks, titles)):
        base = _rgb(image)
        panels = [(base, title or "image")]
        if true is None:
            panels.append((base, "true: no mask"))
        else:
            t = _bool(_fit(true, base.size), base.size, f"overlay_grid row {row} true mask")
            panels.append((overlay(base, t, color=TRUE_EDGE), f"true: {t.mean():.0%}"))
        p = _bool(_fit(pred, base.size), base.size, f"overlay_grid row {row} predicted mask")
        panels.append((overlay(base, p), f"predicted: {p.mean():.0%}"))
        for ax, (picture, label) in zip(axes[row], panels):
            ax.imshow(np.asarray(picture), interpolation="nearest")
            ax.set_title(label, fontsize="small")
            ax.set_axis_off()
    fig.tight_layout()
    return fig
