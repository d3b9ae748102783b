"""Writer: one complete shard's rows -> ``<stem>.parquet``, ``<stem>.quarantine.parquet`` and,
last, ``<stem>.stats.json`` (the done marker).

``ShardAssembler`` collects mapper output that may arrive in any order and in any batching (Ray
Data) and hands back a shard once its end row has come and every row it announced is there. Rows
are keyed by their position in the shard, so a retried task that re-sends rows cannot duplicate
them, and each file is written in tar order, whatever the arrival order. A token variant's rows
also carry the mapper's ``tokens`` and the reader's ``token_mask`` and manipulation fields
(``gendet.extract.tokens``), written as the extra columns of ``feature_schema``.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gendet import io as gio
from gendet.extract.manifest import VariantInfo, parquet_url, quarantine_url, stats_url
from gendet.extract.tokens import TOKEN_FIELDS
from gendet.features.store import QUARANTINE_SCHEMA, feature_schema

END = "__end__"  # the reason of a shard's last row (``ShardReader``): it carries the shard's row count
META_COLUMNS = ("key", "label", "subset", "content_id", "split")
_VERSIONED = ("gendet", "torch", "open_clip_torch", "pyarrow", "pillow", "numpy", "ray")


@dataclass
class ShardRows:
    """One shard's rows as they arrive: samples and quarantine rows by index, plus its end row."""

    stem: str
    samples: dict[int, tuple] = field(default_factory=dict)
    tokens: dict[int, tuple] = field(default_factory=dict)
    """A token variant's rows by index: (tokens, token_mask, *TOKEN_FIELDS)."""
    quarantine: dict[int, tuple[str, str]] = field(default_factory=dict)
    n_rows: int | None = None
    dim: int = 0
    error: str = ""
    source: dict = field(default_factory=dict)
    read_seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.n_rows is not None and len(self.samples) + len(self.quarantine) >= self.n_rows


class ShardAssembler:
    """Feed mapper batches to ``add``; it returns the shards that became complete."""

    def __init__(self) -> None:
        self.pending: dict[str, ShardRows] = {}

    def add(self, batch: dict[str, Any]) -> list[ShardRows]:
        touched = set()
        for i in range(len(batch["shard"])):
            stem, reason, index = str(batch["shard"][i]), str(batch["reason"][i]), int(batch["index"][i])
            shard = self.pending.setdefault(stem, ShardRows(stem))
            touched.add(stem)
            if reason == END:
                shard.n_rows, shard.error = int(batch["n_rows"][i]), str(batch["error"][i])
                shard.read_seconds = float(batch["read_seconds"][i])
                shard.source = json.loads(str(batch["source"][i]) or "{}")
            elif reason:
                shard.quarantine[index] = (str(batch["key"][i]), reason)
            else:
                shard.samples[index] = (*(str(batch[c][i]) for c in META_COLUMNS), batch["feature"][i])
                if "tokens" in batch:
                    shard.tokens[index] = (batch["tokens"][i], batch["token_mask"][i], *(batch[c][i] for c in TOKEN_FIELDS))
            shard.encode_seconds += float(batch["encode_seconds"][i])
        for stem in touched:  # every row carries a feature (zeros when not encoded): the width
            self.pending[stem].dim = int(np.shape(batch["feature"])[1])
        return [self.pending.pop(stem) for stem in sorted(touched) if self.pending[stem].complete]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def feature_table(shard: ShardRows, info: VariantInfo) -> pa.Table:
    rows = [shard.samples[i] for i in sorted(shard.samples)]
    n = len(rows)
    cols: dict[str, Any] = {c: [r[j] for r in rows] for j, c in enumerate(META_COLUMNS)}
    flat = np.asarray([r[-1] for r in rows], dtype=info.dtype).reshape(-1)
    feature = pa.FixedSizeListArray.from_arrays(pa.array(flat), shard.dim)
    arrays = [cols["key"], [shard.stem] * n, cols["label"], cols["subset"], cols["content_id"], cols["split"],
              [info.encoder] * n, [info.preprocess_hash] * n, [info.degrade] * n]
    columns = [*(pa.array(a, pa.string()) for a in arrays), feature]
    if info.tokens:
        columns += token_arrays(shard, info)
    return pa.Table.from_arrays(columns, schema=feature_schema(shard.dim, info.dtype, info.token_grid, info.token_dim))


def token_arrays(shard: ShardRows, info: VariantInfo) -> list[pa.Array]:
    """A token variant's extra columns, in tar order (``feature_schema``'s order)."""
    rows = [shard.tokens[i] for i in sorted(shard.samples)]
    cells = info.token_grid[0] * info.token_grid[1]
    width = cells * info.token_dim
    tokens = np.asarray([r[0] for r in rows], dtype=info.dtype).reshape(-1)
    if tokens.size != len(rows) * width:
        raise ValueError(f"{shard.stem}: tokens of {tokens.size // max(1, len(rows))} values a row, the variant "
                         f"{info.tokens} x {info.token_dim} needs {width}")
    mask = np.asarray([r[1] for r in rows], dtype=np.float16).reshape(-1)
    return [pa.FixedSizeListArray.from_arrays(pa.array(tokens), width),
            pa.FixedSizeListArray.from_arrays(pa.array(mask), cells),
            pa.array([bool(r[2]) for r in rows], pa.bool_()), pa.array([str(r[3]) for r in rows], pa.string()),
            pa.array([str(r[4]) for r in rows], pa.string()), pa.array([float(r[5]) for r in rows], pa.float32())]


def quarantine_table(shard: ShardRows) -> pa.Table:
    rows = [shard.quarantine[i] for i in sorted(shard.quarantine)]
    return pa.table({"shard": [shard.stem] * len(rows), "key": [k for k, _ in rows],
                     "reason": [r for _, r in rows]}, schema=QUARANTINE_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_shard(shard: ShardRows, info: VariantInfo, url: str = "", config: dict | None = None) -> dict[str, Any]:
    """Write one complete shard; returns its stats (also written, last, as the done marker, with
    the run's resolved ``config``)."""
    started = time.perf_counter()
    target = stats_url(info.url, shard.stem)
    fs, path = gio.fs_and_path(target)
    if fs.exists(path):  # redoing a shard: it is not done until the new stats are written
        fs.rm(path)
    features, quarantine = parquet_bytes(feature_table(shard, info)), parquet_bytes(quarantine_table(shard))
    gio.write_bytes_atomic(parquet_url(info.url, shard.stem), features)
    gio.write_bytes_atomic(quarantine_url(info.url, shard.stem), quarantine)
    reasons = dict(sorted(Counter(reason for _, reason in shard.quarantine.values()).items()))
    # "source": the shard as it was read (a replaced shard is redone); "files": the sizes written,
    # so a reader finds a deleted or cut Parquet from one listing (gendet.extract.manifest.verify).
    stats = {**info.describe(), "dim": shard.dim, "shard": shard.stem, "url": url, "source": shard.source,
             "files": {"parquet": len(features), "quarantine": len(quarantine)},
             "read": len(shard.samples) + len(shard.quarantine), "written": len(shard.samples),
             "quarantined": len(shard.quarantine), "quarantined_by_reason": reasons,
             "read_seconds": round(shard.read_seconds, 4), "encode_seconds": round(shard.encode_seconds, 4),
             "write_seconds": round(time.perf_counter() - started, 4), "versions": versions(),
             "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": config or {}}
    gio.write_json_atomic(target, gio.redacted(stats))  # a SHARDS URL's user:pass@ is not written down
    return stats
