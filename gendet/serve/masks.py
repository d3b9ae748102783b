"""A GAMMA mask made on the encoder's input canvas, taken back to the image's own pixels.

An encoder sees a canvas its preprocessing made from the image (``Preprocessor.pixels``): a resize
and/or a center crop, or (``spectrum:v2``) a native center crop tiled across the canvas. The mask
``GammaDetector.masks`` makes on that canvas is brought back by inverting that geometry, read from
the encoder's ``preprocess_cfg`` (``canvas_and_image_boxes``):

* ``spectrum:v1`` (shorter side upscaled to 128 only when smaller, then a 128 px center crop): the
  canvas is the crop; it is pasted where the crop was (resized back by the upscale factor when
  there was one: bilinear on the 0/255 mask, then >= 128). Images of 128 px and more: exact.
* ``spectrum:v2`` (a native 256/128/64 px center crop tiled to 256 px): the **top-left tile**
  is the crop (every tile holds the same pixels; the others are not read), pasted where the crop
  was; exact at native size (images under 64 px are resized back as for v1).
* ``open_clip`` ``shortest`` (resize the shorter side to the size, center crop), ``longest``
  (resize the longer side, pad) and ``squash`` (resize both): the inverse resize and offset, to a
  pixel (torchvision rounds the resized size and the crop offset; a box here is rounded once).
* any other geometry: the whole canvas is resized to the whole image.

Pixels outside the region the encoder saw (beyond a center crop) are **not** predicted generated
(0 in the mask): the model never looked at them. ``fake_fraction`` is therefore taken over the
region the model saw (``seen_box``): a wholly generated 512 px image scored through a 256 px crop
is 1.0, not the 0.25 the mask's mean over the whole image would say.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (pixels, x1/y1 exclusive)


def _scaled(w: int, h: int, shorter_to: int) -> tuple[int, int]:
    """The size spectrum's ``_center_crop``/``_native_tiled`` upscale an image to (shorter side to ``shorter_to``)."""
    scale = shorter_to / min(w, h)
    return max(shorter_to, round(w * scale)), max(shorter_to, round(h * scale))


def _crop_boxes(w: int, h: int, sw: int, sh: int, crop: int, offset) -> tuple[Box, Box]:
    """(canvas box, image box) of a ``crop`` px square centered in the image resized to (sw, sh)."""
    left, top = offset(sw - crop), offset(sh - crop)
    fx, fy = w / sw, h / sh
    return (0, 0, crop, crop), (left * fx, top * fy, (left + crop) * fx, (top + crop) * fy)


def canvas_and_image_boxes(cfg: dict[str, Any], image_size: tuple[int, int], canvas_size: tuple[int, int]) -> tuple[Box, Box]:
    """(box on the canvas, box in the image) that hold the same pixels, for an image of
    ``image_size`` (w, h) preprocessed onto a canvas of ``canvas_size`` (w, h) by ``cfg`` (module docstring)."""
    w, h = image_size
    cw, ch = canvas_size
    whole_canvas, whole_image = (0, 0, cw, ch), (0, 0, w, h)
    mode, crop = cfg.get("resize_mode"), cfg.get("crop")
    if cfg.get("family") == "spectrum" and mode == "upscale_shorter_only" and cw == ch:
        sw, sh = _scaled(w, h, cw) if min(w, h) < cw else (w, h)
        return _crop_boxes(w, h, sw, sh, cw, lambda d: d // 2)
    if cfg.get("family") == "spectrum" and crop == "center-native-tiled":
        crops = sorted(cfg.get("native_crops") or [cw], reverse=True)
        sw, sh = _scaled(w, h, crops[-1]) if min(w, h) < crops[-1] else (w, h)
        size = next(s for s in crops if s <= min(sw, sh))
        return _crop_boxes(w, h, sw, sh, size, lambda d: d // 2)  # the top-left tile
    if mode == "shortest" and cw == ch:  # torchvision Resize(int) + CenterCrop
        sw, sh = (cw, int(cw * h / w)) if w <= h else (int(cw * w / h), cw)
        return _crop_boxes(w, h, sw, sh, cw, lambda d: int(round(d / 2.0)))
    if mode == "longest":  # the whole image, resized into the canvas and padded around it
        scale = min(cw / w, ch / h)
        iw, ih = w * scale, h * scale
        return ((cw - iw) / 2, (ch - ih) / 2, (cw + iw) / 2, (ch + ih) / 2), whole_image
    return whole_canvas, whole_image  # squash, or a geometry not known here: resize the whole canvas


def _rounded(box: Box, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return max(0, x0), max(0, y0), min(w, max(x1, x0 + 1)), min(h, max(y1, y0 + 1))


def seen_box(cfg: dict[str, Any], image_size: tuple[int, int], canvas_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the pixels of an image of ``image_size`` (w, h) that its canvas of
    ``canvas_size`` (w, h) holds, rounded as ``image_mask`` pastes them."""
    return _rounded(canvas_and_image_boxes(cfg, image_size, canvas_size)[1], *image_size)


def seen_fraction(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The share of the pixels in ``box`` (what the model saw) that ``mask`` [H, W] marks."""
    x0, y0, x1, y1 = box
    return float(np.asarray(mask, dtype=bool)[y0:y1, x0:x1].mean())


def image_mask(canvas_mask: np.ndarray, cfg: dict[str, Any], image_size: tuple[int, int]) -> np.ndarray:
    """bool [H, W] on the image (``image_size`` = (w, h)) from a bool mask [H', W'] on the encoder's
    canvas: the canvas region that holds image pixels, put back where those pixels are (module docstring)."""
    w, h = image_size
    ch, cw = canvas_mask.shape
    canvas_box, image_box = canvas_and_image_boxes(cfg, (w, h), (cw, ch))
    cx0, cy0, cx1, cy1 = _rounded(canvas_box, cw, ch)
    ix0, iy0, ix1, iy1 = _rounded(image_box, w, h)
    region = np.asarray(canvas_mask, dtype=bool)[cy0:cy1, cx0:cx1]
    if region.shape != (iy1 - iy0, ix1 - ix0):  # bilinear on 0/255, then >= 128: a smooth edge, not stairs
        grey = Image.fromarray(region.astype(np.uint8) * 255, mode="L").resize((ix1 - ix0, iy1 - iy0), Image.Resampling.BILINEAR)
        region = np.asarray(grey) >= 128
    out = np.zeros((h, w), dtype=bool)
    out[iy0:iy1, ix0:ix1] = region
    return out


def mask_png(mask: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a bool mask: 255 = predicted generated, 0 elsewhere."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()
