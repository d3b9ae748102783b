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

The variant key is what made the features: encoder, weights digest, preprocessing hash, precision
and the canonical degrade spec (``KEY_FIELDS``). The folder name stays readable (encoder,
preprocessing, degradation); the manifest and every stats file record the whole key
(``variant_key``: its short hash), and a run or a model whose key differs from the folder's is
refused in one line naming the folder and the flag to change (``key_difference``). Stores written
by gendet 0.3.0 recorded no weights digest nor precision: those fields are not compared there.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from gendet import GendetError
from gendet import io as gio
from gendet.features.markers import (
    MANIFEST,
    PARQUET_SUFFIX,
    _manifest,
    damaged_shards,
    done_shards,
    missing_markers,
    rerun_hint,
)
from gendet.features.markers import QUARANTINE_SUFFIX as QUARANTINE_SUFFIX  # re-exported: the store's layout
from gendet.features.markers import STATS_SUFFIX as STATS_SUFFIX

QUARANTINE_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("reason", pa.string())])


def feature_schema(dim: int, dtype: str = "float16", token_grid: tuple[int, int] | list[int] = (0, 0),
                   token_dim: int = 0) -> pa.Schema:
    """Row schema of a feature file; ``feature`` is a fixed-size list of ``dim`` floats. A token
    variant (``token_grid`` not (0, 0)) adds ``TOKEN_COLUMNS`` (CONTRACTS.md)."""
    value = {"float16": pa.float16(), "float32": pa.float32()}[dtype]
    cells = int(token_grid[0]) * int(token_grid[1])
    tokens = [("tokens", pa.list_(value, cells * int(token_dim))), ("token_mask", pa.list_(pa.float16(), cells)),
              ("has_mask", pa.bool_()), ("manipulation", pa.string()), ("family", pa.string()),
              ("generated_fraction", pa.float32())] if cells else []
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
        *tokens,
    ])


TOKEN_COLUMNS = ("tokens", "token_mask", "has_mask", "manipulation", "family", "generated_fraction")
"""The extra columns of a token variant's rows (``gendet extract --tokens``)."""


def _degrade_slug(degrade: str) -> str:
    """The degradation's part of a folder name, one per spec: ``jpeg:65`` -> ``jpeg65`` (as 0.3.0
    spelled it), ``blur:1.5`` -> ``blur1.5`` (0.3.0 made it ``blur15``, the folder of ``blur:15``);
    a spec beyond ``kind:number`` gets a hash of itself, so no two specs share a folder."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "", degrade)
    if re.fullmatch(r"[a-z]+:[0-9.]+", degrade):
        return slug
    return f"{slug[:40]}-{hashlib.sha256(degrade.encode()).hexdigest()[:8]}"


def variant_name(encoder: str, preprocess_hash: str, degrade: str = "", tokens: str = "") -> str:
    """Folder name of one (encoder, preprocessing, degradation) variant of a store; a token variant
    (``tokens`` = its grid, ``"16x16"``) adds ``__tok16x16``, beside the pooled one."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", encoder).strip("-")
    name = f"{slug}__{preprocess_hash[:10]}"
    if degrade:
        name += "__" + _degrade_slug(degrade)
    if tokens:
        name += f"__tok{tokens}"
    return name


KEY_FIELDS = ("encoder", "weights_digest", "preprocess_hash", "precision", "degrade")
"""What made a variant's features; two runs or a model and a store agree on all of them or differ."""

# How a differing field is changed: the flag of `gendet extract` that sets it.
_FLAGS = {"encoder": "--encoder", "weights_digest": "--weights", "precision": "--precision", "degrade": "--degrade",
          "dtype": "--feature-dtype", "preprocess_hash": "--encoder"}


def variant_key(fields: Mapping[str, Any]) -> str:
    """The short hash (16 hex) of a variant's ``KEY_FIELDS``: equal keys, equal features. A token
    variant's ``tokens`` grid joins the key only when set, so pooled variants keep their hashes."""
    key = {f: str(fields.get(f) or "") for f in KEY_FIELDS}
    if fields.get("tokens"):
        key["tokens"] = str(fields["tokens"])
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def key_difference(recorded: Mapping[str, Any], wanted: Mapping[str, Any],
                   fields: tuple[str, ...] = KEY_FIELDS) -> str | None:
    """The first of ``fields`` both record and that differs; None when they agree. A field either
    leaves empty is not compared (0.3.0 stores and detectors did not record the weights digest or
    the precision)."""
    for field in fields:
        a, b = str(recorded.get(field) or ""), str(wanted.get(field) or "")
        if a and b and a != b:
            return field
    return None


