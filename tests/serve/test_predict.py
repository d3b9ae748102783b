"""``gendet predict``: folders, URLs and bad items, through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image

from gendet import GendetError
from gendet.method.gendet.detector import Detector
from gendet.serve import predict
from gendet.serve import scorer as scorer_mod
from pipelines import cli

BAD_IMAGE = ("not_an_image", "corrupt_image", "truncated_image")  # extract's quarantine reasons


@pytest.fixture(scope="module")
def scorer(tiny_detector_dir):
    return predict.load_scorer(tiny_detector_dir)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory, tiny_images):
    """Images in a folder and a subfolder, a corrupt .jpg, a decompression bomb, a text file."""
    root = tmp_path_factory.mktemp("messy")
    (root / "sub").mkdir()
    for i, p in enumerate(tiny_images[:4]):
        shutil.copy(p, root / ("sub" if i % 2 else ".") / p.name)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "notes.txt").write_text("not an image and not an image name: skipped in folders")
    # a tiny PNG that would decode to 90M pixels: above PIL's decompression-bomb limit
    Image.new("1", (9500, 9500)).save(root / "sub" / "bomb.png")
    return root


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cli_scores_a_folder_and_reports_each_bad_item(messy_folder, tiny_detector_dir, tiny_scores, tmp_path, capsys):
    out = tmp_path / "scores"
    missing = str(tmp_path / "missing.png")
    code = cli.main(["predict", "--model", tiny_detector_dir, str(messy_folder), missing,
                     "--batch-size", "2", "--out", str(out)])
    assert code == 0
    rows = _lines((out / "predictions.jsonl").read_text())
    names = [r["path"].removeprefix(str(messy_folder) + "/") for r in rows]
    assert names == ["corrupt.jpg", "img0.jpg", "img2.jpg", "sub/bomb.png", "sub/img1.png", "sub/img3.png",
                     str(tmp_path / "missing.png")]
    by_name = dict(zip(names, rows))
    assert by_name["corrupt.jpg"]["error"].split(":")[0] in BAD_IMAGE
    assert by_name["sub/bomb.png"]["error"].startswith("decompression_bomb")
    assert by_name[missing]["error"] == "not found"
    threshold = Detector.load(tiny_detector_dir).threshold
    expected = {p.rsplit("/", 1)[-1]: s for p, s in tiny_scores.items()}
    for name in ("img0.jpg", "img2.jpg", "sub/img1.png", "sub/img3.png"):
        row = by_name[name]
        assert set(row) == {"path", "verdict", "probability", "band", "model", "encoder", "encoder_digest", "error",
                            "score", "is_fake", "threshold"}
        assert row["model"] == tiny_detector_dir and row["probability"] == row["score"] and row["error"] == ""
        assert row["score"] == pytest.approx(expected[name.rsplit("/", 1)[-1]], rel=1e-5)
        assert row["threshold"] == threshold and row["is_fake"] == (row["score"] > threshold)
    assert capsys.readouterr().out == ""  # --out: nothing on stdout


def test_cli_exits_non_zero_when_nothing_could_be_scored(messy_folder, tiny_detector_dir, tmp_path, capsys):
    code = cli.main(["predict", "--model", tiny_detector_dir, str(messy_folder / "corrupt.jpg"),
                     str(tmp_path / "nope.png")])
    captured = capsys.readouterr()
    assert code == 2
    errors = [r["error"] for r in _lines(captured.out)]
    assert errors[0].split(":")[0] in BAD_IMAGE and errors[1] == "not found"
    assert "no image could be scored" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_fsspec_urls_are_read_and_unreachable_ones_reported(scorer, tiny_images, tiny_scores):
    with fsspec.open("memory://predict-test/a.png", "wb") as f:
        f.write(tiny_images[1].read_bytes())
    dead = f"http://127.0.0.1:{free_port()}/x.png"  # nothing listens there
    rows = predict.predict(scorer, ["memory://predict-test", f"file://{tiny_images[0]}", dead])
    assert [r["path"] for r in rows] == ["memory://predict-test/a.png", f"file://{tiny_images[0]}", dead]
    assert rows[0]["score"] == pytest.approx(tiny_scores[str(tiny_images[1])], rel=1e-5)
    assert rows[1]["score"] == pytest.approx(tiny_scores[str(tiny_images[0])], rel=1e-5)
    # fsspec's http filesystem reports a refused connection as FileNotFoundError: told apart here
    assert rows[2]["verdict"] == "error" and rows[2]["score"] is None
    assert rows[2]["error"].startswith("unreachable: ClientConnectorError")


def test_a_missing_file_on_a_live_server_is_not_found(tmp_path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        item = predict.read_item(f"http://127.0.0.1:{server.server_address[1]}/missing.png")
        assert str(item) == "not found"
    finally:
        server.shutdown()


def test_threshold_override_and_batching_do_not_change_scores(tiny_detector_dir, tiny_images):
    scorer = predict.load_scorer(tiny_detector_dir, threshold=0.0)
    one_by_one = predict.predict(scorer, [str(p) for p in tiny_images], batch_size=1)
    together = predict.predict(scorer, [str(p) for p in tiny_images], batch_size=64)
    np.testing.assert_allclose([r["score"] for r in one_by_one], [r["score"] for r in together], rtol=1e-5)
    assert all(r["is_fake"] and r["threshold"] == 0.0 for r in together)


def test_bad_model_uris_fail_before_reading_any_image(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default store is ./mlflow.db
    for uri in (str(tmp_path / "absent"), str(tmp_path)):  # no directory; a directory of neither kind
        with pytest.raises(GendetError, match="neither a saved detector"):
            predict.load_scorer(uri)
    with pytest.raises(GendetError, match="cannot resolve this alias"):
        predict.load_scorer("models:/no-such-model@champion")
    with pytest.raises(GendetError, match="cannot load this MLflow model"):
        predict.load_scorer("models:/no-such-model/1")
    with pytest.raises(GendetError, match="batch-size"):
        list(predict.iter_predictions(None, ["x"], batch_size=0))


class _Payload:
    """Unpickling this writes a marker file: what a foreign pickled python model could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_a_foreign_mlflow_model_is_refused_without_running_it(tmp_path):
    import pickle

    marker = tmp_path / "ran"
    model = tmp_path / "foreign"
    model.mkdir()
    (model / "python_model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (model / "model_code.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (model / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
                                   "    python_model: python_model.pkl\n")
    with pytest.raises(GendetError, match="an MLflow model, but not a gendet detector"):
        predict.load_scorer(str(model))
    assert not marker.exists()  # nothing in the model was unpickled or executed


def test_a_detector_for_other_preprocessing_is_refused(tiny_detector_dir, tmp_path):
    other = Detector.load(tiny_detector_dir)
    other.preprocess_hash = "0" * 64  # trained on features made with another preprocessing
    with pytest.raises(GendetError, match="preprocess_hash"):
        predict.load_scorer(other.save(str(tmp_path / "other")))


def test_one_thread_if_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with scorer_mod.one_thread_if(True):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with scorer_mod.one_thread_if(False):
            assert torch.get_num_threads() == 2
        with pytest.raises(ValueError), scorer_mod.one_thread_if(True):
            raise ValueError("restored even on errors")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_predict_sees_the_features_the_extraction_job_stored(scorer, tiny_images, tmp_path):
    """No train/serve skew: ``gendet extract`` (uint8 pixels through DataLoader workers, finished
    by the mapper) and ``predict`` compute the same features for the same file, bit for bit."""
    import pyarrow.parquet as pq

    from gendet.data.shards import Sample, ShardWriter
    from gendet.extract.config import ExtractConfig
    from gendet.extract.runner import run_local
    from gendet.features.store import resolve_variant

    with ShardWriter(str(tmp_path / "shards"), "files", max_count=100) as writer:
        for i, path in enumerate(tiny_images):
            writer.write(Sample(key=f"f{i}", image=Path(path).read_bytes(), image_ext=Path(path).suffix[1:],
                                label="real", subset="files"))
    run_local(ExtractConfig(encoder="spectrum:v1", shards=str(tmp_path / "shards"), features=str(tmp_path / "store"),
                            feature_dtype="float32", batch_size=4, decode_workers=1))
    variant = resolve_variant(str(tmp_path / "store"), scorer.encoder.name)
    stored = np.stack(pq.read_table(f"{variant.url}/files-000000.parquet")["feature"].to_numpy(zero_copy_only=False))
    served = scorer.features([scorer_mod.decode_image(Path(p).read_bytes()) for p in tiny_images])
    assert stored.shape == served.shape == (len(tiny_images), scorer.encoder.dim)
    # the same decode and preprocessing; only the encoder's float rounding depends on the batch's
    # size with torch 2.14 (batch 4 there, 6 here): ~1e-7
    assert np.allclose(stored, served, rtol=1e-5, atol=1e-5)
