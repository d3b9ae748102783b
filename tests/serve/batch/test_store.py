"""``gendet score`` in one process (``--local``): one row per input, bad inputs as ``error`` rows,
incremental reruns, a killed run's leftovers redone; the rows equal ``gendet predict``'s."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from gendet.serve.batch.store import DONE_DIR, PartCollector, done_markers
from gendet.serve.predict import predict
from pipelines.score import ScoreJob, run


@pytest.fixture
def uploads(tmp_path, tiny_images):
    """Good PNG/JPEG files mixed with broken ones: zero bytes, truncated, not an image."""
    root = tmp_path / "uploads"
    (root / "day2").mkdir(parents=True)
    for i, p in enumerate(tiny_images[:4]):
        shutil.copy(p, root / ("day2" if i % 2 else ".") / p.name)
    (root / "zero.png").write_bytes(b"")
    (root / "cut.jpg").write_bytes(tiny_images[0].read_bytes()[:300])
    (root / "day2" / "text.png").write_text("not an image")
    return root


def rows_of(out) -> dict:
    tables = [pq.read_table(p).to_pylist() for p in sorted(out.glob("*.parquet"))]
    return {r["id"]: r for t in tables for r in t}


def test_one_row_per_input_broken_ones_error_others_as_predict_scores_them(uploads, tmp_path, tiny_detector_dir):
    out = tmp_path / "scores"
    summary = run(ScoreJob(source=str(uploads), out=str(out), model=tiny_detector_dir, local=True, rows_per_part=3))
    rows = rows_of(out)
    assert sorted(rows) == ["cut.jpg", "day2/img1.png", "day2/img3.png", "day2/text.png", "img0.jpg", "img2.jpg", "zero.png"]
    errors = {i: r["error"].split(":")[0] for i, r in rows.items() if r["verdict"] == "error"}
    assert errors == {"cut.jpg": "corrupt_image", "day2/text.png": "not_an_image", "zero.png": "empty_image"}
    assert all(rows[i]["probability"] is None for i in errors)  # never a verdict, never a score
    expected = {r["path"]: r for r in predict(tiny_detector_dir, [str(uploads)])}
    for i, row in rows.items():
        if i not in errors:
            want = expected[str(uploads / i)]
            assert row["probability"] == pytest.approx(want["probability"], rel=1e-5) and row["verdict"] == want["verdict"]
            assert [row["band_low"], row["band_high"]] == want["band"] and row["model"] == tiny_detector_dir
            assert row["encoder"] == "spectrum:v1" and row["path"] == str(uploads / i)
    assert summary["rows_written"] == 7 and summary["parts_written"] == 3 and summary["verdicts"]["error"] == 3
    assert sum(summary["verdicts"].values()) == 7 and len(done_markers(str(out))) == 3


def test_a_rerun_writes_nothing_and_new_files_are_scored_alone(uploads, tmp_path, tiny_detector_dir, tiny_images):
    out = tmp_path / "scores"
    job = ScoreJob(source=str(uploads), out=str(out), model=tiny_detector_dir, local=True, rows_per_part=3)
    run(job)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run(job)
    assert again["rows_written"] == 0 and again["already_scored"] == 7 and again["total_rows"] == 7
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    shutil.copy(tiny_images[5], uploads / "day2" / "late.png")
    added = run(job)
    assert added["rows_written"] == 1 and added["parts_written"] == 1 and added["total_rows"] == 8
    new = [p for p in out.glob("*.parquet") if p.name not in stamps]
    assert len(new) == 1 and pq.read_table(new[0])["id"].to_pylist() == ["day2/late.png"]


def test_a_killed_runs_unmarked_file_is_removed_and_its_inputs_scored_again(uploads, tmp_path, tiny_detector_dir):
    out = tmp_path / "scores"
    job = ScoreJob(source=str(uploads), out=str(out), model=tiny_detector_dir, local=True, rows_per_part=3)
    run(job)
    marker = sorted((out / DONE_DIR).iterdir())[0]
    marker.unlink()  # killed between its file and its marker
    redo = run(job)
    assert redo["parts_written"] == 1 and redo["rows_written"] == 3 and redo["total_rows"] == 7
    assert len(rows_of(out)) == 7 and len(list(out.glob("*.parquet"))) == 3  # no row counted twice
    assert run(ScoreJob(source=str(uploads), out=str(out), model=tiny_detector_dir, local=True, rows_per_part=3,
                        mode="overwrite"))["rows_written"] == 7


def test_a_row_delivered_twice_counts_once():
    collector = PartCollector()
    batch = {"part": ["p", "p"], "index": [0, 0], "n_in_part": [2, 2],
             **{c: ["x", "x"] for c in ("id", "path", "label", "verdict", "error", "model", "encoder", "encoder_digest",
                                        "mask")},
             **{c: [0.5, 0.5] for c in ("probability", "band_low", "band_high", "fake_fraction")}}
    assert collector.add(batch) == [] and collector.pending == ["p"]
    (name, table), = collector.add({**batch, "index": [1, 0]})
    assert name == "p" and table["index"].to_pylist() == [0, 1] and collector.pending == []


def test_features_a_store_holds_are_scored_without_decoding_and_shards_with_unlabelled_samples_are_not(
        tmp_path, tiny_detector_dir):
    """``--features``: a shard the store holds is scored from its rows (its image-quarantined samples as
    error rows); a shard whose samples extraction left out for their metadata is read from its images,
    so none of them is lost as "quarantined"."""
    from gendet.extract.config import ExtractConfig
    from gendet.extract.runner import run_local
    from helpers.bad_shards import image_bytes, meta, raw_tar, write_bad_shard, write_good_shards

    shards, features = tmp_path / "shards", tmp_path / "features"
    write_good_shards(str(shards), "good", n_shards=2, per_shard=5)
    write_good_shards(str(tmp_path / "more"), "images", n_shards=1, per_shard=4)
    expected = write_bad_shard(str(shards / "bad-000000.tar"))
    (shards / "q-000000.tar").write_bytes(raw_tar([("q_ok.png", image_bytes(1)), ("q_ok.json", meta()),
                                                    ("q_zero.jpg", b""), ("q_zero.json", meta())]))
    run_local(ExtractConfig(shards=str(shards), features=str(features), encoder="spectrum:v1", decode_workers=0))
    shutil.copy(tmp_path / "more" / "images-000000.tar", shards / "images-000000.tar")  # not in the store
    (shards / "late-000000.tar").write_bytes((shards / "good-000000.tar").read_bytes())
    (shards / "good-000001.tar").write_bytes((shards / "good-000001.tar").read_bytes() + b"\0" * 1024)  # replaced since
    stored = run(ScoreJob(source=str(shards), out=str(tmp_path / "a"), model=tiny_detector_dir, local=True,
                          features=str(features)))
    assert sorted(stored["parts_from_store"]) == ["good-000000", "q-000000"]  # good-000001 changed: read again
    assert stored["rows_written"] == 10 + 2 + 4 + 5 + len(expected)
    fresh = run(ScoreJob(source=str(shards), out=str(tmp_path / "b"), model=tiny_detector_dir, local=True))
    assert fresh["parts_from_store"] == [] and fresh["rows_written"] == stored["rows_written"]
    a, b = rows_of(tmp_path / "a"), rows_of(tmp_path / "b")
    for key in (k for k in a if k.startswith("good")):
        assert a[key]["probability"] == pytest.approx(b[key]["probability"], abs=2e-3)  # float16 features, same images
    assert a["no_label"]["verdict"] != "error" and a["zero_bytes"]["verdict"] == "error"  # bad-000000: from its images
    assert a["q_zero"]["error"] == "quarantined: empty_image" and a["q_ok"]["verdict"] != "error"  # the store's quarantine
