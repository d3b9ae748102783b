"""Per-variant bookkeeping: which shards are done (their stats file exists), which to do, and the
``manifest.json`` rebuilt from the stats files (img2dataset's stats-as-done-marker).

The stats file of a shard is written last, after its Parquet and quarantine files, and removed
first when a shard is redone; so "stats exists" means "this shard's outputs are complete", and a
job killed at any moment resumes by redoing exactly the shards without one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.data.shards import shard_stem
from gendet.features.store import (
    MANIFEST,
    PARQUET_SUFFIX,
    QUARANTINE_SUFFIX,
    STATS_SUFFIX,
    damaged_shards,
    done_shards,
    variant_name,
)


@dataclass(frozen=True, slots=True)
class VariantInfo:
    """What one variant folder holds: the encoder, its preprocessing, the degradation, the stored
    dtype. (The width comes with the first features: the driver never has to load the model.)"""

    store: str
    encoder: str
    preprocess_hash: str
    degrade: str
    dtype: str
    weights: str = ""

    @property
    def url(self) -> str:
        return gio.join(self.store, variant_name(self.encoder, self.preprocess_hash, self.degrade))

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "weights": self.weights, "preprocess_hash": self.preprocess_hash,
                "degrade": self.degrade, "dtype": self.dtype}


def stats_url(variant_url: str, stem: str) -> str:
    return gio.join(variant_url, stem + STATS_SUFFIX)


def parquet_url(variant_url: str, stem: str) -> str:
    return gio.join(variant_url, stem + PARQUET_SUFFIX)


def quarantine_url(variant_url: str, stem: str) -> str:
    return gio.join(variant_url, stem + QUARANTINE_SUFFIX)


def check_compatible(info: VariantInfo) -> None:
    """A variant folder holds one feature dtype and one set of encoder weights; refuse to mix,
    before any work. The finished shards are checked too, so a run started while another one has
    not yet written its manifest cannot mix either."""
    manifest_url = gio.join(info.url, MANIFEST)
    old = [gio.read_json(manifest_url)] if gio.exists(manifest_url) else []
    old += list(done_shards(info.url).values())[:1]
    for seen in old:
        if seen.get("dtype", info.dtype) != info.dtype:
            raise GendetError(f"{info.url}: holds {seen['dtype']} features, this run makes {info.dtype}; "
                              f"pass --feature-dtype {seen['dtype']} or write to another FEATURES URL")
        if seen.get("weights", info.weights) != info.weights:
            raise GendetError(f"{info.url}: holds features of encoder weights {seen['weights'] or '(built in)'}, this run "
                              f"uses {info.weights or '(built in)'}; pass the same --weights or write to another FEATURES URL")


def plan_shards(shards: list[str], info: VariantInfo, mode: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(shards to extract, shards skipped because they are done, {stem: why} of done shards that
    are redone). A done shard is redone when its input changed since it was read (size or
    ETag/mtime differ from its stats' ``source``) or its outputs are damaged (missing or cut)."""
    if mode == "overwrite":
        return list(shards), [], {}
    done = done_shards(info.url)
    redo = {stem: f"{problem}: redone" for stem, problem in damaged_shards(info.url, done).items()}
    now = gio.fingerprints([u for u in shards if shard_stem(u) in done])
    for url, current in now.items():
        stem = shard_stem(url)
        recorded = done[stem].get("source")
        if recorded and stem not in redo and recorded != current:
            redo[stem] = f"changed since it was read ({recorded.get('size')} -> {current['size']} bytes): redone"
    todo = [u for u in shards if shard_stem(u) not in done or shard_stem(u) in redo]
    skipped = [u for u in shards if shard_stem(u) in done and shard_stem(u) not in redo]
    return todo, skipped, redo


def reason_counts(stats: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Quarantine counts by reason, summed over shards' stats (sorted by reason)."""
    total: Counter[str] = Counter()
    for s in stats:
        total.update(s.get("quarantined_by_reason", {}))
    return dict(sorted(total.items()))


def file_rows(urls: list[str]) -> dict[str, int]:
    """{url: rows} read from each Parquet file's footer (a few KB each, read in parallel)."""
    import pyarrow.parquet as pq

    def rows(url: str) -> int:
        fs, path = gio.fs_and_path(url)
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(urls, pool.map(rows, urls)))


def rebuild_manifest(info: VariantInfo) -> dict[str, Any]:
    """Write ``manifest.json`` from the stats files present (all runs, not only this one). Rows are
    counted in the files themselves; shards whose files are damaged are listed, not counted."""
    stats = done_shards(info.url)
    damaged = damaged_shards(info.url, stats)
    good = {stem: s for stem, s in stats.items() if stem not in damaged}
    dims = {s["dim"] for s in good.values()}
    if len(dims) > 1:
        raise GendetError(f"{info.url}: shards of different widths {sorted(dims)}; delete the folder and extract again")
    rows = file_rows([parquet_url(info.url, stem) for stem in sorted(good)])
    manifest = {**info.describe(), "dim": dims.pop() if dims else 0, "shards": sorted(good),
                "rows": sum(rows.values()),
                "read": sum(s["read"] for s in good.values()),
                "quarantined": sum(s["quarantined"] for s in good.values()),
                "quarantined_by_reason": reason_counts(good.values()), "damaged": dict(sorted(damaged.items()))}
    gio.write_json_atomic(gio.join(info.url, MANIFEST), manifest)
    return manifest
