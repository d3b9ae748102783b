"""Where the trainer's batches come from: a small protocol and two sources.

The trainer (``gendet.method.gendet.trainer``) only calls ``source.batches(kind, epoch)``, so Ray Train can plug
in ``ray.train.get_dataset_shard(...).iter_torch_batches(...)`` behind the same protocol without
any change to the library. ``kind`` is ``"all"`` (teacher, probe and classifier stages), ``"real"``
(stage a) or ``"fake"`` (stages b and c). Labels are 0 = real, 1 = fake.

Distributed training: every worker must yield the same number of batches in every stage (each
step of a DDP-wrapped network all-reduces gradients, and Ray Train's ``report`` is collective), so a
distributed source must split rows evenly (Ray Data's ``streaming_split(equal=True)`` does) or
drop the extra batches.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from gendet import GendetError
from gendet.features import store as gfeatures

Kind = Literal["all", "real", "fake"]
Holdout = Literal["only", "exclude"]


def in_holdout(content_id: str, fraction: float) -> bool:
    """Whether rows of ``content_id`` belong to the held-out ``fraction``: a stable hash of the id
    (64 bits of BLAKE2b, the same in every process, machine and run), so a photo, its crops and its
    regenerations, which share a content_id (CONTRACTS.md), are held out together or not at all."""
    digest = hashlib.blake2b(content_id.encode("utf-8"), digest_size=8, person=b"gendet-holdout").digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def held_out_ids(content_ids: Iterable[str | None], fraction: float) -> list[str]:
    """The distinct ids of ``content_ids`` that ``in_holdout`` holds out, sorted (rows without a
    content_id are never held out)."""
    return sorted({c for c in content_ids if c is not None and in_holdout(c, fraction)})


def shot_keys(rows: pa.Table, n: int) -> list[str]:
    """The ``key`` of at most ``n`` rows of each label in ``rows`` (columns key, content_id,
    label), the first in the order of a stable hash of ``content_id`` (then ``key``): few-shot
    rows, the same on every run and machine, a photo's crops together while ``n`` allows."""
    def rank(content_id: str | None, key: str) -> tuple[bytes, str]:
        return hashlib.blake2b((content_id or key).encode("utf-8"), digest_size=8, person=b"gendet-shots").digest(), key

    picked: list[str] = []
    for label in ("real", "fake"):
        of_label = rows.filter(pc.equal(rows.column("label"), label))
        pairs = sorted(zip(of_label.column("content_id").to_pylist(), of_label.column("key").to_pylist()),
                       key=lambda ck: rank(*ck))
        picked += [key for _, key in pairs[:n]]
    return picked


@runtime_checkable
class BatchSource(Protocol):
    """What the trainer needs from a data source."""

    dim: int
    """Feature width d."""

    def batches(self, kind: Kind, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x [B, d] float32, y [B] int64) batches of one epoch over ``kind`` rows; the order is a
        function of (seed, kind, epoch) only, so a resumed run sees the same batches."""
        ...

    def counts(self) -> dict[str, int] | None:
        """{"real": n, "fake": n} rows, or None when unknown (then no emptiness check is made)."""
        ...


def epoch_seed(seed: int, kind: str, epoch: int) -> int:
    """A stable 63-bit seed per (seed, kind, epoch); Python's hash() is salted per process."""
    return zlib.crc32(f"{seed}/{kind}/{epoch}".encode()) | (seed & 0x7FFFFFFF) << 32


class TensorSource:
    """In-memory features and labels (tests, small data): a fresh permutation per epoch."""

    def __init__(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, *,
                 batch_size: int = 256, seed: int = 0):
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.int64)
        if self.x.ndim != 2 or self.y.shape != (self.x.shape[0],):
            raise GendetError(f"TensorSource: x must be [N, d] and y [N]; got {tuple(self.x.shape)} and {tuple(self.y.shape)}")
        self.dim = int(self.x.shape[1])
        self.batch_size, self.seed = batch_size, seed

    def counts(self) -> dict[str, int]:
        n_fake = int(self.y.sum())
        return {"real": int(self.y.numel()) - n_fake, "fake": n_fake}

    def batches(self, kind: Kind, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = torch.arange(self.y.numel()) if kind == "all" else torch.nonzero(self.y == int(kind == "fake")).flatten()
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, kind, epoch))
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        for start in range(0, rows.numel(), self.batch_size):
            take = rows[start:start + self.batch_size]
            yield self.x[take], self.y[take]


