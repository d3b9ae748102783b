"""Reading a token variant of the feature store (``gendet extract --tokens``; CONTRACTS.md, "Token
variants"): the rows GAMMA trains and is scored on, as numpy arrays in memory.

``load_token_rows(FEATURES, subsets=..., splits=...)`` resolves the one token variant of the store
(``resolve_variant(..., tokens=True)``), reads the wanted rows with pyarrow (the same filters as
``ParquetSource``, calibration holdout included) and unpacks the fixed-size-list columns:
``tokens`` [N, T, D] float32 (T = rows x cols, row-major), ``token_mask`` [N, T] float32. A store
without a token variant is refused in one line naming the store and ``gendet extract --tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gendet import GendetError
from gendet.features.contents import row_counts
from gendet.features.sources import ParquetSource
from gendet.features.store import Variant, list_variants, resolve_variant

STRING_COLUMNS = ("key", "content_id", "subset", "split", "family", "manipulation")
COLUMNS = ("tokens", "token_mask", "label", "has_mask", "generated_fraction", *STRING_COLUMNS)


@dataclass(frozen=True)
class TokenRows:
    """Rows of one token variant; every array has N rows, in the store's order."""

    tokens: np.ndarray
    """[N, T, D] float32 token grids."""
    token_mask: np.ndarray
    """[N, T] float32: share of each token's pixels manipulated/generated."""
    labels: np.ndarray
    """[N] int64, 1 = fake."""
    has_mask: np.ndarray
    """[N] bool: the sample had a mask.png."""
    generated_fraction: np.ndarray
    """[N] float32."""
    key: np.ndarray
    content_id: np.ndarray
    subset: np.ndarray
    split: np.ndarray
    family: np.ndarray
    manipulation: np.ndarray
    grid: tuple[int, int]
    token_dim: int
    variant: Variant | None = field(default=None, compare=False)
    """The variant read (its URL, encoder and key fields: what a model trained on it records)."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, rows: np.ndarray) -> TokenRows:
        """The rows picked by a bool mask or an index array."""
        return replace(self, **{name: getattr(self, name)[rows] for name in ARRAYS})

    def detector_fields(self) -> dict[str, str]:
        """What a model trained on these rows records of their variant (``Variant.detector_fields``)."""
        return self.variant.detector_fields() if self.variant is not None else {}


ARRAYS = ("tokens", "token_mask", "labels", "has_mask", "generated_fraction", *STRING_COLUMNS)


def resolve_token_variant(features_url: str, *, encoder: str | None = None, degrade: str = "") -> Variant:
    """The one token variant of ``features_url`` matching ``encoder`` and ``degrade``; one line
    naming the store and ``gendet extract --tokens`` when it has none."""
    variants = list_variants(features_url)
    if variants and not any(v.has_tokens for v in variants):
        encoders = sorted({v.encoder for v in variants})
        raise GendetError(f"{features_url}: no token variant (only pooled features of {', '.join(encoders)}); GAMMA reads "
                          f"token grids: run `gendet extract SHARDS {features_url} --tokens --encoder {encoders[0]}` first")
    return resolve_variant(features_url, encoder=encoder, degrade=degrade, tokens=True)


def _matrix(column: pa.ChunkedArray | pa.Array, width: int, what: str, url: str) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != width:
        raise GendetError(f"{url}: column {what} is {column.type}, not a fixed-size list of {width}; re-extract it with "
                          "`gendet extract --tokens`")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), width).astype(np.float32, copy=False)


def load_token_rows(features_url: str, *, encoder: str | None = None, degrade: str = "",
                    subsets: Sequence[str] | None = None, splits: Sequence[str] | None = None,
                    holdout: str | None = None, holdout_fraction: float = 0.1,
                    shard: tuple[int, int] | None = None) -> TokenRows:
    """The rows of the store's token variant in ``subsets`` (all when None/empty) and ``splits``
    (all when None/empty); ``holdout`` "only"/"exclude" keeps/drops the ``holdout_fraction`` of
    content_ids held out for calibration (``gendet.features.sources.in_holdout``). ``shard`` =
    (rank, world): only every world-th of those rows from ``rank``, each shard ``n // world`` rows
    long (DDP workers take equal steps), read batch by batch so a worker never holds the others'."""
    variant = resolve_token_variant(features_url, encoder=encoder, degrade=degrade)
    rows, cols = variant.token_grid
    t, d = rows * cols, variant.token_dim
    if not splits:
        splits = sorted({sp for sp, _ in row_counts(variant.url)})
    source = ParquetSource(variant.url, subsets=tuple(subsets or ()), splits=tuple(splits), holdout=holdout,
                           holdout_fraction=holdout_fraction)
    missing = [c for c in COLUMNS if c not in source.dataset.schema.names]
    if missing:
        raise GendetError(f"{variant.url}: no column {', '.join(missing)}; not a token variant this gendet wrote: "
                          "re-extract it with `gendet extract --tokens`")
    table = source.table(None, columns=COLUMNS) if shard is None else _shard_table(source, shard)
    n = table.num_rows
    return TokenRows(
        tokens=_matrix(table.column("tokens"), t * d, "tokens", variant.url).reshape(n, t, d),
        token_mask=_matrix(table.column("token_mask"), t, "token_mask", variant.url),
        labels=pc.equal(table.column("label"), "fake").fill_null(False).to_numpy(zero_copy_only=False).astype(np.int64),
        has_mask=np.asarray(table.column("has_mask").fill_null(False).to_numpy(zero_copy_only=False), dtype=bool),
        generated_fraction=np.asarray(table.column("generated_fraction").fill_null(0.0).to_numpy(zero_copy_only=False),
                                      dtype=np.float32),
        **{c: np.asarray([v or "" for v in table.column(c).to_pylist()], dtype=object) for c in STRING_COLUMNS},
        grid=(rows, cols), token_dim=d, variant=variant)


def _shard_table(source: ParquetSource, shard: tuple[int, int]) -> pa.Table:
    rank, world = shard
    where = source._filter(None)
    n = source.dataset.count_rows(filter=where)
    if not (0 <= rank < world and n >= world):
        raise GendetError(f"{source.url}: {n} rows cannot be shared by {world} workers (rank {rank}); use fewer workers")
    end, offset, parts = (n // world) * world, 0, []
    for batch in source.dataset.to_batches(columns=list(COLUMNS), filter=where):
        index = np.arange(offset, offset + batch.num_rows)
        keep = np.flatnonzero((index % world == rank) & (index < end))
        if keep.size:
            parts.append(batch.take(pa.array(keep)))
        offset += batch.num_rows
    schema = pa.schema([source.dataset.schema.field(c) for c in COLUMNS])
    return pa.Table.from_batches(parts, schema=schema)
