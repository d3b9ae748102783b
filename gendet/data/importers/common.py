"""What every importer shares: listing a tree once, checking files by magic bytes, and writing
planned samples into deterministic shards with a summary.

An importer only *plans*: from the sorted list of relative file paths under ROOT it builds
``Group``s (one shard prefix each: ``<subset>[-<split>]``) of ``Item``s (path, label, content_id,
extra json keys), raising a one-line GendetError for a wrong layout before anything is written.
``write_groups`` then reads each file (original bytes, never re-encoded), checks its type by its
magic bytes, and writes samples through ``gendet.data.shards.ShardWriter``. Same input, same shards, byte
for byte: the walk is sorted, real and fake files are interleaved in a fixed order, keys are derived
from paths.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.data.shards import Sample, ShardWriter, sanitize_key
from gendet.progress import progress

SUMMARY_PREFIX = "import_summary"
MAX_KEY = 90  # USTAR names hold 100 characters: key + "." + extension must fit
READ_CHUNK = 256  # files read concurrently per chunk (remote stores are latency bound)
EXAMPLES_PER_REASON = 5


@dataclass(frozen=True, slots=True)
class Item:
    """One file to import: ``rel`` is its path under ROOT, ``name`` the part of it that names the
    sample within its shard prefix (the sample key is made from it)."""

    rel: str
    name: str
    label: str
    content_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Group:
    """The files written under one shard prefix ``<subset>[-<split>][-<tag>]``."""

    subset: str
    split: str
    items: list[Item] = field(default_factory=list)
    tag: str = ""  # extra prefix part, e.g. the label of a folder import

    @property
    def prefix(self) -> str:
        return sanitize_key("-".join(p for p in (self.subset, self.split, self.tag) if p))


def image_ext(data: bytes) -> str | None:
    """``jpg``/``png``/``webp`` from the magic bytes; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def skip_reason(data: bytes) -> str:
    if not data:
        return "empty_file"
    if data[:6] in (b"GIF87a", b"GIF89a") or data[:2] == b"BM" or data[:4] in (b"II*\x00", b"MM\x00*"):
        return "unsupported_image_format"  # GIF/BMP/TIFF: shards hold jpg/png/webp, and we never re-encode
    return "not_an_image"


def list_tree(root: str) -> list[str]:
    """Sorted paths of every file under ``root``, relative to it; hidden files and folders
    (``.DS_Store``, ``.ipynb_checkpoints``) left out."""
    fs, path = gio.fs_and_path(root)
    if not fs.isdir(path):
        raise GendetError(f"{root}: not a directory; pass the dataset's root folder (local path or fsspec URL)")
    base = path.rstrip("/") + "/"
    rels = (p[len(base):] if p.startswith(base) else p for p in fs.find(path))
    return sorted(r for r in rels if not any(part.startswith(".") for part in r.split("/")))


def strip_ext(path: str) -> str:
    """``a/b/x.tar.png`` -> ``a/b/x.tar``: the last extension of the last component goes."""
    head, _, last = path.rpartition("/")
    base = last.rsplit(".", 1)[0] if "." in last[1:] else last
    return f"{head}/{base}" if head else base


def stem(rel: str) -> str:
    return strip_ext(rel).rsplit("/", 1)[-1]


def interleave(*lists: list[Item]) -> list[Item]:
    """Round-robin merge (fixed order), so every shard holds both labels."""
    merged = itertools.chain.from_iterable(itertools.zip_longest(*lists))
    return [item for item in merged if item is not None]


def _unique_key(item: Item, seen: set[str]) -> str:
    key = sanitize_key(strip_ext(item.name))
    digest = hashlib.sha1(item.rel.encode("utf-8")).hexdigest()[:10]
    if len(key) > MAX_KEY:
        key = f"{key[: MAX_KEY - 11]}_{digest}"
    if key in seen:  # e.g. "a b.png" and "a_b.jpg" sanitise alike: the full path disambiguates
        key = f"{key[: MAX_KEY - 11]}_{digest}"
    seen.add(key)
    return key


def layout_error(root: str, rels: list[str], dataset: str, layout: str, subset_markers: Iterable[str]) -> GendetError:
    """No file fits the layout: say what was expected and what ROOT holds, and spot the common
    mistake of pointing at one subset instead of the folder of subsets."""
    firsts = sorted({r.split("/")[0] for r in rels})[:8]
    hint = " (ROOT looks like one subset: pass its parent folder)" if set(firsts) & set(subset_markers) else ""
    return GendetError(f"{root}: no {dataset} images found; expected {layout}, found top-level entries "
                       f"{firsts or 'none'}{hint}")


