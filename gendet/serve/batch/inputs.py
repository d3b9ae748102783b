"""What ``gendet score`` reads: a source listed as items, and one partition read into pixels.

A source is one of (``source_kind``; ``--format`` overrides the guess):

* ``shards``: WebDataset shards (a folder of ``.tar``, one ``.tar``, a glob or brace pattern), as
  ``gendet extract`` reads them; labels are optional. One partition per shard, named by its stem;
  an item's ``id`` is the sample's key, its ``path`` the shard's URL.
* ``images``: a folder of image files (searched recursively, by extension, as ``gendet predict``
  does), a glob, or one file; ``id`` is the path under the folder (the full path for a glob or a
  file), ``path`` where it is read.
* ``manifest``: a Parquet, CSV or JSON Lines file with a column ``path`` (or ``url``) of image paths
  or URLs, relative ones under the manifest's folder, and optionally ``id``, the user's own ids
  (``path`` when absent). Ids must be unique: they key the output and the incremental reruns.

``read_part`` turns one partition into the encoder's uint8 pixels, decoded exactly as ``gendet
extract`` decodes (the detector's features); an item that cannot be read or decoded is a row with
its ``error`` (never dropped), a blank image in its pixels.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.data.decode import BadSample
from gendet.serve.predict import IMAGE_SUFFIXES, expand_inputs, read_item
from gendet.serve.scorer import ItemError, decode_image

KINDS = ("auto", "shards", "images", "manifest")
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl")
PATH_COLUMNS = ("path", "url")


@dataclass(frozen=True)
class Part:
    """One input partition: a shard (``shard``), or items (``ids`` read from ``urls``)."""

    name: str
    shard: str = ""
    ids: tuple[str, ...] = ()
    urls: tuple[str, ...] = field(default=(), repr=False)

    def item(self) -> dict[str, Any]:
        """The partition as one row of plain values (what a Ray Data task receives)."""
        return {"name": self.name, "shard": self.shard, "ids": list(self.ids), "urls": list(self.urls)}


def source_kind(source: str, kind: str = "auto") -> str:
    """``shards``, ``images`` or ``manifest`` for ``source`` (the module docstring's rule)."""
    if kind != "auto":
        return kind
    low = source.lower().rstrip("/")
    if low.endswith(MANIFEST_SUFFIXES):
        return "manifest"
    if low.endswith((".tar", ".tar}")) or ".tar" in low.rsplit("/", 1)[-1]:
        return "shards"
    if any(ch in source for ch in "*?[{"):
        return "images"
    try:
        fs, path = gio.fs_and_path(source)
        if fs.isdir(path):
            return "shards" if gio.glob(source, "**/*.tar") or gio.glob(source, "*.tar") else "images"
    except Exception as exc:  # an unknown protocol, missing credentials
        raise GendetError(f"{source}: cannot list it ({first_line(exc, 200)}); check the URL and credentials") from None
    return "images"


def list_images(source: str) -> tuple[list[str], list[str]]:
    """(ids, urls) of the image files of a folder, a glob or one file, sorted by id."""
    fs, path = gio.fs_and_path(source)
    if any(ch in source for ch in "*?["):
        found = sorted(p for p in fs.glob(path) if p.lower().endswith(IMAGE_SUFFIXES))
        urls = [p if gio.is_local(fs) else fs.unstrip_protocol(p) for p in found]
        return urls, urls
    if fs.isdir(path):
        urls = expand_inputs([source])
        return [posixpath.relpath(gio.fs_and_path(u)[1], path) for u in urls], urls
    if not fs.exists(path):
        raise GendetError(f"{source}: not found; pass a folder of images, a glob, shards or a manifest "
                          "(.parquet/.csv/.jsonl)")
    return [source], [source]


def read_manifest(source: str) -> tuple[list[str], list[str]]:
    """(ids, urls) of a manifest's rows (module docstring); a one-line error naming the fix otherwise."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    fs, path = gio.fs_and_path(source)
    if not fs.exists(path):
        raise GendetError(f"{source}: manifest not found")
    try:
        with fs.open(path, "rb") as f:
            low = source.lower()
            table = (pq.read_table(f) if low.endswith(".parquet") else pcsv.read_csv(f) if low.endswith(".csv")
                     else pjson.read_json(f))
    except Exception as exc:  # pyarrow's parse errors
        raise GendetError(f"{source}: not a readable manifest ({first_line(exc, 200)}); write Parquet, CSV with a header, "
                          "or JSON Lines") from None
    column = next((c for c in PATH_COLUMNS if c in table.column_names), None)
    if column is None:
        raise GendetError(f"{source}: the manifest has columns {table.column_names}; give a column 'path' (or 'url') of "
                          "image paths or URLs, and optionally 'id'")
    paths = table[column].to_pylist()
    ids = table["id"].to_pylist() if "id" in table.column_names else list(paths)
    if any(p is None or not str(p) for p in paths) or any(i is None for i in ids):
        raise GendetError(f"{source}: empty '{column}' or 'id' cells; every row needs an image path and an id")
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise GendetError(f"{source}: id {dup!r} appears more than once; ids key the output and must be unique")
    base = posixpath.dirname(source.rstrip("/"))
    urls = [str(p) if "://" in str(p) or str(p).startswith("/") else gio.join(base, str(p)) for p in paths]
    return ids, urls


def list_source(source: str, kind: str) -> tuple[str, list[str], list[str]]:
    """(kind, ids, urls): for ``shards`` the shard URLs (ids = their stems); else the items."""
    from gendet.data.shards import list_shards, shard_stem

    kind = source_kind(source, kind)
    if kind == "shards":
        shards = list_shards(source)
        return kind, [shard_stem(u) for u in shards], shards
    ids, urls = read_manifest(source) if kind == "manifest" else list_images(source)
    if not ids:
        raise GendetError(f"{source}: no image files found ({', '.join(IMAGE_SUFFIXES)}); point at a folder of images, "
                          "shards, or a manifest")
    return kind, ids, urls


def item_parts(ids: list[str], urls: list[str], rows_per_part: int) -> list[Part]:
    """Items cut into partitions of ``rows_per_part`` in id order, each named by a digest of its
    ids: the same items always make the same partition (a rerun after a crash rewrites it)."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    parts = []
    for start in range(0, len(order), rows_per_part):
        chunk = order[start:start + rows_per_part]
        chunk_ids = tuple(ids[i] for i in chunk)
        digest = hashlib.sha1("\n".join(chunk_ids).encode("utf-8")).hexdigest()[:16]
        parts.append(Part(name=f"part-{digest}", ids=chunk_ids, urls=tuple(urls[i] for i in chunk)))
    return parts


# --- reading one partition (a CPU task) ---------------------------------------------------------

def _shard_items(url: str) -> tuple[list[tuple[str, str, bytes | Exception]], str]:
    """([(id, label, image bytes or the reason it has none)], the shard's own error)."""
    from gendet.data.shards import IMAGE_EXTS, group_samples, iter_tar_members, load_json

    items: list[tuple[str, str, bytes | Exception]] = []
    try:
        data = gio.read_bytes(url)
    except Exception as exc:  # noqa: BLE001 - any I/O failure is the shard's error row
        return items, f"unreadable_shard: {type(exc).__name__}: {first_line(exc, 200)}"
    try:
        for key, parts in group_samples(iter_tar_members(data)):
            label = ""
            if "json" in parts:
                try:
                    meta = load_json(parts["json"])
                    label = str(meta.get("label", "")) if isinstance(meta, dict) else ""
                except BadSample:
                    pass
            ext = next((e for e in IMAGE_EXTS if e in parts), None)
            image = parts[ext] if ext else None
            items.append((key, label, image if image else ItemError("no_image: the sample has no image member")))
    except Exception as exc:  # noqa: BLE001 - tarfile's errors: the samples read so far stand
        return items, f"incomplete_shard: {first_line(exc, 200)}"
    return items, "" if items else "empty_shard: the shard holds no samples"


class PartReader:
    """Reads partitions for one encoder's preprocessing: ``reader(batch)`` (a batch of ``Part.item``
    rows, Ray Data's ``map_batches`` form) yields one column batch per partition."""

    def __init__(self, encoder: str, max_pixels: int | None = None):
        self.encoder, self.max_pixels = encoder, max_pixels
        self._preprocess = None

    @property
    def preprocess(self) -> Any:
        if self._preprocess is None:
            from gendet.encoders.registry import load_preprocess

            self._preprocess = load_preprocess(self.encoder)
        return self._preprocess

    def __call__(self, batch: dict[str, Any]) -> Any:
        for i in range(len(batch["name"])):
            yield self.read({k: batch[k][i] for k in ("name", "shard", "ids", "urls")})

    def read(self, part: dict[str, Any]) -> dict[str, np.ndarray]:
        """One partition's rows: ``part``, ``index``, ``n_in_part``, ``id``, ``path``, ``label``,
        ``error`` (the reason, or empty), ``width``/``height`` and the encoder ``pixels``."""
        if part["shard"]:
            found, shard_error = _shard_items(str(part["shard"]))
            ids = [i for i, _, _ in found] + ([f"{part['name']}/"] if shard_error else [])
            labels = [label for _, label, _ in found] + ([""] if shard_error else [])
            data = [d for _, _, d in found] + ([ItemError(shard_error)] if shard_error else [])
            paths = [str(part["shard"])] * len(ids)
        else:
            ids, paths = [str(i) for i in part["ids"]], [str(u) for u in part["urls"]]
            labels, data = [""] * len(ids), [read_item(u) for u in paths]
        pixels, errors, sizes = [], [], []
        for item in data:
            try:
                if isinstance(item, Exception):
                    raise ItemError(str(item))
                image = decode_image(item, self.max_pixels)
                pixels.append(self.preprocess.pixels(image))
                errors.append("")
                sizes.append(image.size)
            except ItemError as exc:
                pixels.append(None)
                errors.append(str(exc) or "error")
                sizes.append((0, 0))
            except Exception as exc:  # noqa: BLE001 - an image the transforms choke on fails alone
                pixels.append(None)
                errors.append(f"preprocess_error: {type(exc).__name__}: {first_line(exc, 200)}")
                sizes.append((0, 0))
        blank = self.blank(next((p for p in pixels if p is not None), None))
        n = len(ids)
        return {"part": np.array([part["name"]] * n, dtype=object), "index": np.arange(n, dtype=np.int64),
                "n_in_part": np.full(n, n, dtype=np.int64), "id": np.array(ids, dtype=object),
                "path": np.array([gio.redact(p) for p in paths], dtype=object), "label": np.array(labels, dtype=object),
                "error": np.array(errors, dtype=object), "width": np.array([s[0] for s in sizes], dtype=np.int64),
                "height": np.array([s[1] for s in sizes], dtype=np.int64),
                "pixels": np.stack([blank if p is None else p for p in pixels]) if n else np.zeros((0, *blank.shape), np.uint8)}

    def blank(self, like: np.ndarray | None) -> np.ndarray:
        """The zero image an error row carries (the shape of a real one)."""
        if like is not None:
            return np.zeros_like(like)
        from PIL import Image

        return np.zeros_like(self.preprocess.pixels(Image.new("RGB", (64, 64))))
