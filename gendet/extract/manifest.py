"""Per-variant bookkeeping: which shards are done (their stats file exists), which to do, and the
``manifest.json`` rebuilt from the stats files (img2dataset's stats-as-done-marker).

The stats file of a shard is written last, after its Parquet and quarantine files, and removed
first when a shard is redone; so "stats exists" means "this shard's outputs are complete", and a
job killed at any moment resumes by redoing exactly the shards without one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.data.shards import shard_stem
from gendet.features.markers import MANIFEST, PARQUET_SUFFIX, QUARANTINE_SUFFIX, STATS_SUFFIX, damaged_shards, done_shards
from gendet.features.store import (
    KEY_FIELDS,
    describe_field,
    flag_for,
    key_difference,
    variant_key,
    variant_name,
)


@dataclass(frozen=True, slots=True)
class VariantInfo:
    """What one variant folder holds: the variant key (encoder, weights digest, preprocessing,
    precision, degradation; ``gendet.features.store.KEY_FIELDS``) and the stored dtype. (The
    width comes with the first features: the driver never has to load the model.) Build it with
    ``VariantInfo.of``, which resolves the weights digest and the precision that shapes features."""

    store: str
    encoder: str
    preprocess_hash: str
    degrade: str
    dtype: str
    weights: str = ""
    weights_digest: str = ""
    precision: str = ""
    token_grid: tuple[int, int] = (0, 0)
    """The stored token grid of a token variant (``gendet.extract.tokens``); (0, 0): pooled only."""
    token_dim: int = 0

    @classmethod
    def of(cls, *, store: str, encoder: str, preprocess_hash: str, degrade: str, dtype: str,
           weights: str | None, precision: str, token_grid: tuple[int, int] = (0, 0), token_dim: int = 0) -> VariantInfo:
        """The info of a run: the weights' reference and digest (cheap: a storage fingerprint for a
        large or remote file, ``gendet.encoders.registry.weights_identity``) and the precision the
        encoder really computes in (``spectrum`` always fp32)."""
        from gendet.encoders.registry import feature_precision, weights_identity

        ref, digest = weights_identity(encoder, weights)
        return cls(store=store, encoder=encoder, preprocess_hash=preprocess_hash, degrade=degrade, dtype=dtype,
                   weights=ref, weights_digest=digest, precision=feature_precision(encoder, precision),
                   token_grid=tuple(token_grid), token_dim=token_dim)

    @property
    def tokens(self) -> str:
        """The token grid as the key and the folder spell it (``"8x8"``); empty for a pooled variant."""
        return f"{self.token_grid[0]}x{self.token_grid[1]}" if self.token_grid[0] else ""

    @property
    def url(self) -> str:
        return gio.join(self.store, variant_name(self.encoder, self.preprocess_hash, self.degrade, self.tokens))

    def key_fields(self) -> dict[str, str]:
        """The key; ``tokens`` only for a token variant, so pooled manifests and hashes stay as they were."""
        return {"encoder": self.encoder, "weights": self.weights, "weights_digest": self.weights_digest,
                "preprocess_hash": self.preprocess_hash, "precision": self.precision, "degrade": self.degrade,
                "dtype": self.dtype, **({"tokens": self.tokens} if self.tokens else {})}

    def describe(self) -> dict[str, Any]:
        """What the manifest and every stats file record of the variant (``variant_key``: the short
        hash of its key; a token variant's grid and token width too)."""
        tokens = {"token_grid": list(self.token_grid), "token_dim": self.token_dim} if self.tokens else {}
        return {**self.key_fields(), **tokens, "variant_key": variant_key(self.key_fields())}


def stats_url(variant_url: str, stem: str) -> str:
    return gio.join(variant_url, stem + STATS_SUFFIX)


def parquet_url(variant_url: str, stem: str) -> str:
    return gio.join(variant_url, stem + PARQUET_SUFFIX)


def quarantine_url(variant_url: str, stem: str) -> str:
    return gio.join(variant_url, stem + QUARANTINE_SUFFIX)


def recorded_key(info: VariantInfo, seen: dict[str, Any]) -> dict[str, Any]:
    """The key fields a manifest or stats file recorded. 0.3.0 files have no weights digest and
    no precision field: their precision is the run's ``config`` one (fp32 when absent), as the
    encoder computed it; their weights are compared by reference, as 0.3.0 did."""
    from gendet.encoders.registry import feature_precision

    key = {f: seen.get(f, "") for f in (*KEY_FIELDS, "weights", "dtype")}
    if not key["precision"] and "variant_key" not in seen:
        key["precision"] = feature_precision(str(seen.get("encoder") or info.encoder),
                                             str((seen.get("config") or {}).get("precision") or "fp32"))
    if not key["weights_digest"] and (seen.get("weights") or "") != info.weights:
        key["weights_digest"] = "unrecorded"  # differs from any digest: the references differ
    return key


def check_compatible(info: VariantInfo) -> None:
    """A variant folder holds one variant key and one feature dtype; a run that would mix is
    refused in one line naming the folder and the flag to change, before any work. The finished
    shards are checked too, so a run started while another one has not yet written its manifest
    cannot mix either (and a 0.3.0 folder that held two degradations, ``blur:1.5`` and ``blur:15``,
    is found by its shards' degrade)."""
    manifest_url = gio.join(info.url, MANIFEST)
    old = [gio.read_json(manifest_url)] if gio.exists(manifest_url) else []
    old += list(done_shards(info.url).values())[:1]
    wanted = info.key_fields()
    for seen in old:
        recorded = recorded_key(info, seen)
        field = key_difference(recorded, wanted, (*KEY_FIELDS, "dtype"))
        if field == "degrade":
            raise GendetError(f"{info.url}: holds {recorded['degrade']} features (gendet 0.3.0 put --degrade "
                              f"{recorded['degrade']} and {info.degrade} in one folder); delete the folder and extract again")
        if field:
            raise GendetError(f"{info.url}: holds {describe_field(recorded, field)}, this run makes "
                              f"{describe_field(wanted, field)}; pass {flag_for(recorded, field)} or write to another "
                              "FEATURES URL")
        if info.tokens and int(seen.get("token_dim") or info.token_dim) != info.token_dim:
            raise GendetError(f"{info.url}: holds tokens of {seen['token_dim']} values, {info.encoder} makes "
                              f"{info.token_dim}; write to another FEATURES URL or delete the folder and extract again")


def stored_token_layout(info: VariantInfo) -> VariantInfo:
    """``info`` with the token width its folder already holds, where the encoder can still make it:
    a store of gendet 0.5's 96-wide spectrum tokens keeps growing in them (their first columns today,
    ``gendet.encoders.tokens.model_tokens``), so an incremental run never mixes widths and the GAMMA
    models trained on it keep reading it."""
    from gendet.encoders.tokens import reads_tokens

    manifest_url = gio.join(info.url, MANIFEST)
    if not info.tokens or not gio.exists(manifest_url):
        return info
    held = int(gio.read_json(manifest_url).get("token_dim") or info.token_dim)
    return replace(info, token_dim=held) if reads_tokens(info.encoder, info.token_dim, held) else info


def _content_changed(urls: list[str], done: dict[str, dict]) -> dict[str, str]:
    """{stem: why} of done shards whose input's sha256 is not the one their stats recorded (read
    again, whole: ``--mode verify``); shards extracted before checksums were recorded count as changed."""
    def digest(url: str) -> str:
        return hashlib.sha256(gio.read_bytes(url)).hexdigest()

    with ThreadPoolExecutor(max_workers=4) as pool:
        now = dict(zip(urls, pool.map(digest, urls)))
    out = {}
    for url, sha in now.items():
        recorded = (done[shard_stem(url)].get("source") or {}).get("sha256")
        if recorded != sha:
            out[shard_stem(url)] = ("content changed since it was read (sha256 differs): redone" if recorded else
                                    "no content checksum recorded (extracted before 0.7.0): redone")
    return out


def plan_shards(shards: list[str], info: VariantInfo, mode: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(shards to extract, shards skipped because they are done, {stem: why} of done shards that
    are redone). A done shard is redone when its input changed since it was read (size or
    ETag/mtime differ from its stats' ``source``; with ``verify``, its sha256 too, which reads every
    input again) or its outputs are damaged (missing or cut)."""
    if mode == "overwrite":
        return list(shards), [], {}
    done = done_shards(info.url)
    redo = {stem: f"{problem}: redone" for stem, problem in damaged_shards(info.url, done).items()}
    now = gio.fingerprints([u for u in shards if shard_stem(u) in done])
    for url, current in now.items():
        stem = shard_stem(url)
        recorded = done[stem].get("source")
        stamp = {k: recorded.get(k) for k in current} if isinstance(recorded, dict) else recorded
        if recorded and stem not in redo and stamp != current:
            redo[stem] = f"changed since it was read ({recorded.get('size')} -> {current['size']} bytes): redone"
    if mode == "verify":
        for stem, why in _content_changed([u for u in shards if shard_stem(u) in done and shard_stem(u) not in redo],
                                          done).items():
            redo[stem] = why
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


SAMPLE_IDENTITY = ("subset", "label", "split", "key")
"""What makes two rows the same sample. Not the key alone: one photo under several generators
keeps its key in every family's shard (the demo's, GenImage's file names)."""


def duplicate_shards(variant_url: str, stems: list[str]) -> dict[str, str]:
    """{stem: the earlier shard holding its samples} for shards with a sample (``SAMPLE_IDENTITY``)
    another shard holds too: a shard copied under two names, or samples copied into another shard,
    would count twice. Reads those four columns only."""
    import pyarrow.parquet as pq

    def samples(stem: str) -> set[tuple]:
        fs, path = gio.fs_and_path(parquet_url(variant_url, stem))
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            table = parquet.read(columns=[c for c in SAMPLE_IDENTITY if c in parquet.schema_arrow.names])
        return set(zip(*(table[c].to_pylist() for c in table.column_names)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        by_stem = dict(zip(stems, pool.map(samples, stems)))
    owner: dict[tuple, str] = {}
    found: dict[str, str] = {}
    for stem in stems:
        for sample in by_stem[stem]:
            first = owner.setdefault(sample, stem)
            if first != stem:
                found.setdefault(stem, first)
    return found


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
    for stem in sorted(good):  # the file, not its stats, says how many rows it holds
        held = rows[parquet_url(info.url, stem)]
        if held != good[stem]["written"]:
            damaged[stem] = f"{stem}.parquet holds {held} rows, its stats say {good[stem]['written']}"
    good = {stem: s for stem, s in good.items() if stem not in damaged}
    manifest = {**info.describe(), "dim": dims.pop() if dims else 0, "shards": sorted(good),
                "rows": sum(rows[parquet_url(info.url, stem)] for stem in good),
                "read": sum(s["read"] for s in good.values()),
                "quarantined": sum(s["quarantined"] for s in good.values()),
                "quarantined_by_reason": reason_counts(good.values()), "damaged": dict(sorted(damaged.items())),
                "duplicates": duplicate_shards(info.url, sorted(good))}
    gio.write_json_atomic(gio.join(info.url, MANIFEST), gio.redacted(manifest))
    return manifest
