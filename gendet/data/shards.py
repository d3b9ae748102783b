"""The WebDataset sample format (CONTRACTS.md) and deterministic shard writing.

A sample is one image (``.jpg``/``.jpeg``/``.png``/``.webp``, original bytes, never re-encoded
here) and one ``.json`` with ``label`` and ``subset`` (required), ``content_id``, ``split`` and
``source``. Shards are written deterministically: the same samples in the same order give
byte-identical tar files (fixed mtime, owner and mode), so importers and the zoo are reproducible
and reruns can be compared by hash.

Writing uses webdataset's ``TarWriter``; ``ShardWriter`` here (not webdataset's) rolls shards over
and writes each one atomically to any fsspec URL, which webdataset's writes straight to the final
name. Reading does not use webdataset's tar iterators: extraction must keep every sample before a
break, turn a duplicate key into a quarantine row rather than an exception, and notice a tar cut
at a member boundary (``BrokenTar``), which tarfile and webdataset take for a complete archive.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import braceexpand

from gendet import GendetError
from gendet import io as gio
from gendet.data.decode import BadSample

LABELS = ("real", "fake")
SPLITS = ("train", "val", "test")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIX = ".tar"
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


def meta_problem(meta: Any) -> str | None:
    """Why a sample's json is unusable (a quarantine reason), or None when it is valid."""
    if not isinstance(meta, dict):
        return "json_not_object"
    label = meta.get("label")
    if label is None:
        return "missing_label"
    if label not in LABELS:
        return "unknown_label"
    subset = meta.get("subset")
    if not isinstance(subset, str) or not subset:
        return "missing_subset"
    split = meta.get("split")
    if split not in (None, "", *SPLITS):
        return "unknown_split"
    return None


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample to write: ``key`` unique within its shard, image bytes kept as given."""

    key: str
    image: bytes
    image_ext: str
    label: str
    subset: str
    content_id: str = ""
    split: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    """More members of the sample by extension, e.g. ``{"mask.png": ...}`` (CONTRACTS.md)."""

    def meta(self) -> dict[str, Any]:
        meta = {"label": self.label, "subset": self.subset, "content_id": self.content_id or self.key,
                "split": self.split, "source": self.source}
        meta.update(self.extra)
        return meta


def sanitize_key(text: str) -> str:
    """A WebDataset key: no dots (they separate key from extension), no slashes."""
    key = re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_")
    return key or "sample"


def key_problem(key: str) -> str:
    """Why a tar member's key is unsafe to keep ('' when it is fine): an absolute path or a ``..``
    part would name a place outside any folder the key is later joined to."""
    if key.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", key):
        return "absolute path"
    if ".." in re.split(r"[/\\]", key):
        return "'..' in the path"
    return ""


def tar_bytes(samples: Iterable[Sample]) -> bytes:
    """One shard's bytes, written by webdataset's ``TarWriter`` with fixed mtime, owner and mode
    (same samples, same bytes); each sample's members are ``<key>.<ext>`` and ``<key>.json``."""
    from webdataset.writer import TarWriter  # webdataset imports torch: only when writing

    buf = io.BytesIO()
    seen: set[str] = set()
    with TarWriter(buf, encoder=False, mtime=0, user="gendet", group="gendet", mode=0o444) as tar:
        for s in samples:
            if not _KEY_OK.match(s.key):
                raise ValueError(f"sample key {s.key!r} must match {_KEY_OK.pattern}; use sanitize_key()")
            if s.key in seen:
                raise ValueError(f"duplicate sample key {s.key!r} in one shard")
            if s.image_ext not in IMAGE_EXTS:
                raise ValueError(f"sample {s.key!r}: image extension {s.image_ext!r} not in {IMAGE_EXTS}")
            problem = meta_problem(s.meta())
            if problem:
                raise ValueError(f"sample {s.key!r}: invalid meta ({problem})")
            clash = set(s.files) & {*IMAGE_EXTS, "json"}
            if clash or not all(_KEY_OK.match(ext.replace(".", "_")) for ext in s.files):
                raise ValueError(f"sample {s.key!r}: extra member names {sorted(s.files)} must not be an image "
                                 "extension or json, and use letters, digits, _, - and dots")
            seen.add(s.key)
            tar.write({"__key__": s.key, s.image_ext: s.image, **s.files,
                       "json": json.dumps(s.meta(), sort_keys=True).encode("utf-8")})
    return buf.getvalue()


class ShardWriter:
    """Writes numbered shards ``<prefix>-000000.tar`` … into ``out_url``, rolling over at
    ``max_count`` samples or ``max_bytes`` of image data, each shard written atomically."""

    def __init__(self, out_url: str, prefix: str, max_count: int = 1000, max_bytes: int = 256 << 20):
        if max_count < 1:
            raise GendetError(f"shard size {max_count} must be >= 1 sample")
        self.out_url, self.prefix = str(out_url), sanitize_key(prefix)
        self.max_count, self.max_bytes = max_count, max_bytes
        self.written: list[str] = []
        self.count = 0
        self._pending: list[Sample] = []
        self._pending_bytes = 0
        gio.makedirs(self.out_url)

    def write(self, sample: Sample) -> None:
        self._pending.append(sample)
        self._pending_bytes += len(sample.image)
        self.count += 1
        if len(self._pending) >= self.max_count or self._pending_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        url = gio.join(self.out_url, f"{self.prefix}-{len(self.written):06d}{SHARD_SUFFIX}")
        gio.write_bytes_atomic(url, tar_bytes(self._pending))
        self.written.append(url)
        self._pending, self._pending_bytes = [], 0

    def close(self) -> list[str]:
        self.flush()
        return self.written

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()


