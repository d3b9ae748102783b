"""Writes off the driver: encoder workers write what they encode, the driver only plans and counts.

On a cluster the driver must not carry features (one process on the data path caps a cluster near
7 nodes: ~18k rows/s per driver core), so the Ray pipeline splits the writer in two:

1. ``PartWritingMapper`` (``gendet.extract.mapper``, on each encoder actor): encodes a batch, then writes its rows, grouped by
   shard, as ``<variant>/_parts/<stem>/<uuid>.parquet`` where it was encoded, and returns a summary
   of a few bytes per row (shard, row index; the end row's ``n_rows`` and error).
2. ``PartTracker`` (in the driver): adds up the summaries, by row index (a batch that Ray ran twice,
   after a lost node, adds nothing), and says when a shard has all its rows.
3. ``finalize_shard`` (a task on any worker): reads the shard's parts, keeps each row index once
   (``ShardAssembler``), writes ``<stem>.parquet``, its quarantine table and, last, its stats file
   (``write_shard``, the same files as ever), then deletes the parts.

This module does not import torch: a finalizer starts in a second, not after a model library's
import. A run killed at any point leaves only parts and shards without a stats file: the rerun clears the
parts of the shards it redoes (``clear_parts``) and does them again. Readers never look in ``_parts``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gendet import GendetError
from gendet import io as gio
from gendet.extract.manifest import VariantInfo, stats_url
from gendet.extract.tokens import TOKEN_FIELDS
from gendet.extract.writer import END, ShardAssembler, parquet_bytes, write_shard

PARTS = "_parts"
# What a part keeps of a mapper batch: everything ShardAssembler reads.
PART_COLUMNS = ("shard", "index", "reason", "key", "label", "subset", "content_id", "split", "error",
                "n_rows", "read_seconds", "encode_seconds", "source")
MATRICES = ("feature", "tokens", "token_mask")  # [rows, width] columns, stored as fixed-size lists


def parts_url(variant_url: str, stem: str = "") -> str:
    root = gio.join(variant_url, PARTS)
    return gio.join(root, stem) if stem else root


def part_table(batch: dict[str, Any], rows: np.ndarray) -> pa.Table:
    """The rows ``rows`` of a mapper batch as one Arrow table (features, and a token variant's
    tokens and token masks, as fixed-size lists)."""
    names = PART_COLUMNS + (TOKEN_FIELDS if "tokens" in batch else ())
    cols = {c: pa.array(np.asarray(batch[c])[rows]) for c in names}
    for name in (m for m in MATRICES if m in batch):
        matrix = np.ascontiguousarray(np.asarray(batch[name])[rows])
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), int(matrix.shape[1]))
    return pa.table(cols)


def write_parts(batch: dict[str, Any], variant_url: str) -> dict[str, np.ndarray]:
    """Write a mapper batch as one part file per shard it touches; return its summary: one tiny row
    per row written (shard, index, and for a shard's end row its ``n_rows`` and error, else -1)."""
    stems = np.asarray(batch["shard"]).astype(str)
    for stem in sorted(set(stems.tolist())):
        url = gio.join(parts_url(variant_url, stem), f"{uuid.uuid4().hex}.parquet")
        gio.write_bytes_atomic(url, parquet_bytes(part_table(batch, np.flatnonzero(stems == stem))))
    end = np.asarray(batch["reason"]).astype(str) == END
    return {"shard": stems, "index": np.asarray(batch["index"], dtype=np.int64),
            "n_rows": np.where(end, np.asarray(batch["n_rows"], dtype=np.int64), -1),
            "error": np.where(end, np.asarray(batch["error"]).astype(str), "")}


@dataclass
class _Progress:
    indices: set = field(default_factory=set)
    n_rows: int | None = None
    error: str = ""


class PartTracker:
    """The driver's view of the shards in flight: which row indices have been written, and whether
    the end row (with the shard's row count) has. ``add`` returns the shards that became complete."""

    def __init__(self) -> None:
        self.pending: dict[str, _Progress] = {}
        self.finished: set[str] = set()  # rows of these arriving again (a retried batch) are ignored
        self.rows = 0

    def add(self, summary: dict[str, Any]) -> list[str]:
        stems, index, n_rows = (np.asarray(summary[c]) for c in ("shard", "index", "n_rows"))
        self.rows += len(stems)
        touched = sorted(set(stems.astype(str).tolist()) - self.finished)
        for stem in touched:
            mine = stems == stem
            shard = self.pending.setdefault(stem, _Progress())
            end = mine & (n_rows >= 0)
            shard.indices.update(index[mine & ~end].tolist())
            if end.any():
                at = int(np.flatnonzero(end)[0])
                shard.n_rows, shard.error = int(n_rows[at]), str(summary["error"][at])
        done = [s for s in touched if self.pending[s].n_rows is not None
                and len(self.pending[s].indices) >= self.pending[s].n_rows]
        for stem in done:
            del self.pending[stem]
        self.finished.update(done)
        return done


def read_parts(variant_url: str, stem: str) -> list[dict[str, Any]]:
    """The shard's part files as mapper-like column batches (the order does not matter)."""
    batches = []
    for url in sorted(gio.glob(parts_url(variant_url, stem), "*.parquet")):
        table = pq.read_table(pa.BufferReader(gio.read_bytes(url)))
        names = PART_COLUMNS + (TOKEN_FIELDS if "tokens" in table.column_names else ())
        cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in names}
        for name in (m for m in MATRICES if m in table.column_names):
            matrix = table.column(name).combine_chunks()
            cols[name] = matrix.flatten().to_numpy(zero_copy_only=False).reshape(len(table), matrix.type.list_size)
        batches.append(cols)
    return batches


def finalize_shard(info: VariantInfo, stem: str, url: str = "", config: dict | None = None) -> dict[str, Any]:
    """Assemble one shard from its parts and write its files (stats last); returns its stats.
    A shard whose reader failed (cut or empty tar) is refused with its error and gets no marker."""
    assembler, shard = ShardAssembler(), None
    for batch in read_parts(info.url, stem):
        for complete in assembler.add(batch):
            shard = complete
    if shard is None and gio.exists(stats_url(info.url, stem)):
        # A retry of a finalize that had written the shard (parts go only after its stats): done.
        clear_parts(info.url, [stem])
        return gio.read_json(stats_url(info.url, stem))
    if shard is None:
        raise GendetError(f"{stem}: incomplete (rows missing from {parts_url(info.url, stem)}); run again to redo it")
    try:
        if shard.error:
            raise GendetError(shard.error)
        return write_shard(shard, info, url=url, config=config)
    finally:
        clear_parts(info.url, [stem])


class ShardFinalizer:
    """``finalize_shard`` as a long-lived worker (a Ray actor in the pipeline): one process that
    imported the library once, instead of a fresh worker per shard."""

    def finalize(self, info: VariantInfo, stem: str, url: str = "", config: dict | None = None) -> dict[str, Any]:
        return finalize_shard(info, stem, url, config)


def clear_parts(variant_url: str, stems: Iterable[str]) -> None:
    """Delete the part files of ``stems`` (left by a killed run, or written before a finalize)."""
    fs, root = gio.fs_and_path(parts_url(variant_url))
    fs.invalidate_cache(root)  # other processes wrote here
    if not fs.exists(root):
        return
    present = {gio.basename(p) for p in fs.ls(root, detail=False)}  # one listing, not one request a shard
    for stem in sorted(present.intersection(stems)):
        fs.rm(gio.fs_and_path(parts_url(variant_url, stem))[1], recursive=True)