def check_prefixes(root: str, groups: list[Group]) -> None:
    seen: dict[str, Group] = {}
    for g in groups:
        other = seen.setdefault(g.prefix, g)
        if other is not g:
            raise GendetError(f"{root}: subsets {other.subset!r} and {g.subset!r} give the same shard name "
                              f"{g.prefix!r}; rename one of the folders")


def _read_chunks(root: str, items: list[Item]) -> Iterator[tuple[Item, bytes | str]]:
    """(item, bytes) in order, read concurrently; a skip reason instead of bytes for a file that
    cannot be read (``unreadable``) or, locally, is a link to a place outside ``root``
    (``outside_root``: an import must not copy, say, ``~/.ssh`` into shards through a symlink)."""
    fs, path = gio.fs_and_path(root)
    base = path.rstrip("/")
    real_root = os.path.realpath(base) if gio.is_local(fs) else ""

    def read(item: Item) -> bytes | str:
        target = f"{base}/{item.rel}"
        if real_root and os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
            return "outside_root"
        try:
            return fs.cat_file(target)
        except OSError:  # permissions, a file deleted mid-import, a flaky remote: count it, go on
            return "unreadable"

    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, len(items), READ_CHUNK):
            chunk = items[start:start + READ_CHUNK]
            yield from zip(chunk, pool.map(read, chunk))


def clear_or_refuse(out: str, groups: list[Group], overwrite: bool) -> None:
    """Stale shards of an earlier, larger import would mix with the new ones: refuse, or delete
    them with ``--overwrite``."""
    for g in groups:
        old = gio.glob(out, f"{g.prefix}-*.tar")
        if old and not overwrite:
            raise GendetError(f"{out}: already holds shards {g.prefix}-*.tar; import into an empty folder or pass --overwrite")
        for url in old:
            fs, p = gio.fs_and_path(url)
            fs.rm(p)


def write_groups(root: str, out: str, groups: list[Group], *, source: str, shard_size: int,
                 overwrite: bool = False, skipped_in_plan: Iterable[tuple[str, str]] = (),
                 summary_name: str | None = None) -> dict[str, Any]:
    """Write every group's samples as shards under ``out``; return the summary and save it as
    ``OUT/import_summary-<summary_name or source>.json``."""
    if shard_size < 1:
        raise GendetError(f"--shard-size {shard_size}: must be at least 1 sample per shard")
    check_prefixes(root, groups)
    clear_or_refuse(out, groups, overwrite)
    counts: dict[str, Counter] = defaultdict(Counter)
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)

    def skip(reason: str, rel: str) -> None:
        skipped[reason] += 1
        if len(examples[reason]) < EXAMPLES_PER_REASON:
            examples[reason].append(rel)

    for reason, rel in skipped_in_plan:
        skip(reason, rel)
    shards: list[str] = []
    bar = progress(total=sum(len(g.items) for g in groups), desc=f"import {source}", unit="img")
    for g in groups:
        seen: set[str] = set()
        writer = ShardWriter(out, g.prefix, max_count=shard_size)
        for item, data in _read_chunks(root, g.items):
            bar.update()
            if isinstance(data, str):
                skip(data, item.rel)
                continue
            ext = image_ext(data)
            if ext is None:
                skip(skip_reason(data), item.rel)
                continue
            writer.write(Sample(key=_unique_key(item, seen), image=data, image_ext=ext, label=item.label,
                                subset=g.subset, content_id=item.content_id, split=g.split,
                                source=f"{source}:{item.rel}", extra=item.extra))
            counts[g.subset][item.label] += 1
        shards += [gio.basename(u) for u in writer.close()]
    bar.close()
    summary = {"source": source, "root": str(root), "out": str(out), "shard_size": shard_size,
               "written": sum(sum(c.values()) for c in counts.values()), "skipped": dict(sorted(skipped.items())),
               "skipped_examples": dict(sorted(examples.items())),
               "subsets": {s: {"real": c["real"], "fake": c["fake"]} for s, c in sorted(counts.items())},
               "shards": shards}
    gio.write_json_atomic(gio.join(out, f"{SUMMARY_PREFIX}-{sanitize_key(summary_name or source)}.json"), gio.redacted(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"wrote {summary['written']} images in {len(summary['shards'])} shards to {summary['out']}"]
    lines += [f"  {subset}: {c['real']} real, {c['fake']} fake" for subset, c in summary["subsets"].items()]
    if summary["skipped"]:
        lines.append("skipped: " + ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()))
    return "\n".join(lines)
