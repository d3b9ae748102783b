"""Writes off the driver (``gendet.extract.parts``), without Ray: encoder workers write part files
and return a few bytes per row; the driver's tracker says when a shard is whole; the finalizer
writes the same shard files the plain runner writes. A batch delivered twice (a task Ray ran
again after a lost node) changes nothing; a retried finalize returns the stats it wrote."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from gendet import GendetError
from gendet.extract.config import ExtractConfig
from gendet.extract.mapper import PartWritingMapper
from gendet.extract.parts import PartTracker, clear_parts, finalize_shard, parts_url
from gendet.extract.runner import prepare, run_local
from helpers.bad_shards import write_good_shards, write_truncated_shard


def summaries_of(plan, mapper):
    """Every shard's reader batches through the part-writing mapper, as the actors would."""
    return [mapper(batch) for url in plan.todo for batch in plan.reader.read(url)]


def test_parts_make_the_same_store_as_the_plain_runner_and_duplicates_count_once(tmp_path):
    rows = write_good_shards(str(tmp_path / "shards"), "p", n_shards=2, per_shard=5)
    plain = run_local(ExtractConfig(encoder="spectrum:v1",
                                    shards=str(tmp_path / "shards"), features=str(tmp_path / "plain"), batch_size=3))
    plan = prepare(ExtractConfig(encoder="spectrum:v1",
                                 shards=str(tmp_path / "shards"), features=str(tmp_path / "parts"), batch_size=3))
    mapper = PartWritingMapper(plan.info.encoder, variant_url=plan.info.url)
    summaries = summaries_of(plan, mapper)
    assert all(set(s) == {"shard", "index", "n_rows", "error"} for s in summaries)  # no features to the driver

    tracker, complete = PartTracker(), []
    for summary in summaries[:-1]:
        complete += tracker.add(summary)
    assert complete == ["p-000000"] and list(tracker.pending) == ["p-000001"]
    assert tracker.add(summaries[0]) == []  # a batch run twice: nothing new, no shard finished twice
    assert tracker.add(summaries[-1]) == ["p-000001"] and not tracker.pending

    duplicate = mapper(next(iter(plan.reader.read(plan.todo[0]))))  # rewritten parts of shard 0
    assert len(glob.glob(os.path.join(parts_url(plan.info.url, "p-000000"), "*.parquet"))) > 2
    stats = [finalize_shard(plan.info, stem) for stem in ("p-000000", "p-000001")]
    assert [s["written"] for s in stats] == [5, 5] and duplicate["shard"][0] == "p-000000"
    assert not glob.glob(os.path.join(plan.info.url, "_parts", "*", "*.parquet"))
    for stem in ("p-000000", "p-000001"):
        ours = pq.read_table(os.path.join(plan.info.url, f"{stem}.parquet"))
        theirs = pq.read_table(os.path.join(plain["output"], f"{stem}.parquet"))
        assert ours.column("key").to_pylist() == theirs.column("key").to_pylist()
        np.testing.assert_allclose(np.stack(ours.column("feature").to_numpy(zero_copy_only=False)),
                                   np.stack(theirs.column("feature").to_numpy(zero_copy_only=False)), atol=1e-6)
    assert sorted(k for s in ("p-000000", "p-000001") for k in pq.read_table(
        os.path.join(plan.info.url, f"{s}.parquet")).column("key").to_pylist()) == sorted(r["key"] for r in rows)
    assert finalize_shard(plan.info, "p-000000") == stats[0]  # a retry after it finished: the same stats


def test_a_cut_shard_fails_without_a_marker_and_leaves_no_parts(tmp_path):
    (tmp_path / "shards").mkdir()
    write_truncated_shard(str(tmp_path / "shards" / "cut-000000.tar"))
    plan = prepare(ExtractConfig(encoder="spectrum:v1",
                                 shards=str(tmp_path / "shards"), features=str(tmp_path / "store"), batch_size=4))
    tracker = PartTracker()
    done = [s for summary in summaries_of(plan, PartWritingMapper(plan.info.encoder, variant_url=plan.info.url))
            for s in tracker.add(summary)]
    assert done == ["cut-000000"]  # the end row came, with the reader's error
    with pytest.raises(GendetError, match="cut-000000"):
        finalize_shard(plan.info, "cut-000000")
    assert not os.path.exists(os.path.join(plan.info.url, "cut-000000.stats.json"))
    assert not os.path.exists(parts_url(plan.info.url, "cut-000000"))


def test_missing_rows_are_refused_and_clear_parts_removes_leftovers(tmp_path):
    write_good_shards(str(tmp_path / "shards"), "m", n_shards=1, per_shard=6)
    plan = prepare(ExtractConfig(encoder="spectrum:v1",
                                 shards=str(tmp_path / "shards"), features=str(tmp_path / "store"), batch_size=2))
    mapper = PartWritingMapper(plan.info.encoder, variant_url=plan.info.url)
    batches = list(plan.reader.read(plan.todo[0]))
    mapper(dict(batches[0]))  # a run killed after its first batch (the mapper takes the pixels out)
    with pytest.raises(GendetError, match="incomplete"):
        finalize_shard(plan.info, "m-000000")
    mapper(dict(batches[0]))
    clear_parts(plan.info.url, ["m-000000"])
    assert not os.path.exists(parts_url(plan.info.url, "m-000000"))
