"""Reader: one shard URL -> column batches of preprocessed uint8 images, plus quarantine rows.

Every row carries ``shard`` (the shard stem), ``index`` (position of the sample in the tar) and
``reason`` (empty for a good sample, a quarantine reason otherwise). Quarantined rows keep a zero
image so every batch has one schema (Ray Data blocks must agree); the mapper skips them. The last
row of a shard has reason ``END`` and ``n_rows`` = how many rows the shard emitted before it, so a
consumer that sees rows out of order (Ray Data) knows when a shard is complete.

Bad data never raises: zero-byte, truncated, corrupt or non-image members, missing or invalid
json and decompression bombs each become a quarantine row with its reason. Only a shard that
cannot be read at all (after ``max_retries`` attempts) ends with an ``error`` on its end row.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from gendet import io as gio
from gendet.encoders import Preprocessor
from gendet.shards import IMAGE_EXTS, meta_problem, shard_stem

END = "__end__"
TEXT_COLUMNS = ("shard", "key", "label", "subset", "content_id", "split", "reason", "error")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class BadImage(Exception):
    """An image that cannot be used; ``reason`` is the quarantine reason."""

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


def decode_image(data: bytes | None) -> Image.Image:
    """Image bytes -> fully decoded RGB image, or ``BadImage`` naming why not.

    Images over PIL's ``Image.MAX_IMAGE_PIXELS`` are refused (PIL only warns below twice the
    limit; the warning is turned into the same ``decompression_bomb`` reason)."""
    if not data:
        raise BadImage("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError as exc:
        raise BadImage("not_an_image", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated_image" if "truncated" in str(exc) or isinstance(exc, EOFError) else "corrupt_image"
        raise BadImage(reason, str(exc)) from None
    return to_rgb(img)


class BrokenTar(tarfile.TarError):
    """The tar stops before its end-of-archive blocks (a cut-off copy, a failed upload)."""


def tar_members(data: bytes) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of each regular file, then a check that the archive really ended: tarfile
    takes a tar cut at a member boundary for a complete one, and its lost samples would vanish."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if info.isfile():
                f = tar.extractfile(info)
                yield info.name, (f.read() if f is not None else None)
        if any(data[tar.offset : tar.offset + 2 * tarfile.BLOCKSIZE]) or len(data) < tar.offset + 2 * tarfile.BLOCKSIZE:
            raise BrokenTar(f"no end-of-archive marker after byte {tar.offset}: the shard is cut off")


def split_member(name: str) -> tuple[str, str]:
    """WebDataset naming: ``dir/key.ext`` -> (``dir/key``, ``ext``); the key ends at the first
    dot of the file name."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext.lower()


def group_samples(members: Iterator[tuple[str, bytes | None]]) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {ext: bytes}) per sample; a sample's members are consecutive in a WebDataset tar."""
    key, parts = None, {}
    for name, data in members:
        k, ext = split_member(name)
        if k != key and key is not None:
            yield key, parts
            parts = {}
        key = k
        parts[ext] = data
    if key is not None:
        yield key, parts


