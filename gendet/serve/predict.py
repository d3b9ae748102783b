"""``gendet predict``: score images, folders and URLs with a trained detector.

``gendet predict PATH_OR_URL... --model URI`` (``pipelines.predict``) prints one JSON line per image:
``path``, ``score`` (P(fake)), ``is_fake`` (score > threshold) and ``threshold`` (the model's
calibrated threshold; 0.5 for a detector trained without calibration). ``URI`` is
``models:/gendet@champion``, ``models:/gendet/3``, ``runs:/<run>/detector``, or a directory (local
or fsspec URL) of a saved Detector or of an MLflow model; everything else (encoder name and
weights reference, preprocessing, threshold) comes from the model.

Folders are walked recursively in sorted order and their image files (by extension) scored; any
fsspec URL works as an input. Images are decoded exactly as ``gendet extract`` decodes them, so
the features match training. A bad item gets a line with ``error`` instead of a score (``not
found``, ``unreadable: ...``, or extract's quarantine reason: ``not_an_image``, ``corrupt_image``,
``decompression_bomb`` for images over PIL's pixel limit, ...) and the others are still scored. The
exit code is 0 when at least one image was scored.

A GAMMA model (``gendet train-gamma``) localizes: each scored line also has ``fake_fraction`` (the
share of the pixels it saw, its crop of the image, that its predicted mask covers;
``gendet.serve.gamma_scorer``), and with
``--mask-dir DIR`` the mask itself: ``DIR/<stem>.mask.png`` (8-bit greyscale, the image's size,
255 = predicted generated) and ``DIR/<stem>.overlay.png`` (the image with the mask tinted red), the
line's ``mask`` naming the mask PNG. ``<stem>`` is the image's file name without its extension;
when two inputs share one, the later gets ``<stem>-<8 hex of its path>``. A GenDet detector has no
masks: its lines are as before, and ``--mask-dir`` is refused before any image is read.

Python API: ``load_scorer(uri)`` (``gendet.serve.loading``) once, then ``predict(scorer, inputs)`` or
``scorer.score_bytes([...])`` (what the MLflow pyfunc model serves).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.progress import progress as progress_display
from gendet.serve.loading import load_scorer
from gendet.serve.scorer import NO_MASKS, ImageScorer, ItemError, decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

__all__ = ["ImageScorer", "expand_inputs", "iter_predictions", "load_scorer", "predict", "read_item"]


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files as given; folders replaced by their image files, recursively, sorted."""
    out: list[str] = []
    for item in inputs:
        try:
            fs, path = gio.fs_and_path(item)
            is_dir = fs.isdir(path)
        except Exception:  # unknown protocol, unreachable host: reported when read
            is_dir = False
        if not is_dir:
            out.append(item)
            continue
        found = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES)
                       and not gio.basename(p).startswith("."))
        # each file keeps the folder as the user wrote it (a relative path, a URL with its protocol)
        out.extend(gio.join(item, posixpath.relpath(p, path)) for p in found)
    return out


MAX_ITEM_BYTES = 64 << 20  # one image file; serving caps a whole request at the same


def read_item(url: str) -> bytes | Exception:
    """The bytes at ``url``, or the exception (as a one-line ItemError) when it cannot be read.
    Bounded: a local path must be a regular file (a FIFO would block, a device never end) and at
    most ``MAX_ITEM_BYTES`` are read."""
    try:
        fs, path = gio.fs_and_path(url)
        if gio.is_local(fs):
            mode = os.stat(path).st_mode  # stat, not open: opening a FIFO blocks
            if stat.S_ISDIR(mode):
                return ItemError("is a directory")
            if not stat.S_ISREG(mode):
                return ItemError("not a regular file (a pipe, device or socket): pass image files")
        with fs.open(path, "rb") as f:
            data = f.read(MAX_ITEM_BYTES + 1)
        if len(data) > MAX_ITEM_BYTES:
            return ItemError(f"too_large: over {MAX_ITEM_BYTES >> 20} MiB; images are scored up to that size")
        return data
    except FileNotFoundError as exc:
        cause = exc.__cause__  # fsspec's HTTP filesystem turns every failure into FileNotFoundError
        status = getattr(cause, "status", None)
        if cause is None or isinstance(cause, FileNotFoundError) or status in (404, 410):
            return ItemError("not found")
        if status is not None:
            return ItemError(f"unreadable: HTTP {status}")
        return ItemError(f"unreachable: {type(cause).__name__}: {first_line(cause, 200)}")
    except IsADirectoryError:
        return ItemError("is a directory")
    except Exception as exc:  # network errors, permissions, bad protocols: one line for the user
        return ItemError(f"unreadable: {type(exc).__name__}: {first_line(exc, 200)}")


def mask_stem(path: str, taken: set[str]) -> str:
    """The file name of ``path`` without its extension, made unique among ``taken`` (then added to it)."""
    stem = gio.basename(path.rstrip("/")).rsplit(".", 1)[0] or "image"
    if stem in taken:
        stem = f"{stem}-{hashlib.sha1(path.encode('utf-8')).hexdigest()[:8]}"
    taken.add(stem)
    return stem


def write_mask(mask_dir: str, stem: str, mask_png: bytes, image: bytes) -> str:
    """``mask_dir/<stem>.mask.png`` and ``<stem>.overlay.png``; returns the mask's path."""
    import io

    import numpy as np
    from PIL import Image

    from gendet.eval.overlays import overlay

    mask_url = gio.join(mask_dir, f"{stem}.mask.png")
    gio.write_bytes_atomic(mask_url, mask_png)
    tinted = overlay(decode_image(image), np.asarray(Image.open(io.BytesIO(mask_png))) > 127)
    buf = io.BytesIO()
    tinted.save(buf, format="PNG")
    gio.write_bytes_atomic(gio.join(mask_dir, f"{stem}.overlay.png"), buf.getvalue())
    return mask_url


def iter_predictions(scorer: ImageScorer, inputs: Sequence[str], *, batch_size: int = 32,
                     progress: bool | None = None, mask_dir: str | None = None) -> Iterator[dict[str, Any]]:
    """One result dict per expanded input (``path`` first), in input order, batch by batch; with
    ``mask_dir`` (a GAMMA model) each scored image's mask and overlay are written there (module docstring)."""
    if batch_size < 1:
        raise GendetError(f"--batch-size {batch_size} must be >= 1")
    if mask_dir and not scorer.has_masks:
        raise GendetError(f"--mask-dir {mask_dir}: {NO_MASKS}")
    paths = expand_inputs(inputs)
    taken: set[str] = set()
    bar = progress_display(total=len(paths), desc="predict", unit="img", disable=progress is False)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        items = [read_item(p) for p in chunk]
        for path, item, result in zip(chunk, items, scorer.score_bytes(items, masks=bool(mask_dir))):
            png = result.pop("mask_png", None)
            if png is not None:
                result["mask"] = write_mask(mask_dir, mask_stem(path, taken), png, item)
            yield {"path": path, **result}
        bar.update(len(chunk))
    bar.close()


def predict(model: str | ImageScorer, inputs: Sequence[str], *, batch_size: int = 32,
            device: str = "cpu", mask_dir: str | None = None) -> list[dict[str, Any]]:
    """Score ``inputs`` (files, folders, URLs) with ``model`` (a URI or a loaded ImageScorer);
    ``mask_dir``: write each image's mask and overlay there (a GAMMA model)."""
    scorer = model if isinstance(model, ImageScorer) else load_scorer(model, device=device, masks=bool(mask_dir))
    return list(iter_predictions(scorer, inputs, batch_size=batch_size, progress=False, mask_dir=mask_dir))
