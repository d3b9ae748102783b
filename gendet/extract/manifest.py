"""Per-variant bookkeeping: which shards are done (their stats file exists), which to do, and the
``manifest.json`` rebuilt from the stats files (img2dataset's stats-as-done-marker).

The stats file of a shard is written last, after its Parquet and quarantine files, and removed
first when a shard is redone; so "stats exists" means "this shard's outputs are complete", and a
job killed at any moment resumes by redoing exactly the shards without one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.data.shards import shard_stem
from gendet.features.store import MANIFEST, PARQUET_SUFFIX, QUARANTINE_SUFFIX, STATS_SUFFIX, variant_name


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


def completed(variant_url: str) -> dict[str, dict[str, Any]]:
    """stem -> stats of every finished shard in a variant folder."""
    if not gio.exists(variant_url):
        return {}
    out = {}
    for url in gio.glob(variant_url, "*" + STATS_SUFFIX):
        stats = gio.read_json(url)
        out[stats["shard"]] = stats
    return out


def check_compatible(info: VariantInfo) -> None:
    """A variant folder holds one feature dtype; refuse to mix, before any work."""
    manifest_url = gio.join(info.url, MANIFEST)
    old = gio.read_json(manifest_url) if gio.exists(manifest_url) else {}
    if old.get("dtype", info.dtype) != info.dtype:
        raise GendetError(f"{info.url}: holds {old['dtype']} features, this run makes {info.dtype}; "
                          f"pass --feature-dtype {old['dtype']} or write to another FEATURES URL")


def plan_shards(shards: list[str], info: VariantInfo, mode: str) -> tuple[list[str], list[str]]:
    """(shards to extract, shards skipped because they are already done)."""
    if mode == "overwrite":
        return list(shards), []
    done = completed(info.url)
    todo = [u for u in shards if shard_stem(u) not in done]
    skipped = [u for u in shards if shard_stem(u) in done]
    return todo, skipped


def reason_counts(stats: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Quarantine counts by reason, summed over shards' stats (sorted by reason)."""
    total: Counter[str] = Counter()
    for s in stats:
        total.update(s.get("quarantined_by_reason", {}))
    return dict(sorted(total.items()))


def rebuild_manifest(info: VariantInfo) -> dict[str, Any]:
    """Write ``manifest.json`` from the stats files present (all runs, not only this one)."""
    stats = completed(info.url)
    dims = {s["dim"] for s in stats.values()}
    if len(dims) > 1:
        raise GendetError(f"{info.url}: shards of different widths {sorted(dims)}; delete the folder and extract again")
    manifest = {**info.describe(), "dim": dims.pop() if dims else 0, "shards": sorted(stats),
                "rows": sum(s["written"] for s in stats.values()),
                "read": sum(s["read"] for s in stats.values()),
                "quarantined": sum(s["quarantined"] for s in stats.values()),
                "quarantined_by_reason": reason_counts(stats.values())}
    gio.write_json_atomic(gio.join(info.url, MANIFEST), manifest)
    return manifest
