"""Batch sources: the in-memory one and the streaming Parquet reader over a real feature store."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gendet import GendetError
from gendet import io as gio
from gendet.features.sources import BatchSource, CachingSource, ParquetSource, TensorSource
from gendet.features.store import MANIFEST, feature_schema, variant_name
from helpers.synthetic_store import write_done_marker

DIM = 8


def write_shard(path, rows):
    """rows: (key, label, subset, split, feature value) -> one feature file of the store schema."""
    schema = feature_schema(DIM, "float16")
    cols = {name: [] for name in schema.names}
    for key, label, subset, split, value in rows:
        for name, v in (("key", key), ("shard", path.stem), ("label", label), ("subset", subset),
                        ("content_id", key), ("split", split), ("encoder", "enc"), ("preprocess_hash", "abc"),
                        ("degrade", ""), ("feature", [value] * DIM)):
            cols[name].append(v)
    pq.write_table(pa.table(cols, schema=schema), path, row_group_size=7)
    write_done_marker(str(path.parent), path.stem, rows=len(rows), dim=DIM, encoder="enc", preprocess_hash="abc",
                      dtype="float16")


@pytest.fixture
def store(tmp_path):
    """Two shards: one all real, one all fake; subsets sdv14 and midjourney; train and val rows.
    Each row's feature value is its row number, so every row can be recognised."""
    variant = tmp_path / variant_name("enc", "abc")
    variant.mkdir()
    def row(label, i, value):
        return (f"{label[0]}{i}", label, "sdv14" if i < 30 else "midjourney", "train" if i % 5 else "val", value)

    reals = [row("real", i, float(i)) for i in range(40)]
    fakes = [row("fake", i, float(100 + i)) for i in range(40)]
    write_shard(variant / "000000.parquet", reals)
    write_shard(variant / "000001.parquet", fakes)
    pq.write_table(pa.table({"shard": ["x"], "key": ["bad"], "reason": ["unreadable"]}), variant / "000000.quarantine.parquet")
    gio.write_json_atomic(str(variant / MANIFEST),
                          {"encoder": "enc", "preprocess_hash": "abc", "dim": DIM, "shards": ["000000", "000001"]})
    return tmp_path


def values(batches):
    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1] == DIM
    assert torch.equal(x.min(dim=1).values, x.max(dim=1).values)  # rows were not mixed up
    return x[:, 0].long().tolist(), y.tolist()


def test_parquet_source_filters_subset_and_split(store):
    source = ParquetSource.from_store(str(store), subsets=["sdv14"], splits=["train"], batch_size=5, buffer_rows=8)
    assert isinstance(source, BatchSource) and source.dim == DIM and source.encoder == "enc"
    expected_real = [i for i in range(30) if i % 5]
    assert source.counts() == {"real": 24, "fake": 24}
    for kind, expected in (("real", expected_real), ("fake", [100 + i for i in expected_real])):
        got, labels = values(source.batches(kind, epoch=0))
        assert sorted(got) == expected and set(labels) == {int(kind == "fake")}
    got, labels = values(source.batches("all", epoch=0))
    assert sorted(got) == expected_real + [100 + i for i in expected_real]
    assert labels == [int(v >= 100) for v in got]


QUOTED = ("it's \"sd\" v1.4", "mid journey') or ('1'='1")  # quotes and spaces: filters are expressions, not text


@pytest.fixture
def quoted_store(tmp_path):
    variant = tmp_path / variant_name("enc", "abc")
    variant.mkdir()
    rows = [(f"r{i}", "real" if i % 2 else "fake", QUOTED[i % 3 == 0], "train" if i % 4 else "val it's", float(i))
            for i in range(24)]
    write_shard(variant / "000000.parquet", rows)
    gio.write_json_atomic(str(variant / MANIFEST), {"encoder": "enc", "preprocess_hash": "abc", "dim": DIM, "shards": ["000000"]})
    return tmp_path, rows


def test_subset_and_split_names_with_quotes_and_spaces_select_exactly_their_rows(quoted_store):
    store, rows = quoted_store
    for subset in QUOTED:
        for split in ("train", "val it's"):
            source = ParquetSource.from_store(str(store), subsets=[subset], splits=[split], batch_size=4)
            got = sorted(values(source.batches("all", epoch=0))[0])
            assert got == sorted(int(v) for _, _, s, sp, v in rows if s == subset and sp == split) and got
    held = ParquetSource.from_store(str(store), subsets=list(QUOTED), holdout="only", holdout_fraction=0.5)
    kept = set(held.table(columns=["key"]).column(0).to_pylist())
    assert kept and kept == {k for k, *_ in rows if k in held.held_out_ids}


