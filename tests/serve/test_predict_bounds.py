"""``gendet predict`` reads within bounds and fails before scoring: a FIFO or a device is an item
error (never a hang), a file over the size cap is refused, an unwritable ``--out`` and a tracking
server that does not answer are one line before any image is read."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import free_port

from gendet.serve import predict
from pipelines import cli


@pytest.fixture(scope="module")
def scorer(tiny_detector_dir):
    return predict.load_scorer(tiny_detector_dir)


def test_a_fifo_and_a_device_are_item_errors_not_hangs(scorer, tiny_images, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    started = time.monotonic()
    rows = predict.predict(scorer, [str(tmp_path), "/dev/zero", str(tiny_images[0])])
    assert time.monotonic() - started < 60
    by_path = {r["path"]: r for r in rows}
    assert by_path[str(fifo)]["error"].startswith("not a regular file")
    assert by_path["/dev/zero"]["error"].startswith("not a regular file")
    assert "score" in by_path[str(tiny_images[0])]


def test_a_file_over_the_cap_is_refused_unread(scorer, tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "MAX_ITEM_BYTES", 1000)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 5000)
    (row,) = predict.predict(scorer, [str(big)])
    assert row["error"].startswith("too_large") and row["verdict"] == "error"  # never a "real"
    assert row["probability"] is None and row["score"] is None and row["is_fake"] is None


def test_an_unwritable_out_fails_before_any_image_is_scored(tiny_detector_dir, tiny_images, capsys):
    code = cli.main(["predict", "--model", tiny_detector_dir, str(tiny_images[0]), "--out", "/proc/gendet-out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gendet: error: --out /proc/gendet-out: cannot write here")


def test_a_dead_tracking_server_is_one_line_in_seconds(tiny_images, capsys):
    started = time.monotonic()
    code = cli.main(["predict", "--model", "models:/gendet@champion", str(tiny_images[0]),
                     "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.monotonic() - started < 30
    assert len(err) == 1 and "does not answer" in err[0], err


def test_credentials_in_an_input_url_are_not_printed(tiny_detector_dir, tmp_path, capsys):
    dead = f"http://alice:s3cret@127.0.0.1:{free_port()}/x.png"
    code = cli.main(["predict", "--model", tiny_detector_dir, dead, str(tmp_path / "gone.png")])
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and rows[0]["path"] == f"http://***@{dead.split('@', 1)[1]}"
    assert "s3cret" not in out + err
