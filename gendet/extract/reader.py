"""Reader: one shard URL -> column batches of preprocessed uint8 images, plus quarantine rows.

Every row carries ``shard`` (the shard stem), ``index`` (position of the sample in the tar) and
``reason`` (empty for a good sample, a quarantine reason otherwise). Quarantined rows keep a zero
image so every batch has one schema (Ray Data blocks must agree); the mapper skips them. The last
row of a shard has reason ``END`` and ``n_rows`` = how many rows the shard emitted before it, so a
consumer that sees rows out of order (Ray Data) knows when a shard is complete.

Bad samples never raise: zero-byte, truncated, corrupt or non-image members, images of a format
not allowed or over the pixel cap, missing or invalid json (bounded: size, depth, number length),
unsafe member names and decompression bombs each become a quarantine row with its reason and, in
``error``, what was wrong; anything else a sample raises is ``corrupt_sample``.
A shard that is not a whole tar (unreadable after ``max_retries`` attempts, empty, cut off, or
changed while it was read) ends with an ``error`` on its end row: the writer then records it as
failed, never as done, so a rerun reads it again (an upload still in progress is not lost).
The end row also carries ``source``, the shard's size, version (ETag/mtime) and sha256 as it was
read, which the done marker keeps so that a shard replaced later is redone (by size and version on
every run; by content with ``--mode verify``).

With ``token_grid`` (``gendet extract --tokens``), every row also carries ``token_mask`` (the
sample's ``mask.png`` through the preprocessing geometry, per token of the stored grid), and the
json's ``has_mask``, ``manipulation``, ``family`` and ``generated_fraction``
(``gendet.extract.tokens``); a mask that does not decode or is not the image's size is quarantined
as ``bad_mask``. Without it, the rows are exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from gendet import io as gio
from gendet.data.decode import BadSample, decode_image, to_rgb
from gendet.data.manipulations import MASK_MEMBER, decode_mask
from gendet.data.shards import group_samples, iter_tar_members, key_problem, parse_sample, shard_stem
from gendet.encoders.base import Preprocessor
from gendet.extract.tokens import mask_fractions, sample_token_fields, token_columns
from gendet.extract.writer import END

TEXT_COLUMNS = ("shard", "key", "label", "subset", "content_id", "split", "reason", "error", "source")


class ShardReader:
    """Reads shards for one encoder's preprocessing (and an optional degradation).

    ``read(url)`` yields column batches; calling the reader on a batch ``{"url": [...]}`` does the
    same for each URL, which is the form Ray Data's ``map_batches`` uses. Both are plain Python.
    """

    def __init__(self, preprocess: Preprocessor, *, degrade: Callable | None = None,
                 batch_size: int = 64, max_retries: int = 2, token_grid: tuple[int, int] | None = None):
        self.preprocess, self.degrade = preprocess, degrade
        self.batch_size, self.max_retries = batch_size, max_retries
        self.token_grid = tuple(token_grid) if token_grid and token_grid[0] else None
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
        data, error, source = self._fetch(url)
        n_rows, broken = 0, [error] if error else []
        for row in self._rows(stem, url, data, broken) if data is not None else ():
            rows.append(row)
            n_rows += 1
            if len(rows) >= self.batch_size:
                yield self._columns(rows)
                rows = []
        end = self._row(stem, "", n_rows, reason=END)
        end.update(n_rows=n_rows, error=broken[0] if broken else "", read_seconds=time.perf_counter() - started,
                   source=json.dumps(source, sort_keys=True))
        rows.append(end)
        yield self._columns(rows)

    def _fetch(self, url: str) -> tuple[bytes | None, str, dict]:
        """(bytes, "", fingerprint) of the shard, retried; (None, error message, {}) when it stays
        unreadable. The fingerprint is taken before the read; a size that differs from the bytes
        read means the shard changed meanwhile (still being written)."""
        for attempt in range(self.max_retries + 1):
            try:
                fs, path = gio.fs_and_path(url)
                source = gio.fingerprint(fs.info(path))
                data = gio.read_bytes(url)
                if len(data) != source["size"]:
                    return None, (f"{url}: the shard changed while it was read ({source['size']} -> {len(data)} bytes); "
                                  "run again once it is complete"), {}
                # its content too: `--mode verify` finds a shard replaced at the same size and mtime
                return data, "", {**source, "sha256": hashlib.sha256(data).hexdigest()}
            except Exception as exc:  # noqa: BLE001 - any I/O failure: retry, then report the shard
                error = f"{url}: cannot read shard ({type(exc).__name__}: {exc})"
                if attempt < self.max_retries:
                    time.sleep(min(2.0**attempt * 0.5, 10.0))
        return None, error, {}

    def _rows(self, stem: str, url: str, data: bytes, broken: list[str]) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        index = 0
        try:
            for key, parts in group_samples(iter_tar_members(data)):
                row = self._sample_row(stem, key, index, parts, duplicate=key in seen)
                seen.add(key)
                index += 1
                yield row
        except Exception as exc:  # noqa: BLE001 - tarfile's errors, and whatever a hostile member raises
            # Not a whole tar (empty, cut off, a failed upload): the shard fails and gets no done
            # marker, so the rerun after the complete copy lands reads it (a quarantine row here
            # would mark the cut-off shard done and lose its missing samples for good).
            broken.append(f"{url}: not a complete tar ({exc}); it is not marked done: run again once the shard "
                          "is complete")

    def _sample_row(self, stem: str, key: str, index: int, parts: dict, duplicate: bool) -> dict[str, Any]:
        if duplicate:
            return self._row(stem, key, index, reason="duplicate_key")
        if key_problem(key):  # '../x' or '/etc/x' as a key would escape any folder it is written into
            return self._row(stem, key, index, reason="unsafe_key")
        try:
            meta, image_bytes = parse_sample(parts)
            img = decode_image(image_bytes)
        except BadSample as bad:
            return self._row(stem, key, index, reason=bad.reason, error=str(bad)[:300])
        except Exception as exc:  # noqa: BLE001 - whatever else a hostile sample raises: this sample, not the run
            return self._row(stem, key, index, reason="corrupt_sample", error=f"{type(exc).__name__}: {exc}"[:300])
        tokens: dict[str, Any] = {}
        if self.token_grid:
            tokens = self._token_fields(parts, meta, img.size)
            if "reason" in tokens:
                return self._row(stem, key, index, reason=tokens["reason"], error=tokens.get("error", ""))
        try:
            if self.degrade is not None:
                img = to_rgb(self.degrade(img))
            image = self.preprocess.pixels(img)  # uint8: the mapper finishes it on the encoder's device
            if "mask" in tokens:  # a degradation that resized the image resizes its mask alike
                mask = tokens.pop("mask")
                if img.size != mask.shape[::-1]:
                    mask = np.asarray(Image.fromarray(mask * 255).resize(img.size, Image.Resampling.BILINEAR)) / 255.0
                tokens["token_mask"] = mask_fractions(self.preprocess, mask, self.token_grid)
        except Exception as exc:  # noqa: BLE001 - a sample the transforms choke on is data, not a crash
            return self._row(stem, key, index, reason="preprocess_error", error=f"{type(exc).__name__}: {exc}")
        row = self._row(stem, key, index, meta=meta)
        row.update(tokens, image=image)
        return row

    def _token_fields(self, parts: dict, meta: dict, size: tuple[int, int]) -> dict[str, Any]:
        """The token fields of a good sample, with its decoded ``mask`` (uint8 [H, W]) when it has
        one; {"reason": ...} when its mask or its json's manipulation fields are unusable."""
        data = parts.get(MASK_MEMBER)
        try:
            fields = sample_token_fields(meta, has_mask=data is not None)
        except (TypeError, ValueError) as exc:
            return {"reason": "invalid_json", "error": f"generated_fraction: {exc}"}
        if data is None:  # a whole-image fake is all manipulated, a real none of it
            return {**fields, "token_mask": np.full(self._cells(), float(meta.get("label") == "fake"), np.float32)}
        try:
            mask = decode_mask(data)
        except Exception as exc:  # noqa: BLE001 - any undecodable mask is a bad sample
            return {"reason": "bad_mask", "error": f"{MASK_MEMBER}: {type(exc).__name__}: {exc}"}
        if mask.shape[::-1] != tuple(size):
            return {"reason": "bad_mask", "error": f"{MASK_MEMBER} is {mask.shape[1]}x{mask.shape[0]}, the image "
                                                   f"{size[0]}x{size[1]}"}
        return {**fields, "mask": mask}

    def _cells(self) -> int:
        return self.token_grid[0] * self.token_grid[1] if self.token_grid else 0

    def _row(self, stem: str, key: str, index: int, *, reason: str = "", meta: dict | None = None,
             error: str = "") -> dict[str, Any]:
        meta = meta or {}
        return {"shard": stem, "key": key, "index": index, "reason": reason, "error": error,
                "label": meta.get("label", ""), "subset": meta.get("subset", ""),
                "content_id": str(meta.get("content_id") or key), "split": meta.get("split") or "",
                "n_rows": 0, "read_seconds": 0.0, "source": ""}

    def _columns(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        cols: dict[str, np.ndarray] = {c: np.array([r[c] for r in rows], dtype=object) for c in TEXT_COLUMNS}
        cols["index"] = np.array([r["index"] for r in rows], dtype=np.int64)
        cols["n_rows"] = np.array([r["n_rows"] for r in rows], dtype=np.int64)
        cols["read_seconds"] = np.array([r["read_seconds"] for r in rows], dtype=np.float64)
        cols["image"] = np.stack([r.get("image", self.blank()) for r in rows])
        if self.token_grid:
            cols.update(token_columns(rows, self._cells()))
        return cols