def test_parquet_source_shuffles_per_epoch_reproducibly_and_mixes_labels(store):
    source = ParquetSource.from_store(str(store), splits=["train", "val"], batch_size=16, buffer_rows=32, seed=1,
                                      dtype="float16")
    epoch0 = values(source.batches("all", epoch=0))[0]
    assert epoch0 == values(source.batches("all", epoch=0))[0]
    assert epoch0 != values(source.batches("all", epoch=1))[0]
    assert sorted(epoch0) == list(range(40)) + list(range(100, 140))
    first = next(iter(source.batches("all", epoch=0)))
    assert 0 < int(first[1].sum()) < 16  # the real-only and fake-only files are interleaved
    sizes = [len(y) for _, y in source.batches("real", epoch=0)]
    assert sizes == [16, 16, 8]


def test_parquet_source_without_features_is_a_clear_error(tmp_path):
    with pytest.raises(GendetError, match="no feature files"):
        ParquetSource(str(tmp_path))


def test_tensor_source_covers_each_kind_once_per_epoch():
    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor([0, 1] * 5)
    source = TensorSource(x, y, batch_size=3, seed=0)
    assert source.counts() == {"real": 5, "fake": 5}
    real = torch.cat([b[0] for b in source.batches("real", 0)]).flatten().tolist()
    assert sorted(real) == [0, 2, 4, 6, 8]
    order0 = torch.cat([b[0] for b in source.batches("all", 0)]).flatten().tolist()
    order1 = torch.cat([b[0] for b in source.batches("all", 1)]).flatten().tolist()
    assert sorted(order0) == list(range(10)) and order0 != order1
    assert np.array_equal(order0, torch.cat([b[0] for b in source.batches("all", 0)]).flatten().numpy())


def test_caching_source_streams_once_then_reshuffles_in_memory():
    calls = []

    def stream(kind, epoch):
        calls.append((kind, epoch))
        x = np.arange(40, dtype=np.float32).reshape(10, 4)
        yield x[:6], np.zeros(6, dtype=np.int64)
        yield x[6:], np.ones(4, dtype=np.int64)

    source = CachingSource(stream, dim=4, batch_size=3, seed=1, cache_rows=100)
    first = [x for x, _ in source.batches("all", 0)]
    second = torch.cat([x for x, _ in source.batches("all", 1)])
    third = torch.cat([x for x, _ in source.batches("all", 2)])
    assert calls == [("all", 0)]  # later epochs come from the copy, not the stream
    assert [len(x) for x in first] == [6, 4] and first[0].dtype == torch.float32
    rows = {tuple(r) for r in torch.cat(first).tolist()}
    assert {tuple(r) for r in second.tolist()} == rows == {tuple(r) for r in third.tolist()}
    assert not torch.equal(second, third)  # a new order every epoch, seeded by (seed, kind, epoch)
    again = CachingSource(stream, dim=4, batch_size=3, seed=1, cache_rows=100)
    list(again.batches("all", 0))
    assert torch.equal(torch.cat([x for x, _ in again.batches("all", 1)]), second)


def test_caching_source_over_its_cap_streams_every_epoch():
    calls = []

    def stream(kind, epoch):
        calls.append(epoch)
        yield np.ones((5, 2), dtype=np.float32), np.zeros(5, dtype=np.int64)

    source = CachingSource(stream, dim=2, batch_size=2, cache_rows=4)  # 5 rows > cap: memory stays bounded
    for epoch in range(3):
        assert sum(len(y) for _, y in source.batches("real", epoch)) == 5
    assert calls == [0, 1, 2] and source.cache == {}


def test_parquet_source_table_holds_its_filtered_rows(store):
    source = ParquetSource.from_store(str(store), subsets=["sdv14"], splits=["train"])
    assert source.table("real").num_rows == source.counts()["real"] and set(source.table("real")["label"].to_pylist()) == {"real"}
    assert source.table().num_rows == sum(source.counts().values()) and source.table().column_names == ["feature", "label"]


# --- the calibration holdout ---------------------------------------------------------------------
def test_held_out_ids_are_a_stable_hash_of_the_content_id():
    from gendet.features.sources import held_out_ids, in_holdout

    ids = [f"photo-{i}" for i in range(40)]
    # pinned: a change of hash would silently move rows between training and calibration
    assert held_out_ids(ids, 0.25) == ['photo-1', 'photo-12', 'photo-17', 'photo-18', 'photo-24', 'photo-25',
                                       'photo-26', 'photo-27', 'photo-29', 'photo-3', 'photo-33', 'photo-37',
                                       'photo-39', 'photo-6', 'photo-7', 'photo-9']
    assert held_out_ids([*ids, None, "photo-1"], 0.25) == held_out_ids(ids, 0.25)  # distinct, nulls never held
    assert set(held_out_ids(ids, 0.1)) <= set(held_out_ids(ids, 0.25))  # a larger fraction only adds ids
    share = sum(in_holdout(f"x{i}", 0.1) for i in range(20_000)) / 20_000
    assert 0.09 < share < 0.11