def list_shards(spec: str) -> list[str]:
    """Shard URLs from a directory (``*.tar`` in it), one ``.tar`` URL, a brace pattern
    (``shards/train-{000000..000009}.tar``) or a glob. A clear error names what was given
    when nothing is found, before any work starts."""
    spec = str(spec)
    urls: list[str] = []
    for one in braceexpand.braceexpand(spec):
        if any(ch in one for ch in "*?["):
            fs, path = gio.fs_and_path(one)
            urls.extend(h if gio.is_local(fs) else fs.unstrip_protocol(h) for h in sorted(fs.glob(path)))
        elif one.endswith(SHARD_SUFFIX):
            if not gio.exists(one):
                raise GendetError(f"{one}: shard not found; check the URL (and credentials for remote stores)")
            urls.append(one)
        else:
            if not gio.exists(one):
                raise GendetError(f"{one}: shard directory not found; pass a directory of .tar shards, a .tar URL or a pattern")
            urls.extend(gio.glob(one, f"**/*{SHARD_SUFFIX}") or gio.glob(one, f"*{SHARD_SUFFIX}"))
    urls = sorted(dict.fromkeys(urls))
    stems: dict[str, str] = {}
    for url in urls:
        other = stems.setdefault(shard_stem(url), url)
        if other != url:  # per-shard outputs are named by stem, so stems must be unique
            raise GendetError(f"{url}: same shard name as {other}; give shards unique names (importers prefix them with the "
                              "subset)")
    if not urls:
        raise GendetError(f"{spec}: no .tar shards found; point at a directory of WebDataset shards (make them with `gendet "
                          "import`)")
    return urls


def shard_stem(url: str) -> str:
    """``s3://b/x/train-000003.tar`` -> ``train-000003``: the name every per-shard output takes."""
    name = gio.basename(url)
    return name[: -len(SHARD_SUFFIX)] if name.endswith(SHARD_SUFFIX) else name


# --- reading: one tar iteration for every reader (extraction, the demo, tests) ---

class BrokenTar(tarfile.TarError):
    """The tar stops before its end-of-archive blocks (a cut-off copy, a failed upload)."""


def iter_tar_members(data: bytes) -> Iterator[tuple[str, bytes | None]]:
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
    """WebDataset naming (webdataset's own ``base_plus_ext``): ``dir/key.ext`` -> (``dir/key``,
    ``ext``), the key ending at the first dot of the file name; a name without one is all key."""
    from webdataset.tariterators import base_plus_ext  # lazy: webdataset imports torch

    key, ext = base_plus_ext(name)
    return (name, "") if key is None else (key, ext.lower())


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


MAX_JSON_BYTES = 1 << 20  # a sample's json: labels and a few fields, never a megabyte
MAX_JSON_DEPTH = 32


def load_json(data: bytes | None) -> Any:
    """A sample's json, bounded (``gendet.io.loads_json``: at most ``MAX_JSON_BYTES``, ``MAX_JSON_DEPTH``
    deep, numbers of at most 40 characters, no NaN or Infinity); ``BadSample("invalid_json")`` naming
    what is wrong otherwise."""
    try:
        return gio.loads_json(data or b"", max_bytes=MAX_JSON_BYTES, max_depth=MAX_JSON_DEPTH)
    except ValueError as exc:
        raise BadSample("invalid_json", str(exc).splitlines()[0][:200]) from None


def parse_sample(parts: dict[str, bytes | None]) -> tuple[dict[str, Any], bytes | None]:
    """(meta, image bytes) of one sample's members, or ``BadSample`` with the quarantine reason."""
    image_exts = [e for e in IMAGE_EXTS if e in parts]
    if not image_exts:
        raise BadSample("no_image")
    if "json" not in parts:
        raise BadSample("missing_json")
    meta = load_json(parts["json"])
    problem = meta_problem(meta)
    if problem:
        raise BadSample(problem)
    return meta, parts[image_exts[0]]


def usable_sample_parts(url: str) -> Iterator[tuple[str, dict[str, Any], bytes, dict[str, bytes]]]:
    """(key, meta, image bytes, every member by extension, e.g. ``mask.png``) of every usable sample
    of one shard; broken ones are skipped (extraction is where they are quarantined and counted)."""
    for key, parts in group_samples(iter_tar_members(gio.read_bytes(url))):
        if key_problem(key):
            continue
        try:
            meta, image = parse_sample(parts)
        except BadSample:
            continue
        if image:
            yield key, meta, image, parts


def usable_samples(url: str) -> Iterator[tuple[str, dict[str, Any], bytes, str]]:
    """(key, meta, image bytes, image extension) of every usable sample of one shard."""
    for key, meta, image, parts in usable_sample_parts(url):
        yield key, meta, image, next(e for e in IMAGE_EXTS if e in parts)


def export_samples(shard_urls: Iterable[str], folder: str, *, split: str = "test", per_label: int = 3) -> list[str]:
    """Up to ``per_label`` real and fake images of ``split`` from shards, written as files
    ``<folder>/<label>-<key>.<ext>`` (what a user would score with ``gendet predict``); their paths."""
    paths, taken = [], {label: 0 for label in LABELS}
    for url in shard_urls:
        for key, meta, image, ext in usable_samples(url):
            if meta.get("split") == split and taken[meta["label"]] < per_label:
                path = gio.join(folder, f"{meta['label']}-{sanitize_key(key)}.{ext}")
                gio.write_bytes_atomic(path, image)
                paths.append(path)
                taken[meta["label"]] += 1
    return sorted(paths)
