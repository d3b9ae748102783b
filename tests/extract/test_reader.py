"""Reader and writer parts of the extraction, alone, on real shards (no Ray)."""

from __future__ import annotations

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


def test_cut_off_shard_keeps_what_came_before_and_says_so(tmp_path, reader):
    total = write_truncated_shard(str(tmp_path / "cut.tar"))
    batches, got = rows_of(reader, tmp_path / "cut.tar")
    good = [k for k, r in got.items() if r == ""]
    assert 0 < len(good) < total and got[""] == END
    broken = [r for b in batches for r in b["reason"] if r == "broken_tar"]
    assert broken == ["broken_tar"]
    assert int(batches[-1]["n_rows"][-1]) == len(good) + 1


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