def describe_field(fields: Mapping[str, Any], field: str) -> str:
    """One key field as a message says it: ``fp16 features``, ``encoder weights /w.pt (sha256:12ab...)``."""
    value = str(fields.get(field) or "")
    if field == "weights_digest":
        ref = fields.get("weights")
        if not ref:  # the name's own: builtin, random-init or open_clip-hub:<arch>/<tag>
            return "encoder weights " + (value if value != "unrecorded" else "(the encoder name's own)")
        return f"encoder weights {ref} ({value if len(value) <= 24 else value[:20] + '...'})"
    if field in ("precision", "dtype"):
        return f"{value} features"
    if field == "preprocess_hash":
        return f"preprocessing {value[:12]}"
    return f"{field} {value or 'none'}"


def flag_for(fields: Mapping[str, Any], field: str) -> str:
    """The ``gendet extract`` flag (and value) that makes features with ``fields``' ``field``."""
    value = fields.get("weights") if field == "weights_digest" else fields.get(field)
    if field == "weights_digest" and not value:
        return "no --weights"
    if field == "preprocess_hash":
        return f"--encoder {fields.get('encoder')} with the open_clip version that preprocesses as {str(value)[:12]}"
    return f"{_FLAGS[field]} {value or 'none'}"


def feature_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``feature`` column (fixed-size lists of d floats) as one [n, d] array, without a copy
    where Arrow allows it; the one place that unpacks the column (evaluation, training, Ray)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise GendetError(f"column feature is {column.type}, not a fixed-size list; re-extract the store")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), column.type.list_size)


def feature_files(variant_url: str) -> list[str]:
    """The feature Parquet files of a variant's finished shards, sorted; a one-line error naming
    the first damaged file and the command that repairs it, rather than scoring around a gap: a
    file gone or cut, a done marker the manifest lists that is gone or unreadable, shards that
    hold the same samples. (Files of a shard never marked done, left by a killed run, are not read.)"""
    done = done_shards(variant_url)
    damaged = {**missing_markers(variant_url, done), **damaged_shards(variant_url, done)}
    if damaged:
        stem = sorted(damaged)[0]
        more = f" (and {len(damaged) - 1} more shards)" if len(damaged) > 1 else ""
        hint = rerun_hint(variant_url, done.get(stem) or _manifest(variant_url))
        name = damaged[stem].split(" ", 1)[0]  # every problem starts with the file it is about
        raise GendetError(f"{gio.join(variant_url, name)}: {damaged[stem]}{more}; the store is incomplete: repair it "
                          f"with `{hint}`")
    duplicates = _manifest(variant_url).get("duplicates") or {}
    if duplicates:
        stem, other = sorted(duplicates.items())[0]
        raise GendetError(f"{gio.join(variant_url, stem + PARQUET_SUFFIX)}: holds samples of {other} again (the same "
                          "subset, label, split and key): a shard was copied under two names: remove one from SHARDS and "
                          "extract with --mode overwrite")
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
    weights: str = ""
    """The encoder weights reference extraction was given (``--weights``; empty: the name's own)."""
    weights_digest: str = ""
    """Their digest (``gendet.encoders.registry.weights_identity``); empty in 0.3.0 stores."""
    precision: str = ""
    """The encoder's compute precision (fp32/fp16/bf16); empty in 0.3.0 stores."""
    legacy_folder: bool = False
    """A 0.3.0 folder name that is not the variant's now: 0.3.0 put ``blur:1.5`` in ``blur15``."""
    token_grid: tuple[int, int] = (0, 0)
    """(rows, cols) of a token variant's ``tokens`` column; (0, 0) for a pooled variant."""
    token_dim: int = 0

    @property
    def has_tokens(self) -> bool:
        return bool(self.token_grid[0])

    def key_fields(self) -> dict[str, str]:
        return {"encoder": self.encoder, "weights": self.weights, "weights_digest": self.weights_digest,
                "preprocess_hash": self.preprocess_hash, "precision": self.precision, "degrade": self.degrade}

    def detector_fields(self) -> dict[str, str]:
        """What a detector trained on this variant records of it (``gendet.method.gendet.trainer.train_all``'s
        keywords), so the variant is found and checked again for scoring, refresh and predict."""
        return {"encoder": self.encoder, "encoder_weights": self.weights, "encoder_weights_digest": self.weights_digest,
                "preprocess_hash": self.preprocess_hash, "encoder_precision": self.precision}


