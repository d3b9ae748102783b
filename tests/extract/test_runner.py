"""The extraction job without Ray (``gendet.extract.run_local``) on real shards: the store it
writes, incremental reruns, variants side by side, and bad input refused before any work."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from gendet import GendetError
from gendet.extract.config import ExtractConfig
from gendet.extract.runner import prepare, run_local
from gendet.features.store import feature_files, feature_schema, list_variants, resolve_variant
from helpers.bad_shards import write_bad_shard, write_good_shards
from pipelines.cli import main as gendet_main


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
    summary = run_local(ExtractConfig(encoder="spectrum:v1",
                                      shards=str(folder), features=str(tmp_path / "store"), batch_size=4, decode_workers=2))
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
    cfg = ExtractConfig(encoder="spectrum:v1",
                        shards=str(folder), features=str(tmp_path / "store"), batch_size=4, decode_workers=0)
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
    base = dict(shards=str(folder / "good-000000.tar"), features=store, batch_size=8, decode_workers=0)
    run_local(ExtractConfig(**base, encoder="spectrum:v1"))
    run_local(ExtractConfig(**base, encoder="spectrum:v1", degrade="jpeg:65"))
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
    summary = run_local(ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=str(tmp_path / "store"), max_retries=1,
                                      decode_workers=0))
    assert list(summary["shards_failed"]) == ["broken-000000"]
    assert "broken-000000.tar: cannot read shard" in summary["shards_failed"]["broken-000000"]
    assert summary["shards_done"] == 3 and "broken-000000" not in resolve_variant(str(tmp_path / "store")).shards


# --- integrity: what was read, what was written, and one writer at a time (issue 15) ---

def test_cut_off_or_empty_shard_fails_and_its_complete_copy_is_extracted_on_rerun(tmp_path):
    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "ok", n_shards=1, per_shard=4)
    full = tmp_path / "full"
    write_good_shards(str(full), "late", n_shards=2, per_shard=4)
    whole = {p.name: p.read_bytes() for p in full.iterdir()}
    (folder / "late-000000.tar").write_bytes(whole["late-000000.tar"][: len(whole["late-000000.tar"]) // 2])
    (folder / "late-000001.tar").write_bytes(b"")  # an upload that has not started writing yet
    cfg = ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=store, decode_workers=0, max_retries=0)
    first = run_local(cfg)
    assert sorted(first["shards_failed"]) == ["late-000000", "late-000001"] and first["shards_done"] == 1
    assert not list((tmp_path / "store").glob("*/late-*.stats.json"))
    assert gendet_main(["extract", str(folder), store, "--local", "--decode-workers", "0", "--max-retries", "0",
                        "--encoder", "spectrum:v1"]) == 1
    for name, data in whole.items():  # the uploads complete
        (folder / name).write_bytes(data)
    second = run_local(cfg)
    assert second["shards_written"] == ["late-000000", "late-000001"] and second["shards_failed"] == {}
    assert second["store_rows"] == 12


def test_a_shard_replaced_after_extraction_is_redone(tmp_path):
    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "s", n_shards=2, per_shard=3)
    cfg = ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=store, decode_workers=0)
    assert run_local(cfg)["store_rows"] == 6
    other = tmp_path / "other"
    write_good_shards(str(other), "s", n_shards=1, per_shard=5)  # same name, new content
    (folder / "s-000000.tar").write_bytes((other / "s-000000.tar").read_bytes())
    again = run_local(cfg)
    assert again["shards_written"] == ["s-000000"] and "changed since it was read" in again["shards_redone"]["s-000000"]
    assert again["store_rows"] == 8 and run_local(cfg)["shards_done"] == 0  # and then it is done


def test_deleted_or_cut_parquet_is_named_with_the_fix_and_repaired_by_the_rerun(tmp_path):
    from gendet.eval.scoring import score_store  # evaluate's reader (the Ray one lists the same feature_files)

    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "p", n_shards=3, per_shard=4)
    cfg = ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=store, decode_workers=0)
    run_local(cfg)
    variant = resolve_variant(store)
    os.remove(os.path.join(variant.url, "p-000000.parquet"))
    cut = os.path.join(variant.url, "p-000001.parquet")
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    with pytest.raises(GendetError) as err:
        score_store({}, variant, ("train",))
    msg = str(err.value)
    assert "p-000000.parquet is missing" in msg and "1 more" in msg and f"gendet extract {folder} {store}" in msg
    assert "\n" not in msg
    repaired = run_local(cfg)
    assert sorted(repaired["shards_redone"]) == ["p-000000", "p-000001"] and repaired["store_rows"] == 12
    assert repaired["store_damaged"] == {}
    assert len(pq.read_table(os.path.join(variant.url, "p-000001.parquet"))) == 4


def test_manifest_rows_are_counted_in_the_files(tmp_path):
    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "m", n_shards=2, per_shard=4)
    run_local(ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=store, decode_workers=0))
    variant = resolve_variant(store)
    os.remove(os.path.join(variant.url, "m-000001.parquet"))
    from gendet.extract.manifest import VariantInfo, rebuild_manifest

    info = VariantInfo(store=store, encoder="spectrum:v1", preprocess_hash=variant.preprocess_hash, degrade="",
                       dtype="float16")
    manifest = rebuild_manifest(info)
    assert manifest["rows"] == 4 and manifest["shards"] == ["m-000000"] and "m-000001" in manifest["damaged"]


def test_a_run_is_refused_while_another_holds_the_store(tmp_path):
    from gendet.extract.lease import StoreLease

    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "l", n_shards=1, per_shard=3)
    cfg = ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=store, decode_workers=0)
    variant_url = prepare(cfg).info.url
    with StoreLease(variant_url, what="the float32 run"):
        with pytest.raises(GendetError) as err:  # e.g. a float16 run started during a float32 one
            run_local(ExtractConfig(encoder="spectrum:v1",
                                    shards=str(folder), features=store, decode_workers=0, feature_dtype="float32"))
        assert "being written by the float32 run" in str(err.value) and "\n" not in str(err.value)
    assert run_local(cfg)["store_rows"] == 3  # released: the next run goes ahead
    stale = StoreLease(variant_url, ttl=0.2, what="a run that died")
    stale.acquire()
    stale._stop.set()  # it dies: no more renewals
    import time

    time.sleep(0.5)
    assert run_local(ExtractConfig(encoder="spectrum:v1",
                                   shards=str(folder), features=store, decode_workers=0, mode="overwrite"))["shards_done"] == 1


def test_two_concurrent_runs_leave_one_complete_store_without_duplicates(tmp_path):
    import threading

    folder, store = tmp_path / "shards", str(tmp_path / "store")
    rows = write_good_shards(str(folder), "c", n_shards=3, per_shard=4)
    barrier, results = threading.Barrier(2), []

    def one_run():
        barrier.wait()
        try:
            results.append(run_local(ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=store, decode_workers=0)))
        except GendetError as exc:
            results.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    refused = [r for r in results if isinstance(r, GendetError)]
    done = [r for r in results if isinstance(r, dict)]
    assert len(results) == 2 and len(done) >= 1 and all("being written by" in str(r) for r in refused)
    keys = [k for f in feature_files(resolve_variant(store).url) for k in pq.read_table(f, columns=["key"])["key"].to_pylist()]
    assert sorted(keys) == sorted(r["key"] for r in rows)  # every row once


def test_a_lease_left_by_a_killed_process_on_this_machine_is_taken_over(tmp_path):
    import json
    import socket
    import subprocess
    import sys
    import time

    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "k", n_shards=1, per_shard=3)
    cfg = ExtractConfig(encoder="spectrum:v1", shards=str(folder), features=store, decode_workers=0)
    variant_url = prepare(cfg).info.url
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "store").joinpath(os.path.basename(variant_url), "_lease.json").write_text(json.dumps(
        {"owner": "a killed run", "token": "x", "host": socket.gethostname(), "pid": int(dead.stdout),
         "expires": time.time() + 3600}))
    assert run_local(cfg)["store_rows"] == 3  # not refused for the hour the dead lease had left


def test_decode_workers_die_with_a_sigkilled_run(tmp_path):
    """A DataLoader worker blocked reading a shard (here: a server that never answers) is killed
    with its run, not left behind until the read gives up."""
    import functools
    import http.server
    import signal
    import subprocess
    import sys
    import threading
    import time

    write_good_shards(str(tmp_path / "shards"), "slow", n_shards=2, per_shard=2)
    reading = threading.Event()

    class Stalls(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.endswith(".tar"):
                reading.set()
                time.sleep(90)  # longer than the test waits
            return super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Stalls, directory=str(tmp_path / "shards")))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run = subprocess.Popen([sys.executable, "-m", "pipelines.extract", f"http://127.0.0.1:{server.server_address[1]}/",
                            str(tmp_path / "store"), "--local", "--decode-workers", "2", "--encoder", "spectrum:v1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=False)
    try:
        assert reading.wait(120), "the run never read a shard"
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout.split()]
        assert len(children) >= 2, children  # the decode workers
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in children):
            time.sleep(0.2)
        left = [pid for pid in children if os.path.exists(f"/proc/{pid}")]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert left == [], "decode workers outlived the run"
    finally:
        if run.poll() is None:
            run.kill()
        server.shutdown()