def test_holdout_rows_are_disjoint_from_training_rows_and_keep_a_content_id_together(tmp_path):
    from helpers.synthetic_store import write_synthetic_store

    # content_id is shared by a real and a fake row (subset-split-i//2): a group of two
    variant = write_synthetic_store(str(tmp_path), dim=8, per_split={"train": 400, "val": 40})
    selection = dict(subsets=("seen",), splits=("train",), holdout_fraction=0.2)
    columns = ("key", "content_id", "split", "subset", "label")
    train = ParquetSource(variant, holdout="exclude", **selection).table(columns=columns).to_pylist()
    held = ParquetSource(variant, holdout="only", **selection).table(columns=columns).to_pylist()
    everything = ParquetSource(variant, subsets=("seen",), splits=("train",)).table(columns=columns).to_pylist()
    assert {r["key"] for r in train}.isdisjoint(r["key"] for r in held)
    assert sorted(r["key"] for r in train + held) == sorted(r["key"] for r in everything)
    assert {r["content_id"] for r in train}.isdisjoint(r["content_id"] for r in held)  # groups are never cut
    assert {(r["split"], r["subset"]) for r in held} == {("train", "seen")}
    assert {r["label"] for r in held} == {"real", "fake"}
    assert 0.1 < len(held) / len(everything) < 0.3
    source = ParquetSource(variant, holdout="only", batch_size=16, **selection)
    assert source.counts() == {"real": sum(r["label"] == "real" for r in held), "fake": sum(r["label"] == "fake" for r in held)}
    assert sum(len(y) for _, y in source.batches("all", 0)) == len(held)  # the streaming reader filters the same
    assert ParquetSource(variant, holdout="only", **selection).held_out_ids == source.held_out_ids  # deterministic


def test_holdout_arguments_are_checked(tmp_path):
    from helpers.synthetic_store import write_synthetic_store

    variant = write_synthetic_store(str(tmp_path), dim=8, per_split={"train": 10})
    with pytest.raises(GendetError, match="holdout="):
        ParquetSource(variant, holdout="some")
    with pytest.raises(GendetError, match="holdout_fraction"):
        ParquetSource(variant, holdout="only", holdout_fraction=1.0)


# --- few-shot rows (TrainConfig shots) -----------------------------------------------------------
def test_shots_keep_n_fakes_and_n_reals_of_a_subset_chosen_by_a_stable_content_hash(tmp_path):
    from helpers.synthetic_store import write_synthetic_store

    variant = write_synthetic_store(str(tmp_path), dim=8, per_split={"train": 200, "test": 20})
    columns = ("key", "content_id", "subset", "label")
    few = ParquetSource(variant, subsets=("seen", "unseen"), shots={"unseen": 7})
    rows = few.table(columns=columns).to_pylist()
    unseen = [r for r in rows if r["subset"] == "unseen"]
    assert sum(r["label"] == "fake" for r in unseen) == 7 and sum(r["label"] == "real" for r in unseen) == 7
    assert sum(r["subset"] == "seen" for r in rows) == 200  # other subsets keep every row
    assert few.counts() == {"real": 107, "fake": 107}
    assert sum(len(y) for _, y in few.batches("all", 0)) == 214  # the streaming reader filters the same
    again = ParquetSource(variant, subsets=("seen", "unseen"), shots={"unseen": 7}, seed=5)
    assert again.shot_keys == few.shot_keys  # deterministic, whatever the seed
    # the hash order of content_id: a bigger N keeps the smaller N's rows (a photo's rows come together)
    more = ParquetSource(variant, subsets=("unseen",), shots={"unseen": 30}).shot_keys["unseen"]
    assert set(few.shot_keys["unseen"]) <= set(more)
    # with the calibration holdout the shots come from the training side only
    held = ParquetSource(variant, subsets=("unseen",), holdout="only", holdout_fraction=0.3)
    train = ParquetSource(variant, subsets=("unseen",), holdout="exclude", holdout_fraction=0.3, shots={"unseen": 7})
    assert set(train.shot_keys["unseen"]).isdisjoint(r["key"] for r in held.table(columns=("key",)).to_pylist())
    assert len(train.table()) == 14
