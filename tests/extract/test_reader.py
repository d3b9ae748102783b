"""Reader and writer parts of the extraction, alone, on real shards (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gendet.encoders.registry import load_preprocess
from gendet.extract.reader import END, ShardReader
from gendet.extract.writer import ShardAssembler
from helpers.bad_shards import write_bad_shard, write_good_shards, write_truncated_shard


@pytest.fixture(scope="module")
def reader():
    return ShardReader(load_preprocess("spectrum:v1"), batch_size=5, max_retries=0)


def rows_of(reader, url):
    batches = list(reader.read(str(url)))
    keys = [k for b in batches for k in b["key"]]
    reasons = [r for b in batches for r in b["reason"]]
    return batches, dict(zip(keys, reasons))


def test_every_bad_sample_is_quarantined_with_its_reason(tmp_path, reader):
    expected = write_bad_shard(str(tmp_path / "bad.tar"))
    batches, got = rows_of(reader, tmp_path / "bad.tar")
    end = batches[-1]
    assert end["reason"][-1] == END and end["error"][-1] == ""
    got.pop("")  # the end row
    assert got == expected
    assert int(end["n_rows"][-1]) == len(expected)  # read = kept + quarantined
    images = np.concatenate([b["image"] for b in batches])
    kept = np.concatenate([b["reason"] == "" for b in batches])
    assert images.shape[1:] == (3, 128, 128) and images.dtype == np.uint8  # the mapper finishes them
    assert np.all(images[kept].std(axis=(1, 2, 3)) > 0) and not images[~kept].any()


def test_cut_off_or_empty_shard_ends_with_an_error_not_a_quarantine_row(tmp_path, reader):
    write_truncated_shard(str(tmp_path / "cut.tar"))
    (tmp_path / "empty.tar").write_bytes(b"")
    for name in ("cut.tar", "empty.tar"):
        batches, got = rows_of(reader, tmp_path / name)
        end = batches[-1]
        assert end["reason"][-1] == END and name in end["error"][-1] and "run again once the shard" in end["error"][-1]
        assert "broken_tar" not in got.values()  # the writer fails the shard: no done marker, redone next run


def test_end_row_carries_what_was_read(tmp_path, reader):
    write_good_shards(str(tmp_path), "a", n_shards=1, per_shard=3)
    url = tmp_path / "a-000000.tar"
    source = json.loads(list(reader.read(str(url)))[-1]["source"][-1])
    assert source["size"] == url.stat().st_size and source["version"] == str(url.stat().st_mtime)


def test_missing_shard_ends_with_an_error_naming_it(tmp_path, reader):
    (batch,) = list(reader.read(str(tmp_path / "nope.tar")))
    assert list(batch["reason"]) == [END] and "nope.tar" in batch["error"][0]


def test_assembler_completes_shards_from_out_of_order_and_repeated_rows(tmp_path, reader):
    rows = write_good_shards(str(tmp_path), "a", n_shards=1, per_shard=7)
    batches = list(reader.read(str(tmp_path / "a-000000.tar")))
    for b in batches:  # what the mapper adds
        b["feature"] = np.tile(b["index"][:, None].astype(np.float16), (1, 4))
        b["encode_seconds"] = np.zeros(len(b["index"]))
    assembler = ShardAssembler()
    assert len(batches) == 2 and batches[1]["reason"][-1] == END
    # The last batch (with the end row) first, and twice (a retried task): still incomplete.
    assert not assembler.add(batches[1]) and not assembler.add(batches[1])
    (shard,) = assembler.add(batches[0])
    assert shard.stem == "a-000000" and shard.dim == 4 and not assembler.pending
    assert [shard.samples[i][0] for i in sorted(shard.samples)] == [r["key"] for r in rows]
    assert [int(shard.samples[i][-1][0]) for i in sorted(shard.samples)] == list(range(7))