def list_variants(store_url: str) -> list[Variant]:
    """Every variant under a store that has a manifest."""
    out = []
    for manifest_url in gio.glob(store_url, f"*/{MANIFEST}"):
        m = gio.read_json(manifest_url)
        url = manifest_url[: -len(MANIFEST) - 1]
        degrade = m.get("degrade", "")
        out.append(Variant(url=url, encoder=m["encoder"], preprocess_hash=m["preprocess_hash"], degrade=degrade,
                           dim=int(m["dim"]), shards=tuple(m.get("shards", [])), rows=int(m.get("rows") or 0),
                           weights=str(m.get("weights") or ""), weights_digest=str(m.get("weights_digest") or ""),
                           precision=str(m.get("precision") or ""),
                           token_grid=tuple(int(x) for x in m.get("token_grid") or (0, 0)),
                           token_dim=int(m.get("token_dim") or 0),
                           legacy_folder=_named_by_0_3_0(gio.basename(url), m["encoder"], m["preprocess_hash"], degrade)))
    return out


def _named_by_0_3_0(folder: str, encoder: str, preprocess_hash: str, degrade: str) -> bool:
    """Whether ``folder`` has the name 0.3.0 gave this variant and that name is not its own now
    (0.3.0 dropped every non-alphanumeric of the spec: ``blur:1.5`` and ``blur:15`` made ``blur15``)."""
    old = variant_name(encoder, preprocess_hash) + ("__" + re.sub(r"[^A-Za-z0-9]+", "", degrade) if degrade else "")
    return folder == old != variant_name(encoder, preprocess_hash, degrade)


def resolve_variant(store_url: str, encoder: str | None = None, degrade: str = "", *, tokens: bool = False) -> Variant:
    """The one variant matching ``encoder`` (any when None) and ``degrade``; a clear error
    naming the choices otherwise (``check_variant`` then matches it to a model). Pooled consumers
    get a pooled variant where one matches (a token variant also has ``feature``); ``tokens=True``
    considers token variants only (``gendet extract --tokens``)."""
    variants = list_variants(store_url)
    if not variants:
        raise GendetError(f"{store_url}: no feature store here (no */{MANIFEST}); run `gendet extract` first")
    hits = [v for v in variants if v.degrade == degrade and (encoder is None or v.encoder == encoder)
            and (v.has_tokens or not tokens)]
    if not tokens and any(not v.has_tokens for v in hits):
        hits = [v for v in hits if not v.has_tokens]
    if len(hits) > 1 and any(not v.legacy_folder for v in hits):
        hits = [v for v in hits if not v.legacy_folder]  # a 0.3.0 folder beside the one the key names now
    if len(hits) == 1:
        check_variant(hits[0])
        return hits[0]
    choices = ", ".join(f"{v.encoder} degrade={v.degrade or 'none'}" + (f" tokens={v.token_grid[0]}x{v.token_grid[1]}"
                                                                        if v.has_tokens else "") for v in variants)
    if not hits:
        wanted = " with tokens (gendet extract --tokens)" if tokens else ""
        raise GendetError(f"{store_url}: no variant with encoder={encoder or 'any'} degrade={degrade or 'none'}{wanted}; "
                          f"present: {choices}")
    raise GendetError(f"{store_url}: several variants match; pass --encoder to choose one of: {choices}")


def model_key_fields(model: Any) -> dict[str, str]:
    """A detector's recorded fields (``Variant.detector_fields``'s names, as attributes or keys)
    as ``KEY_FIELDS``."""
    def get(name: str) -> str:
        return str((model.get(name) if isinstance(model, Mapping) else getattr(model, name, "")) or "")

    return {"encoder": get("encoder"), "weights": get("encoder_weights"), "weights_digest": get("encoder_weights_digest"),
            "preprocess_hash": get("preprocess_hash"), "precision": get("encoder_precision")}


def check_variant(variant: Variant, model: Any = None) -> None:
    """Refuse, in one line, a 0.3.0 folder that may hold two degradations, and a variant whose key
    differs from ``model``'s (a Detector, or its recorded fields; the degradation is not compared:
    a model trained on clean features is scored on degraded ones)."""
    if variant.legacy_folder:
        raise GendetError(f"{variant.url}: written by gendet 0.3.0, where --degrade {variant.degrade} shared this folder "
                          f"with another spec; re-extract it with `gendet extract SHARDS FEATURES --encoder {variant.encoder} "
                          f"--degrade {variant.degrade}` (it writes to "
                          f"{variant_name(variant.encoder, variant.preprocess_hash, variant.degrade)}/) and delete this folder")
    if model is None:
        return
    wanted = model_key_fields(model)
    field = key_difference(variant.key_fields(), wanted, ("weights_digest", "preprocess_hash", "precision"))
    if field:
        raise GendetError(f"{variant.url}: holds {describe_field(variant.key_fields(), field)}, the model was trained on "
                          f"{describe_field(wanted, field)}; extract its features with {flag_for(wanted, field)} "
                          "into another FEATURES URL, or score a model trained on these")
