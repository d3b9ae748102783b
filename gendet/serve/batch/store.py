"""Where ``gendet score`` writes, and how a rerun knows what is done.

``OUT/<part>.parquet`` holds one row per input of a partition (``SCHEMA``: the reply of
``gendet.serve.scorer`` as columns, the user's ``id`` and ``path``, the shard's ``label`` when it
has one); ``OUT/_done/<part>.json`` is written after it: ``rows``, ``verdicts`` (count of each),
``model``, ``complete`` (false for a shard that was cut off: its rows stand, and a rerun reads it
again) and the input it came from. A partition without its marker is not done: a rerun removes
its file and scores it again, so a job killed at any moment loses only unfinished partitions and
never leaves a file whose rows a reader would count twice.

Incremental (``plan_score``): a shard is done when its marker is; an item (an image file, a
manifest row) when its ``id`` is in a done partition, so adding files scores only them and a rerun
writes nothing new. ``--mode overwrite`` scores everything again.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gendet import io as gio
from gendet.serve.batch.inputs import Part, item_parts, list_source

DONE_DIR = "_done"
VERDICTS = ("fake", "real", "uncertain", "error")
SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("label", pa.string()), ("verdict", pa.string()),
    ("probability", pa.float64()), ("band_low", pa.float64()), ("band_high", pa.float64()), ("error", pa.string()),
    ("model", pa.string()), ("encoder", pa.string()), ("encoder_digest", pa.string()),
    ("fake_fraction", pa.float64()), ("mask", pa.string()), ("part", pa.string()), ("index", pa.int64()),
])
OUTPUT_COLUMNS = tuple(SCHEMA.names)


@dataclass
class ScorePlan:
    """What a run does: the partitions left to score, and what earlier runs finished."""

    source: str
    out: str
    kind: str
    parts: list[Part]
    inputs: int
    """Inputs listed: shards for ``shards``, items otherwise."""
    skipped: int
    """Of those, already scored (done partitions' shards or ids)."""
    stored: list[Part] = field(default_factory=list)
    """Shards scored from a feature store's rows instead (``with_stored_features``)."""
    started: float = field(default_factory=time.perf_counter)


def marker_url(out: str, name: str) -> str:
    return gio.join(out, DONE_DIR, f"{name}.json")


def done_markers(out: str) -> dict[str, dict[str, Any]]:
    """{partition: its marker} of every finished partition under ``out``."""
    found = {}
    for url in gio.glob(gio.join(out, DONE_DIR), "*.json") if gio.exists(gio.join(out, DONE_DIR)) else []:
        marker = gio.read_json(url, max_bytes=1 << 20)
        found[gio.basename(url)[: -len(".json")]] = marker
    return found


def done_ids(out: str, markers: dict[str, dict[str, Any]]) -> set[str]:
    """The ids scored by the done partitions (their files' ``id`` column)."""
    ids: set[str] = set()
    for name in markers:
        fs, path = gio.fs_and_path(gio.join(out, f"{name}.parquet"))
        with fs.open(path, "rb") as f:
            ids.update(pq.read_table(f, columns=["id"])["id"].to_pylist())
    return ids


def remove_unfinished(out: str, markers: dict[str, dict[str, Any]]) -> list[str]:
    """Delete the partition files a killed run left without a marker; their names."""
    if not gio.exists(out):
        return []
    fs, _ = gio.fs_and_path(out)
    gone = []
    for url in gio.glob(out, "*.parquet"):
        name = gio.basename(url)[: -len(".parquet")]
        if name not in markers:
            fs.rm(gio.fs_and_path(url)[1])
            gone.append(name)
    return gone


def plan_score(source: str, out: str, *, kind: str = "auto", rows_per_part: int = 1000,
               overwrite: bool = False) -> ScorePlan:
    """List ``source`` and leave out what ``out`` already holds (module docstring); a one-line
    error for a source with nothing to score, before any image is read."""
    kind, ids, urls = list_source(source, kind)
    markers = {} if overwrite else done_markers(out)
    if overwrite and gio.exists(gio.join(out, DONE_DIR)):
        fs, path = gio.fs_and_path(gio.join(out, DONE_DIR))
        fs.rm(path, recursive=True)  # markers first: a crash now leaves files a rerun removes
    remove_unfinished(out, markers)
    if kind == "shards":
        redo = {name for name, m in markers.items() if not m.get("complete", True)}
        parts = [Part(name=stem, shard=url) for stem, url in zip(ids, urls) if stem not in markers or stem in redo]
        return ScorePlan(source, out, kind, parts, inputs=len(ids), skipped=len(ids) - len(parts))
    seen = done_ids(out, markers)
    todo = [(i, u) for i, u in zip(ids, urls) if i not in seen]
    parts = item_parts([i for i, _ in todo], [u for _, u in todo], rows_per_part)
    return ScorePlan(source, out, kind, parts, inputs=len(ids), skipped=len(ids) - len(todo))


def with_stored_features(plan: ScorePlan, variant_url: str) -> ScorePlan:
    """Move the shards whose features ``variant_url`` holds from ``parts`` to ``stored``: they are
    scored from those rows, nothing decoded or encoded. A shard is held when the store finished one of
    its stem (a valid stats file) from the same input (size and ETag/mtime as its stats recorded: a
    shard replaced since is read again) and left nothing out for its metadata (``only_image_reasons``)."""
    from gendet.features.markers import damaged_shards, done_shards
    from gendet.features.store import QUARANTINE_SUFFIX

    done = done_shards(variant_url)
    damaged = damaged_shards(variant_url, done)
    now = gio.fingerprints([p.shard for p in plan.parts if p.shard and p.name in done])

    def held(part: Part) -> bool:
        recorded = done.get(part.name, {}).get("source")
        current = now.get(part.shard)
        return (isinstance(recorded, dict) and current is not None and part.name not in damaged
                and {k: recorded.get(k) for k in current} == current
                and only_image_reasons(gio.join(variant_url, f"{part.name}{QUARANTINE_SUFFIX}")))

    plan.stored = [p for p in plan.parts if p.shard and held(p)]
    plan.parts = [p for p in plan.parts if p not in plan.stored]
    return plan


IMAGE_REASONS = ("empty_image", "not_an_image", "corrupt_image", "truncated_image", "decompression_bomb", "too_large",
                 "no_image", "preprocess_error")


def only_image_reasons(quarantine_url: str) -> bool:
    """Whether every sample extraction left out of a shard was left out for its image: a sample
    quarantined for its metadata (no label: ``missing_label``, ``missing_json``, ...) has an image to
    score, so such a shard is read from its images, not the store."""
    if not gio.exists(quarantine_url):
        return True
    fs, path = gio.fs_and_path(quarantine_url)
    with fs.open(path, "rb") as f:
        reasons = pq.read_table(f, columns=["reason"])["reason"].to_pylist()
    return all(str(r).split(":")[0] in IMAGE_REASONS for r in reasons)


def output_rows(batch: dict[str, Any], replies: list[dict[str, Any]], masks: list[str] | None = None) -> dict[str, list]:
    """The output columns (``SCHEMA``) of a reader batch and one reply per row."""
    n = len(replies)
    return {
        "id": [str(x) for x in batch["id"]], "path": [str(x) for x in batch["path"]],
        "label": [str(x) for x in batch["label"]], "verdict": [r["verdict"] for r in replies],
        "probability": [r["probability"] for r in replies], "band_low": [r["band"][0] for r in replies],
        "band_high": [r["band"][1] for r in replies], "error": [r["error"] for r in replies],
        "model": [r["model"] for r in replies], "encoder": [r["encoder"] for r in replies],
        "encoder_digest": [r["encoder_digest"] for r in replies],
        "fake_fraction": [r.get("fake_fraction") for r in replies], "mask": list(masks) if masks else [""] * n,
        "part": [str(x) for x in batch["part"]], "index": [int(x) for x in batch["index"]],
    }


class PartCollector:
    """Gathers scored rows per partition until all of its rows are in (a row Ray ran twice after a
    lost node counts once: rows are keyed by their index in the partition)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}
        self.expected: dict[str, int] = {}

    def add(self, batch: dict[str, Any]) -> list[tuple[str, pa.Table]]:
        """Add a batch of output columns (with ``n_in_part``); returns the partitions it completed."""
        finished = []
        for i in range(len(batch["part"])):
            name = str(batch["part"][i])
            self.expected[name] = int(batch["n_in_part"][i])
            self.rows.setdefault(name, {})[int(batch["index"][i])] = {c: batch[c][i] for c in OUTPUT_COLUMNS}
        for name in {str(p) for p in batch["part"]}:
            if name in self.rows and len(self.rows[name]) == self.expected[name]:
                by_index = self.rows.pop(name)
                rows = [by_index[k] for k in range(self.expected[name])]
                finished.append((name, pa.Table.from_pylist(rows, schema=SCHEMA)))
        return finished

    @property
    def pending(self) -> list[str]:
        return sorted(self.rows)


def write_part(out: str, name: str, table: pa.Table, *, source: str, complete: bool = True) -> dict[str, Any]:
    """``OUT/<name>.parquet``, then its marker (module docstring); returns the marker."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    gio.write_bytes_atomic(gio.join(out, f"{name}.parquet"), buf.getvalue())
    verdicts = Counter(table["verdict"].to_pylist())
    models = sorted(set(table["model"].to_pylist()))
    marker = {"name": name, "rows": table.num_rows, "verdicts": {v: verdicts.get(v, 0) for v in VERDICTS},
              "model": models[0] if len(models) == 1 else models, "source": gio.redact(source),
              "complete": complete, "finished_at": time.time()}
    gio.write_json_atomic(marker_url(out, name), marker)
    return marker


def shard_complete(table: pa.Table) -> bool:
    """False when a shard's rows end with its ``incomplete_shard``/``unreadable_shard`` error row."""
    errors = table["error"].to_pylist()
    return not (errors and str(errors[-1]).startswith(("incomplete_shard", "unreadable_shard")))


def summary(plan: ScorePlan, written: Iterable[dict[str, Any]], failed: dict[str, str]) -> dict[str, Any]:
    """This run's counts beside the totals of everything under OUT."""
    written = list(written)
    totals = done_markers(plan.out)
    count = Counter()
    for m in totals.values():
        count.update(m.get("verdicts", {}))
    this = Counter()
    for m in written:
        this.update(m["verdicts"])
    return {"source": gio.redact(plan.source), "out": gio.redact(plan.out), "kind": plan.kind, "inputs": plan.inputs,
            "already_scored": plan.skipped, "parts_written": len(written), "parts_failed": failed,
            "parts_from_store": [p.name for p in plan.stored],
            "rows_written": int(sum(m["rows"] for m in written)), "verdicts": {v: int(this.get(v, 0)) for v in VERDICTS},
            "total_rows": int(sum(m.get("rows", 0) for m in totals.values())),
            "total_verdicts": {v: int(count.get(v, 0)) for v in VERDICTS},
            "seconds": round(time.perf_counter() - plan.started, 2)}


def format_summary(s: dict[str, Any]) -> str:
    v, t = s["verdicts"], s["total_verdicts"]
    line = (f"scored {s['rows_written']} inputs into {s['parts_written']} files ({s['already_scored']} of "
            f"{s['inputs']} {'shards' if s['kind'] == 'shards' else 'inputs'} done before) in {s['seconds']:.1f} s: "
            + ", ".join(f"{k} {v[k]}" for k in VERDICTS)
            + f"; {s['out']} now holds {s['total_rows']} rows: " + ", ".join(f"{k} {t[k]}" for k in VERDICTS))
    if s["parts_failed"]:
        line += f"; {len(s['parts_failed'])} partitions failed (a rerun scores them): " + "; ".join(
            f"{k}: {e}" for k, e in list(s["parts_failed"].items())[:3])
    return line

