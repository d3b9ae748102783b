"""The Ray Data extraction job (``pipelines/extract.py``) on a real local Ray: same store as the
plain runner, incremental, resumable after SIGKILL, and submitted with ``ray job submit``."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from gendet.extract.config import ExtractConfig
from gendet.extract.runner import run_local
from gendet.features.store import feature_matrix, resolve_variant
from helpers.bad_shards import write_bad_shard, write_good_shards, write_hostile_shard
from pipelines.extract import build_dataset, extract

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def store_tables(store):
    variant = resolve_variant(store)
    return {os.path.basename(p): pq.read_table(p) for p in sorted(glob.glob(os.path.join(variant.url, "*.parquet")))}


def all_keys(store):
    variant = resolve_variant(store)
    return [k for stem in variant.shards for k in pq.read_table(os.path.join(variant.url, f"{stem}.parquet"))["key"].to_pylist()]


def test_ray_pipeline_writes_the_same_store_as_the_plain_runner(ray_local, tmp_path):
    folder = tmp_path / "shards"
    write_good_shards(str(folder), "good", n_shards=3, per_shard=5)
    write_bad_shard(str(folder / "bad-000000.tar"))
    cfg = ExtractConfig(encoder="spectrum:v1",
                        shards=str(folder), features=str(tmp_path / "ray"), batch_size=4, concurrency=2, read_tasks=2)
    summary = extract(cfg)
    assert summary["shards_done"] == 4 and summary["shards_failed"] == {}
    run_local(ExtractConfig(encoder="spectrum:v1",
                            shards=str(folder), features=str(tmp_path / "plain"), batch_size=7, decode_workers=2))
    ray_tables, plain_tables = store_tables(cfg.features), store_tables(str(tmp_path / "plain"))
    assert list(ray_tables) == list(plain_tables) and len(ray_tables) == 8  # features + quarantine per shard
    for name, table in ray_tables.items():
        # equal but for float rounding: torch 2.14's FFT/einsum results depend on the batch's size
        # (batch 4 here, 7 there), by ~1e-7, which a float16 store can round either way
        other = plain_tables[name]
        meta = [c for c in table.column_names if c != "feature"]
        assert table.select(meta).equals(other.select(meta)), name
        if "feature" in table.column_names:
            assert np.allclose(feature_matrix(table["feature"]), feature_matrix(other["feature"]), rtol=1e-3, atol=1e-3), name
    assert extract(cfg)["shards_done"] == 0  # incremental: nothing left to do


def test_a_hostile_shard_stops_nothing_on_ray(ray_local, tmp_path):
    """The hostile shard of tests/extract/test_hostile.py on Ray Data: its bad samples are quarantined
    with their reasons, every other sample and shard is extracted, the job ends without a failure."""
    folder = tmp_path / "shards"
    write_good_shards(str(folder), "a", n_shards=1, per_shard=4)
    expected = write_hostile_shard(str(folder / "b-000000.tar"), per_format=4)
    write_good_shards(str(folder), "c", n_shards=1, per_shard=4)
    summary = extract(ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=str(tmp_path / "store"),
                                    batch_size=16, read_tasks=1))
    assert summary["shards_failed"] == {} and summary["shards_done"] == 3
    url = resolve_variant(str(tmp_path / "store")).url
    quarantine = pq.read_table(os.path.join(url, "b-000000.quarantine.parquet"))
    reasons = dict(zip(quarantine["key"].to_pylist(), quarantine["reason"].to_pylist()))
    assert all(reasons.get(k, "") == r for k, r in expected.items())
    assert pq.read_table(os.path.join(url, "c-000000.parquet")).num_rows == 4


def test_decoding_stays_in_tasks_apart_from_the_encoder_actors(ray_local, tmp_path):
    write_good_shards(str(tmp_path / "shards"), "one", n_shards=1, per_shard=3)
    from gendet.extract.runner import prepare

    cfg = ExtractConfig(encoder="spectrum:v1", shards=str(tmp_path / "shards"), features=str(tmp_path / "s"), read_tasks=1)
    ds = build_dataset(prepare(cfg))
    assert sum(len(b["index"]) for b in ds.iter_batches(batch_size=None)) == 4  # 3 samples + end row, summarised
    stats = ds.stats()
    assert "MapBatches(ShardReader)->MapBatches(PartWritingMapper)" not in stats
    assert "MapBatches(ShardReader)" in stats and "MapBatches(PartWritingMapper)" in stats


def test_sigkilled_job_resumes_with_every_sample_exactly_once(ray_local, tmp_path):
    folder, store = tmp_path / "shards", tmp_path / "store"
    rows = write_good_shards(str(folder), "k", n_shards=8, per_shard=4, size=(40, 32))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "pipelines.extract", str(folder), str(store), "--batch-size", "2", "--read-tasks", "1",
           "--shared-fs", "--encoder", "spectrum:v1"]  # one machine: its disk is every node's
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not glob.glob(str(store / "*" / "*.stats.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(glob.glob(str(store / "*" / "*.stats.json")))
    assert 1 <= done_at_kill < 8, "the job was not killed mid-run"
    summary = extract(ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=str(store), batch_size=4, read_tasks=2))
    assert summary["shards_skipped"] >= done_at_kill and summary["shards_done"] == 8 - summary["shards_skipped"]
    keys = all_keys(str(store))
    assert sorted(keys) == sorted(r["key"] for r in rows) and len(keys) == len(set(keys))
    assert json.load(open(glob.glob(str(store / "*" / "manifest.json"))[0]))["rows"] == len(rows)


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline_on_a_cluster(ray_head, tmp_path):
    address, env = ray_head
    folder, store = tmp_path / "shards", tmp_path / "store"
    rows = write_good_shards(str(folder), "job", n_shards=2, per_shard=4)
    submit = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--submission-id", "extract-test", "--",
         "python", "-m", "pipelines.extract", str(folder), str(store), "--batch-size", "4", "--read-tasks", "1",
         "--shared-fs", "--encoder", "spectrum:v1"],
        env=env, capture_output=True, text=True, timeout=400)
    status = subprocess.run(["ray", "job", "status", "--address", address, "extract-test"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "extract-test' succeeded" in status.stdout, status.stdout + status.stderr
    assert "extracted 8 images from 2 shards" in submit.stdout
    assert sorted(all_keys(str(store))) == sorted(r["key"] for r in rows)
