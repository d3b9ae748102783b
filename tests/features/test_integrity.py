"""The store's integrity by content (gendet.features.store, gendet.extract.manifest): a done marker
deleted, cut or edited, a shard whose samples reappear under another name, rows that are not what
the stats say, and an input replaced at the same size and mtime are each found and named, never
scored around."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from gendet import GendetError
from gendet.eval.scoring import score_store
from gendet.extract.config import ExtractConfig
from gendet.extract.runner import run_local
from gendet.features.store import resolve_variant
from helpers.bad_shards import write_good_shards


@pytest.fixture
def extracted(tmp_path):
    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "p", n_shards=3, per_shard=4)
    cfg = ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=store, decode_workers=0)
    run_local(cfg)
    return folder, store, cfg, resolve_variant(store)


@pytest.mark.parametrize("damage", ["delete", "cut", "edit"])
def test_a_done_marker_gone_or_unreadable_is_named_and_redone(extracted, damage):
    folder, store, cfg, variant = extracted
    marker = os.path.join(variant.url, "p-000001.stats.json")
    if damage == "delete":
        os.remove(marker)
    elif damage == "cut":
        with open(marker, "r+b") as f:
            f.truncate(40)
    else:
        stats = json.load(open(marker))
        json.dump({**stats, "written": "4"}, open(marker, "w"))
    with pytest.raises(GendetError) as err:
        score_store({}, variant, ("train",))  # evaluate's reader: the subset's rows must not just drop out
    msg = str(err.value)
    assert "p-000001.stats.json" in msg and "gendet extract" in msg and "\n" not in msg
    again = run_local(cfg)
    assert again["shards_written"] == ["p-000001"] and again["store_rows"] == 12


def test_rows_that_are_not_what_the_stats_say_are_damaged(extracted):
    folder, store, cfg, variant = extracted
    marker = os.path.join(variant.url, "p-000002.stats.json")
    stats = json.load(open(marker))
    json.dump({**stats, "written": 3, "quarantined": stats["quarantined"] + 1}, open(marker, "w"))
    summary = run_local(cfg)  # the manifest counts the files, and finds this one holds 4
    assert "p-000002" in summary["store_damaged"] and "holds 4 rows, its stats say 3" in summary["store_damaged"]["p-000002"]


def test_a_shard_copied_under_two_names_is_refused(extracted):
    folder, store, cfg, variant = extracted
    shutil.copy(folder / "p-000000.tar", folder / "q-000000.tar")
    run_local(cfg)
    with pytest.raises(GendetError, match="q-000000.parquet: holds samples of p-000000 again"):
        score_store({}, resolve_variant(store), ("train",))


def test_verify_finds_an_input_replaced_at_the_same_size_and_mtime(extracted, tmp_path):
    folder, store, cfg, variant = extracted
    tar = folder / "p-000002.tar"
    stat = os.stat(tar)
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # inside the first member's bytes: same size
    tar.write_bytes(bytes(data))
    os.utime(tar, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert run_local(cfg)["shards_done"] == 0  # size and mtime cannot tell
    verified = run_local(dataclasses.replace(cfg, mode="verify"))
    assert verified["shards_written"] == ["p-000002"] and "sha256 differs" in verified["shards_redone"]["p-000002"]