class ParquetSource:
    """Streams one feature-store variant with ``pyarrow.dataset``; memory does not grow with rows.

    Only the ``feature`` and ``label`` columns are read, filtered by ``subset`` in ``subsets``
    (all when empty) and ``split`` in ``splits``. With ``holdout``, a ``holdout_fraction`` of the
    content_ids of those rows is held out (``in_holdout``, a stable hash: every row of one content_id
    falls on the same side): ``"exclude"`` drops them (the training rows), ``"only"`` keeps just
    them (the calibration rows), so two sources with the same subsets, splits and fraction are
    disjoint and together are the rows of one without ``holdout``. Arrow has no hash kernel, so
    the ids are hashed once in Python (``held_out_ids``, ~1 s per million ids) and filtered with
    ``content_id`` in that list. Rows pass through a shuffle buffer of at most
    ``buffer_rows`` rows (held as ``dtype``: float16 halves it), and files are visited in a per-epoch
    random order; batches come out as float32. For ``kind="all"`` the
    real and fake streams are interleaved at random in proportion to their sizes, so a store
    written real-first still gives mixed batches. ``shots`` ({subset: N}) keeps only N fakes and N
    reals of each named subset (``shot_keys``, after the holdout), filtered by ``key`` per subset.
    """

    def __init__(self, variant_url: str, *, subsets: Sequence[str] = (), splits: Sequence[str] = ("train",),
                 batch_size: int = 256, seed: int = 0, buffer_rows: int = 16384, read_rows: int = 2048,
                 dtype: str = "float32", encoder: str = "", preprocess_hash: str = "",
                 holdout: Holdout | None = None, holdout_fraction: float = 0.1, shots: dict[str, int] | None = None):
        if holdout not in (None, "only", "exclude"):
            raise GendetError(f"ParquetSource: holdout={holdout!r}; use None, 'only' or 'exclude'")
        if holdout is not None and not 0 < holdout_fraction < 1:
            raise GendetError(f"ParquetSource: holdout_fraction={holdout_fraction}; must be in (0, 1)")
        self.url, self.dataset = variant_url, gfeatures.open_dataset(variant_url)
        feature_type = self.dataset.schema.field("feature").type
        if not pa.types.is_fixed_size_list(feature_type):
            raise GendetError(f"{variant_url}: column feature is {feature_type}, not a fixed-size list; re-extract it")
        self.dim = feature_type.list_size
        self.subsets, self.splits = tuple(subsets), tuple(splits)
        self.batch_size, self.seed = batch_size, seed
        self.buffer_rows, self.read_rows = max(buffer_rows, batch_size), read_rows
        self.encoder, self.preprocess_hash = encoder, preprocess_hash
        self.dtype = np.dtype(dtype)
        self.holdout, self.holdout_fraction = holdout, holdout_fraction
        self._held_out: list[str] | None = None
        self.shots, self._shot_keys = dict(shots or {}), None

    @property
    def held_out_ids(self) -> list[str]:
        """The content_ids of the subsets' and splits' rows that a holdout at ``holdout_fraction``
        holds out (computed once; what ``holdout`` filters on, and what a Ray Data reader of the
        same rows filters with: ``col("content_id").is_in(ids)``)."""
        if self._held_out is None:
            ids = self.dataset.to_table(columns=["content_id"], filter=self._filter(None, holdout=False, shots=False)).column(0)
            self._held_out = held_out_ids(pc.unique(ids).to_pylist(), self.holdout_fraction)
        return self._held_out

    @property
    def shot_keys(self) -> dict[str, list[str]]:
        """{subset: keys of its few-shot rows} for ``shots`` (computed once; a Ray Data reader of
        the same rows filters with the same lists)."""
        if self._shot_keys is None:
            self._shot_keys = {}
            for subset, n in self.shots.items():
                where = self._filter(None, shots=False) & (pads.field("subset") == subset)
                rows = self.dataset.to_table(columns=["key", "content_id", "label"], filter=where)
                self._shot_keys[subset] = shot_keys(rows, n)
        return self._shot_keys

    @classmethod
    def from_store(cls, store_url: str, *, encoder: str | None = None, degrade: str = "", **kwargs) -> ParquetSource:
        """The source over the one variant of ``store_url`` matching ``encoder`` and ``degrade``."""
        variant = gfeatures.resolve_variant(store_url, encoder, degrade)
        return cls(variant.url, encoder=variant.encoder, preprocess_hash=variant.preprocess_hash, **kwargs)

    def _filter(self, label: str | None, *, holdout: bool = True, shots: bool = True) -> pads.Expression:
        expr = pads.field("split").isin(list(self.splits))
        if self.subsets:
            expr &= pads.field("subset").isin(list(self.subsets))
        if label is not None:
            expr &= pads.field("label") == label
        if holdout and self.holdout is not None:
            ids = pa.array(self.held_out_ids, type=self.dataset.schema.field("content_id").type)
            held = pads.field("content_id").isin(ids)  # false for a null content_id
            expr &= held if self.holdout == "only" else ~held
        if shots and self.shots:
            few = ~pads.field("subset").isin(list(self.shots))
            for subset, keys in self.shot_keys.items():
                few |= (pads.field("subset") == subset) & pads.field("key").isin(keys)
            expr &= few
        return expr

    def table(self, label: str | None = None, columns: Sequence[str] = ("feature", "label")) -> pa.Table:
        """The source's rows (of one label, or all) as one Arrow table: a small store in memory."""
        return self.dataset.to_table(columns=list(columns), filter=self._filter(label))

    def counts(self) -> dict[str, int]:
        return {label: self.dataset.count_rows(filter=self._filter(label)) for label in ("real", "fake")}

    def _read(self, label: str, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(features float32 [n, d], labels [n]) chunks of one label, files in a random order."""
        fragments = list(self.dataset.get_fragments())
        for i in rng.permutation(len(fragments)):
            scan = fragments[i].to_batches(columns=["feature"], filter=self._filter(label),
                                           batch_size=self.read_rows, batch_readahead=1, fragment_readahead=1)
            for batch in scan:
                if batch.num_rows:
                    x = gfeatures.feature_matrix(batch.column(0)).astype(self.dtype, copy=False)
                    yield x, np.full(batch.num_rows, int(label == "fake"), dtype=np.int64)

    def _chunks(self, kind: Kind, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if kind != "all":
            yield from self._read(kind, rng)
            return
        left = self.counts()
        streams = {label: self._read(label, rng) for label in ("real", "fake")}
        while streams:
            weights = np.array([max(left[label], 1) for label in streams], dtype=float)
            label = list(streams)[rng.choice(len(streams), p=weights / weights.sum())]
            chunk = next(streams[label], None)
            if chunk is None:
                del streams[label]
                continue
            left[label] -= len(chunk[1])
            yield chunk

    def batches(self, kind: Kind, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(epoch_seed(self.seed, kind, epoch))
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        held = 0
        for x, y in self._chunks(kind, rng):
            xs.append(x)
            ys.append(y)
            held += len(y)
            if held >= self.buffer_rows:
                # Emit whole batches from the shuffled buffer, keep the remainder for mixing.
                bx, by = _shuffled(xs, ys, rng)
                keep = held % self.batch_size
                yield from _split(bx[keep:], by[keep:], self.batch_size)
                xs, ys, held = [bx[:keep]], [by[:keep]], keep
        if held:
            bx, by = _shuffled(xs, ys, rng)
            yield from _split(bx, by, self.batch_size)


class CachingSource:
    """A ``BatchSource`` over a stream that is costly to start, e.g. a Ray Data shard, where every
    epoch is a new streaming execution with seconds of start-up (that dominates small stores: the
    demo runs ~80 epochs over a few thousand rows).

    ``stream(kind, epoch)`` yields (x [n, d], y [n]) numpy chunks of one epoch. The first epoch of
    each kind also keeps the rows it streamed, as ``dtype``, while they stay under ``cache_rows``;
    later epochs reshuffle that copy in memory (a permutation seeded by (seed, kind, epoch)). Past
    the cap the copy is dropped and every epoch streams: memory is bounded by the cap, never by
    the store. ``counts`` is None: the caller checks the rows before the run; ``rows`` ({"real": n,
    "fake": n}, when the caller knows them) only sizes progress displays.
    """

    def __init__(self, stream: Callable[[Kind, int], Iterator[tuple[np.ndarray, np.ndarray]]], *, dim: int,
                 batch_size: int, seed: int = 0, cache_rows: int = 0, dtype: str = "float16",
                 rows: dict[str, int] | None = None):
        self.stream, self.dim, self.batch_size, self.seed = stream, dim, batch_size, seed
        self.cache_rows, self.dtype, self.rows = cache_rows, np.dtype(dtype), rows
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def counts(self) -> None:
        return None

    def batches(self, kind: Kind, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if kind in self.cache:
            x, y = self.cache[kind]
            order = np.random.default_rng(epoch_seed(self.seed, kind, epoch)).permutation(len(y))
            for start in range(0, len(y), self.batch_size):  # index per batch: no permuted copy
                take = order[start:start + self.batch_size]
                yield torch.from_numpy(x[take].astype(np.float32)), torch.from_numpy(y[take])
            return
        kept_x, kept_y, held, caching = [], [], 0, self.cache_rows > 0
        for x, y in self.stream(kind, epoch):
            if caching:
                kept_x.append(x.astype(self.dtype))
                kept_y.append(y)
                held += len(y)
                if held > self.cache_rows:  # over the cap: stream every epoch
                    kept_x, kept_y, caching = [], [], False
            yield torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
        if caching and kept_y:
            self.cache[kind] = (np.concatenate(kept_x), np.concatenate(kept_y))


def _shuffled(xs: list[np.ndarray], ys: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return x[order], y[order]


def _split(x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(y), batch_size):
        yield torch.from_numpy(x[start:start + batch_size]).float(), torch.from_numpy(y[start:start + batch_size])


def synthetic_clusters(n_per_class: int, dim: int, *, generator_shift: int = 0, shift: float = 1.5,
                       block: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable stand-in features for tests, benchmarks and smoke runs: ``n_per_class`` reals
    ~ N(0, I) and as many fakes ~ N(mu, I), where the fake generator number ``generator_shift``
    moves coordinates ``[block*g, block*(g+1))`` by ``shift`` (so generators 0 and 1 are "seen"
    and "unseen" directions). Returns (x [2n, dim] float32, y [2n] int64, reals first)."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.zeros(dim)
    mu[block * generator_shift: block * (generator_shift + 1)] = shift
    x = torch.cat([torch.randn(n_per_class, dim, generator=gen), torch.randn(n_per_class, dim, generator=gen) + mu])
    y = torch.cat([torch.zeros(n_per_class, dtype=torch.int64), torch.ones(n_per_class, dtype=torch.int64)])
    return x, y
