"""The Parquet feature store: schema, layout and the manifest (CONTRACTS.md).

Layout under a store URL ``FEATURES``::

    FEATURES/<variant>/<shard-stem>.parquet           one file per input shard (rows below)
    FEATURES/<variant>/<shard-stem>.quarantine.parquet  samples left out: shard, key, reason
    FEATURES/<variant>/<shard-stem>.stats.json        written last: the shard's done marker
    FEATURES/<variant>/manifest.json                  completed shards, rebuilt from stats files

``<variant>`` names the encoder, its preprocessing hash and the degradation, so a run with another
encoder, preprocessing or ``--degrade`` writes beside an existing one, never over it (feature
widths differ between encoders, so they cannot share one Parquet dataset anyway). Readers pick a
variant by encoder and degradation; with one undegraded variant present, it is the default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from gendet import GendetError
from gendet import io as gio

MANIFEST = "manifest.json"
STATS_SUFFIX = ".stats.json"
QUARANTINE_SUFFIX = ".quarantine.parquet"
PARQUET_SUFFIX = ".parquet"

QUARANTINE_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("reason", pa.string())])


def feature_schema(dim: int, dtype: str = "float16") -> pa.Schema:
    """Row schema of a feature file; ``feature`` is a fixed-size list of ``dim`` floats."""
    value = {"float16": pa.float16(), "float32": pa.float32()}[dtype]
    return pa.schema([
        ("key", pa.string()),
        ("shard", pa.string()),
        ("label", pa.string()),
        ("subset", pa.string()),
        ("content_id", pa.string()),
        ("split", pa.string()),
        ("encoder", pa.string()),
        ("preprocess_hash", pa.string()),
        ("degrade", pa.string()),
        ("feature", pa.list_(value, dim)),
    ])


def variant_name(encoder: str, preprocess_hash: str, degrade: str = "") -> str:
    """Folder name of one (encoder, preprocessing, degradation) variant of a store."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", encoder).strip("-")
    name = f"{slug}__{preprocess_hash[:10]}"
    if degrade:
        name += "__" + re.sub(r"[^A-Za-z0-9]+", "", degrade)
    return name


def feature_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``feature`` column (fixed-size lists of d floats) as one [n, d] array, without a copy
    where Arrow allows it; the one place that unpacks the column (evaluation, training, Ray)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise GendetError(f"column feature is {column.type}, not a fixed-size list; re-extract the store")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), column.type.list_size)


def done_shards(variant_url: str) -> dict[str, dict]:
    """stem -> stats of every finished shard of a variant (its stats file is the done marker)."""
    if not gio.exists(variant_url):
        return {}
    out = {}
    for url in gio.glob(variant_url, "*" + STATS_SUFFIX):
        try:
            stats = gio.read_json(url)
        except ValueError:  # a damaged marker: the shard is not done (the rerun redoes it)
            continue
        out[str(stats.get("shard", gio.basename(url)[: -len(STATS_SUFFIX)]))] = stats
    return out


def damaged_shards(variant_url: str, done: dict[str, dict] | None = None) -> dict[str, str]:
    """stem -> what is wrong, for finished shards whose files are gone or not the size their stats
    file recorded (deleted, cut off by a copy, overwritten). One listing of the folder."""
    done = done_shards(variant_url) if done is None else done
    fs, path = gio.fs_and_path(variant_url)
    try:
        sizes = {gio.basename(e["name"]): int(e.get("size") or 0) for e in fs.ls(path, detail=True)}
    except FileNotFoundError:
        sizes = {}
    problems = {}
    for stem, stats in done.items():
        recorded = stats.get("files", {})
        for kind, suffix in (("parquet", PARQUET_SUFFIX), ("quarantine", QUARANTINE_SUFFIX)):
            name = stem + suffix
            if name not in sizes:
                if kind == "parquet" or kind in recorded:
                    problems[stem] = f"{name} is missing"
            elif kind in recorded and sizes[name] != int(recorded[kind]):
                problems[stem] = f"{name} is {sizes[name]} bytes, {recorded[kind]} were written"
    return problems