def parse_sample(parts: dict[str, bytes | None]) -> tuple[dict[str, Any], bytes | None]:
    """(meta, image bytes) of one sample's members, or ``BadImage`` with the quarantine reason."""
    image_exts = [e for e in IMAGE_EXTS if e in parts]
    if not image_exts:
        raise BadImage("no_image")
    if "json" not in parts:
        raise BadImage("missing_json")
    try:
        meta = json.loads((parts["json"] or b"").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadImage("invalid_json") from None
    problem = meta_problem(meta)
    if problem:
        raise BadImage(problem)
    return meta, parts[image_exts[0]]


class ShardReader:
    """Reads shards for one encoder's preprocessing (and an optional degradation).

    ``read(url)`` yields column batches; calling the reader on a batch ``{"url": [...]}`` does the
    same for each URL, which is the form Ray Data's ``map_batches`` uses. Both are plain Python.
    """

    def __init__(self, preprocess: Preprocessor, *, degrade: Callable | None = None,
                 batch_size: int = 64, max_retries: int = 2):
        self.preprocess, self.degrade = preprocess, degrade
        self.batch_size, self.max_retries = batch_size, max_retries
        self._blank: np.ndarray | None = None

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        for url in batch["url"]:
            yield from self.read(str(url))

    def blank(self) -> np.ndarray:
        """The zero image that quarantined rows carry (same shape as a real one)."""
        if self._blank is None:
            self._blank = np.zeros_like(self.preprocess.pixels(Image.new("RGB", (64, 64))))
        return self._blank

    def read(self, url: str) -> Iterator[dict[str, np.ndarray]]:
        stem, rows, started = shard_stem(url), [], time.perf_counter()
        data, error = self._fetch(url)
        n_rows = 0
        for row in self._rows(stem, data) if data is not None else ():
            rows.append(row)
            n_rows += 1
            if len(rows) >= self.batch_size:
                yield self._columns(rows)
                rows = []
        end = self._row(stem, "", n_rows, reason=END)
        end.update(n_rows=n_rows, error=error, read_seconds=time.perf_counter() - started)
        rows.append(end)
        yield self._columns(rows)

    def _fetch(self, url: str) -> tuple[bytes | None, str]:
        """The shard's bytes, retried; (None, error message) when it stays unreadable."""
        for attempt in range(self.max_retries + 1):
            try:
                return gio.read_bytes(url), ""
            except Exception as exc:  # noqa: BLE001 - any I/O failure: retry, then report the shard
                error = f"{url}: cannot read shard ({type(exc).__name__}: {exc})"
                if attempt < self.max_retries:
                    time.sleep(min(2.0**attempt * 0.5, 10.0))
        return None, error

    def _rows(self, stem: str, data: bytes) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        index = 0
        try:
            for key, parts in group_samples(tar_members(data)):
                row = self._sample_row(stem, key, index, parts, duplicate=key in seen)
                seen.add(key)
                index += 1
                yield row
        except (tarfile.TarError, EOFError, OSError) as exc:
            # The tar itself breaks off: samples before the break are kept, the rest is one row.
            yield self._row(stem, "", index, reason="broken_tar", error=str(exc))

    def _sample_row(self, stem: str, key: str, index: int, parts: dict, duplicate: bool) -> dict[str, Any]:
        if duplicate:
            return self._row(stem, key, index, reason="duplicate_key")
        try:
            meta, image_bytes = parse_sample(parts)
            img = decode_image(image_bytes)
        except BadImage as bad:
            return self._row(stem, key, index, reason=bad.reason)
        try:
            if self.degrade is not None:
                img = to_rgb(self.degrade(img))
            image = self.preprocess.pixels(img)  # uint8: the mapper finishes it on the encoder's device
        except Exception as exc:  # noqa: BLE001 - a sample the transforms choke on is data, not a crash
            return self._row(stem, key, index, reason="preprocess_error", error=f"{type(exc).__name__}: {exc}")
        row = self._row(stem, key, index, meta=meta)
        row["image"] = image
        return row

    def _row(self, stem: str, key: str, index: int, *, reason: str = "", meta: dict | None = None,
             error: str = "") -> dict[str, Any]:
        meta = meta or {}
        return {"shard": stem, "key": key, "index": index, "reason": reason, "error": error,
                "label": meta.get("label", ""), "subset": meta.get("subset", ""),
                "content_id": str(meta.get("content_id") or key), "split": meta.get("split") or "",
                "n_rows": 0, "read_seconds": 0.0}

    def _columns(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        cols: dict[str, np.ndarray] = {c: np.array([r[c] for r in rows], dtype=object) for c in TEXT_COLUMNS}
        cols["index"] = np.array([r["index"] for r in rows], dtype=np.int64)
        cols["n_rows"] = np.array([r["n_rows"] for r in rows], dtype=np.int64)
        cols["read_seconds"] = np.array([r["read_seconds"] for r in rows], dtype=np.float64)
        cols["image"] = np.stack([r.get("image", self.blank()) for r in rows])
        return cols
