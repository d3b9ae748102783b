"""``gendet score`` on a real local Ray: shards without labels and a manifest with the user's ids,
scored by read tasks and an actor pool; the same rows as the one-process run, every input once."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from helpers.bad_shards import raw_tar
from helpers.processes import free_port
from pipelines import cli
from pipelines.score import ScoreJob, run


def rows_of(out) -> dict:
    return {r["id"]: r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}


def shard(path, members: dict[str, bytes]) -> None:
    path.write_bytes(raw_tar(list(members.items())))


def test_ray_scores_shards_and_a_manifest_as_the_local_run_does(ray_local, tmp_path, tiny_images, tiny_detector_dir):
    shards = tmp_path / "shards"
    shards.mkdir()
    shard(shards / "day-000000.tar", {f"k{i}.{p.suffix[1:]}": p.read_bytes() for i, p in enumerate(tiny_images[:3])})
    shard(shards / "day-000001.tar", {"k3.png": tiny_images[3].read_bytes(), "k4.jpg": b"broken",
                                      "k5.jpg": tiny_images[4].read_bytes()})
    on_ray, local = tmp_path / "ray", tmp_path / "local"
    summary = run(ScoreJob(source=str(shards), out=str(on_ray), model=tiny_detector_dir, concurrency=2, batch_size=2))
    run(ScoreJob(source=str(shards), out=str(local), model=tiny_detector_dir, local=True))
    got, want = rows_of(on_ray), rows_of(local)
    assert sorted(p.name for p in on_ray.glob("*.parquet")) == ["day-000000.parquet", "day-000001.parquet"]
    assert sorted(got) == ["k0", "k1", "k2", "k3", "k4", "k5"] and summary["rows_written"] == 6
    assert got["k4"]["verdict"] == "error" and got["k4"]["error"].startswith("not_an_image")
    for key, row in want.items():
        assert got[key]["verdict"] == row["verdict"] and got[key]["error"] == row["error"]
        assert got[key]["probability"] == (None if row["probability"] is None else pytest.approx(row["probability"], rel=1e-5))

    manifest = tmp_path / "uploads.csv"
    (tmp_path / "files").mkdir()
    shutil.copy(tiny_images[5], tmp_path / "files" / "a.png")
    dead = f"http://127.0.0.1:{free_port()}/gone.png"  # nothing listens there
    manifest.write_text(f"id,path\nu-1,files/a.png\nu-2,{dead}\nu-3,files/missing.png\n")
    out = tmp_path / "manifest-scores"
    assert cli.main(["score", str(manifest), str(out), "--model", tiny_detector_dir]) == 0
    rows = rows_of(out)
    assert rows["u-1"]["verdict"] in ("fake", "real", "uncertain") and rows["u-1"]["path"] == str(tmp_path / "files" / "a.png")
    assert rows["u-2"]["error"].startswith("unreachable") and rows["u-3"]["error"] == "not found"
    assert cli.main(["score", str(manifest), str(out), "--model", tiny_detector_dir]) == 0  # nothing new
    assert len(rows_of(out)) == 3