def rerun_hint(variant_url: str, stats: dict) -> str:
    """The command that redoes a variant's damaged shards (extract redoes them on any rerun)."""
    shards = str(stats.get("url") or "SHARDS").rsplit("/", 1)[0]
    store = str(variant_url).rstrip("/").rsplit("/", 1)[0]
    flags = f" --encoder {stats['encoder']}" if stats.get("encoder") else ""
    flags += f" --degrade {stats['degrade']}" if stats.get("degrade") else ""
    flags += f" --feature-dtype {stats['dtype']}" if stats.get("dtype") else ""
    return f"gendet extract {shards} {store}{flags}"


def feature_files(variant_url: str) -> list[str]:
    """The feature Parquet files of a variant's finished shards, sorted; a one-line error naming
    the first damaged file and the command that repairs it, rather than scoring around a gap.
    (Files of a shard without a done marker, left by a killed run, are not read.)"""
    done = done_shards(variant_url)
    damaged = damaged_shards(variant_url, done)
    if damaged:
        stem = sorted(damaged)[0]
        more = f" (and {len(damaged) - 1} more shards)" if len(damaged) > 1 else ""
        raise GendetError(f"{gio.join(variant_url, stem + PARQUET_SUFFIX)}: {damaged[stem]}{more}; the store is "
                          f"incomplete: repair it with `{rerun_hint(variant_url, done[stem])}`")
    return [gio.join(variant_url, stem + PARQUET_SUFFIX) for stem in sorted(done)]


def open_dataset(variant_url: str) -> pads.Dataset:
    """The feature files of one variant as a ``pyarrow.dataset`` (local or any fsspec URL)."""
    files = feature_files(variant_url)
    if not files:
        raise GendetError(f"{variant_url}: no feature files (*.parquet) here; run `gendet extract` or pass a variant folder")
    fs, _ = gio.fs_and_path(variant_url)
    return pads.dataset([gio.fs_and_path(u)[1] for u in files], format="parquet",
                        filesystem=None if gio.is_local(fs) else fs)


@dataclass(frozen=True, slots=True)
class Variant:
    url: str
    encoder: str
    preprocess_hash: str
    degrade: str
    dim: int
    shards: tuple[str, ...]
    rows: int = 0
    """Feature rows of the finished shards, as the manifest counted them in the files."""


def list_variants(store_url: str) -> list[Variant]:
    """Every variant under a store that has a manifest."""
    out = []
    for manifest_url in gio.glob(store_url, f"*/{MANIFEST}"):
        m = gio.read_json(manifest_url)
        out.append(Variant(url=manifest_url[: -len(MANIFEST) - 1], encoder=m["encoder"],
                           preprocess_hash=m["preprocess_hash"], degrade=m.get("degrade", ""),
                           dim=int(m["dim"]), shards=tuple(m.get("shards", [])), rows=int(m.get("rows") or 0)))
    return out


def resolve_variant(store_url: str, encoder: str | None = None, degrade: str = "") -> Variant:
    """The one variant matching ``encoder`` (any when None) and ``degrade``; a clear error
    naming the choices otherwise."""
    variants = list_variants(store_url)
    if not variants:
        raise GendetError(f"{store_url}: no feature store here (no */{MANIFEST}); run `gendet extract` first")
    hits = [v for v in variants if v.degrade == degrade and (encoder is None or v.encoder == encoder)]
    if len(hits) == 1:
        return hits[0]
    choices = ", ".join(f"{v.encoder} degrade={v.degrade or 'none'}" for v in variants)
    if not hits:
        raise GendetError(f"{store_url}: no variant with encoder={encoder or 'any'} degrade={degrade or 'none'}; present: "
                          f"{choices}")
    raise GendetError(f"{store_url}: several variants match; pass --encoder to choose one of: {choices}")
