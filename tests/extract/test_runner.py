"""The extraction job without Ray (``gendet.extract.run_local``) on real shards: the store it
writes, incremental reruns, variants side by side, and bad input refused before any work."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from gendet import GendetError
from gendet.cli import main as gendet_main
from gendet.extract.config import ExtractConfig
from gendet.extract.runner import prepare, run_local
from gendet.features.store import feature_schema, list_variants, resolve_variant
from helpers.bad_shards import write_bad_shard, write_good_shards


@pytest.fixture()
def shards(tmp_path):
    folder = tmp_path / "shards"
    good = write_good_shards(str(folder), "good", n_shards=2, per_shard=5)
    bad = write_bad_shard(str(folder / "bad-000000.tar"))
    return folder, good, bad


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_store_rows_schema_quarantine_and_counts(shards, tmp_path):
    folder, good, bad = shards
    summary = run_local(ExtractConfig(shards=str(folder), features=str(tmp_path / "store"), batch_size=4, num_workers=2))
    kept = [k for k, r in bad.items() if not r]
    assert summary["images"] == len(good) + len(kept) and summary["shards_failed"] == {}
    assert summary["read"] == summary["images"] + summary["quarantined"] == len(good) + len(bad)
    variant = resolve_variant(str(tmp_path / "store"), "spectrum:v1")
    assert variant.dim == 392 and set(variant.shards) == {"good-000000", "good-000001", "bad-000000"}
    table = pq.read_table(os.path.join(variant.url, "good-000001.parquet"))
    assert table.schema == feature_schema(392, "float16")
    assert table["key"].to_pylist() == [r["key"] for r in good[5:]]  # tar order
    assert table["label"].to_pylist() == [r["label"] for r in good[5:]]
    assert table["content_id"].to_pylist() == [r["content_id"] for r in good[5:]]
    assert set(table["encoder"].to_pylist()) == {"spectrum:v1"} and set(table["degrade"].to_pylist()) == {""}
    assert pq.read_table(os.path.join(variant.url, "bad-000000.parquet"))["key"].to_pylist() == kept
    quarantine = pq.read_table(os.path.join(variant.url, "bad-000000.quarantine.parquet")).to_pylist()
    assert {q["key"]: q["reason"] for q in quarantine} == {k: r for k, r in bad.items() if r}
    reasons = {r for r in bad.values() if r}
    assert set(summary["quarantined_by_reason"]) == reasons


def test_rerun_writes_nothing_and_a_deleted_stats_file_redoes_only_its_shard(shards, tmp_path):
    folder, good, _ = shards
    cfg = ExtractConfig(shards=str(folder), features=str(tmp_path / "store"), batch_size=4, num_workers=0)
    run_local(cfg)
    variant_dir = tmp_path / "store" / os.path.basename(resolve_variant(cfg.features).url)
    before = mtimes(variant_dir)
    again = run_local(cfg)
    assert again["shards_done"] == 0 and again["shards_skipped"] == 3
    assert {k: v for k, v in mtimes(variant_dir).items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    (variant_dir / "good-000000.stats.json").unlink()
    redo = run_local(cfg)
    assert redo["shards_done"] == 1 and redo["images"] == 5
    after = mtimes(variant_dir)
    changed = sorted(k for k in after if after[k] != before.get(k) and k != "manifest.json")
    assert changed == ["good-000000.parquet", "good-000000.quarantine.parquet", "good-000000.stats.json"]
    assert resolve_variant(cfg.features).shards == ("bad-000000", "good-000000", "good-000001")


def test_other_encoder_and_degrade_write_beside(shards, tmp_path):
    folder, good, _ = shards
    store = str(tmp_path / "store")
    base = dict(shards=str(folder / "good-000000.tar"), features=store, batch_size=8, num_workers=0)
    run_local(ExtractConfig(**base))
    run_local(ExtractConfig(**base, degrade="jpeg:65"))
    run_local(ExtractConfig(**base, encoder="open_clip:GenDet-Debug-ViT/none", feature_dtype="float32"))
    variants = {(v.encoder, v.degrade): v for v in list_variants(store)}
    assert set(variants) == {("spectrum:v1", ""), ("spectrum:v1", "jpeg:65"), ("open_clip:GenDet-Debug-ViT/none", "")}
    assert len({v.url for v in variants.values()}) == 3
    clip = pq.read_table(os.path.join(variants["open_clip:GenDet-Debug-ViT/none", ""].url, "good-000000.parquet"))
    assert clip.schema == feature_schema(64, "float32") and clip.num_rows == 5
    plain = pq.read_table(os.path.join(variants["spectrum:v1", ""].url, "good-000000.parquet"))
    jpeg = pq.read_table(os.path.join(variants["spectrum:v1", "jpeg:65"].url, "good-000000.parquet"))
    assert set(jpeg["degrade"].to_pylist()) == {"jpeg:65"}
    assert plain["feature"].to_pylist() != jpeg["feature"].to_pylist()


@pytest.mark.parametrize("change, needle", [
    ({"shards": "{empty}"}, "no .tar shards found"),
    ({"shards": "{missing}/x-000000.tar"}, "shard not found"),
    ({"encoder": "clipx:ViT"}, "unknown encoder"),
    ({"degrade": "sharpen:3"}, "unknown kind"),
    ({"weights": "{missing}/w.bin", "encoder": "open_clip:GenDet-Debug-ViT/none"}, "weights file not found"),
])
def test_bad_input_fails_in_one_line_before_any_work(shards, tmp_path, change, needle):
    folder, _, _ = shards
    (tmp_path / "empty").mkdir()
    fields = {"shards": str(folder), "features": str(tmp_path / "store"), "encoder": "spectrum:v1"}
    fields.update({k: v.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for k, v in change.items()})
    with pytest.raises(GendetError) as err:
        prepare(ExtractConfig(**fields))
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "store").exists()


def test_cli_verb_reports_bad_input_as_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = gendet_main(["extract", str(tmp_path / "empty"), str(tmp_path / "store"), "--local"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("gendet: error:") and "no .tar shards" in err and "\n" not in err


def test_unreadable_shard_is_reported_and_the_others_written(shards, tmp_path):
    folder, good, _ = shards
    (folder / "broken-000000.tar").mkdir()  # listed as a shard, but cannot be read
    summary = run_local(ExtractConfig(shards=str(folder), features=str(tmp_path / "store"), max_retries=1,
                                      num_workers=0))
    assert list(summary["shards_failed"]) == ["broken-000000"]
    assert "broken-000000.tar: cannot read shard" in summary["shards_failed"]["broken-000000"]
    assert summary["shards_done"] == 3 and "broken-000000" not in resolve_variant(str(tmp_path / "store")).shards
