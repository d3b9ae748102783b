"""A small synthetic feature store written straight with pyarrow (schema of gendet.features.store).

Fakes of each generator are a shifted Gaussian cluster; reals are centred. ``seen`` and ``unseen``
generators differ in shift direction, so a detector trained on ``seen`` has something to learn and
something to generalise to. Used by training/evaluation tests that must not depend on extraction.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gendet import io as gio
from gendet.features.store import MANIFEST, STATS_SUFFIX, feature_schema, variant_name

ENCODER = "synthetic:v1"
PHASH = hashlib.sha256(b"synthetic").hexdigest()


def write_done_marker(variant: str, stem: str, *, rows: int, dim: int, encoder: str = ENCODER,
                      preprocess_hash: str = PHASH, degrade: str = "", dtype: str = "float32") -> None:
    """The stats file extraction writes last for a shard (its done marker; CONTRACTS.md), for a
    Parquet file written straight by a test: readers only read shards that have one."""
    parquet = gio.join(variant, f"{stem}.parquet")
    gio.write_json_atomic(gio.join(variant, f"{stem}{STATS_SUFFIX}"), {
        "shard": stem, "encoder": encoder, "preprocess_hash": preprocess_hash, "degrade": degrade, "dtype": dtype,
        "dim": dim, "read": rows, "written": rows, "quarantined": 0,
        "files": {"parquet": gio.fs_and_path(parquet)[0].size(gio.fs_and_path(parquet)[1])}})


def write_synthetic_store(root: str, *, dim: int = 64, per_split: dict[str, int] | None = None,
                          subsets: dict[str, float] | None = None, seed: int = 0, shards: int = 2,
                          degrade: str = "") -> str:
    """Write ``root/<variant>/`` with ``shards`` files; returns the variant URL."""
    per_split = per_split or {"train": 160, "val": 60, "test": 60}
    subsets = subsets or {"seen": 2.0, "unseen": 1.2}
    rng = np.random.default_rng(seed)
    directions = {name: rng.normal(size=dim) / np.sqrt(dim) for name in subsets}
    rows: list[dict] = []
    for split, n in per_split.items():
        for subset, strength in subsets.items():
            for i in range(n):
                label = "fake" if i % 2 else "real"
                x = rng.normal(size=dim)
                if label == "fake":
                    x = x + strength * np.sqrt(dim) * directions[subset] * 0.5
                rows.append({"key": f"{subset}-{split}-{i:05d}", "label": label, "subset": subset,
                             "content_id": f"{subset}-{split}-{i // 2:05d}", "split": split,
                             "encoder": ENCODER, "preprocess_hash": PHASH, "degrade": degrade,
                             "feature": x.astype(np.float32)})
    variant = gio.join(str(root), variant_name(ENCODER, PHASH, degrade))
    gio.makedirs(variant)
    schema = feature_schema(dim, "float32")
    stems = []
    for s in range(shards):
        part = rows[s::shards]
        stem = f"synthetic-{s:06d}"
        table = pa.Table.from_pylist([{**r, "shard": stem, "feature": r["feature"].tolist()} for r in part], schema=schema)
        pq.write_table(table, gio.join(variant, f"{stem}.parquet"))
        write_done_marker(variant, stem, rows=len(part), dim=dim, degrade=degrade)
        stems.append(stem)
    gio.write_json_atomic(gio.join(variant, MANIFEST), {"encoder": ENCODER, "preprocess_hash": PHASH, "degrade": degrade,
                                                        "dim": dim, "dtype": "float32", "shards": stems,
                                                        "rows": len(rows), "quarantined": 0})
    return variant
