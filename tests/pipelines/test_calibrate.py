"""``gendet calibrate``: a detector trained on one photo source, recalibrated on another source's
rows, keeps the target real FPR on that source's held-out rows; registered, it names its parent and
goes through the gate."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gendet import GendetError
from gendet.features.sources import ParquetSource
from gendet.features.store import MANIFEST, feature_schema, resolve_variant
from gendet.method.gendet.config import preset
from gendet.method.gendet.detector import Detector, calibrate
from gendet.method.gendet.trainer import train_all
from helpers.synthetic_store import ENCODER, PHASH, write_done_marker, write_synthetic_store
from pipelines import cli
from pipelines.calibrate import CalibrateJob, run

DIM = 32


def add_other_source(variant: str, n: int = 1200, shift: float = 1.6) -> None:
    """Reals of another camera (``ourcam``): centred noise pushed part of the way towards ``seen``'s
    fakes, so a detector calibrated on ``seen``'s reals calls too many of them fake."""
    direction = np.random.default_rng(0).normal(size=DIM) / np.sqrt(DIM)  # write_synthetic_store's "seen" direction
    rng = np.random.default_rng(7)
    rows = []
    for split in ("val", "test"):
        for i in range(n):
            x = rng.normal(size=DIM) + shift * np.sqrt(DIM) * direction
            rows.append({"key": f"ourcam-{split}-{i:05d}", "label": "real", "subset": "ourcam", "split": split,
                         "content_id": f"ourcam-{split}-{i:05d}", "encoder": ENCODER, "preprocess_hash": PHASH,
                         "degrade": "", "shard": "ourcam-000000", "feature": x.astype(np.float32).tolist()})
    pq.write_table(pa.Table.from_pylist(rows, schema=feature_schema(DIM, "float32")), f"{variant}/ourcam-000000.parquet")
    write_done_marker(variant, "ourcam-000000", rows=len(rows), dim=DIM)
    manifest = json.loads(open(f"{variant}/{MANIFEST}").read())
    manifest["shards"].append("ourcam-000000")
    manifest["rows"] += len(rows)
    open(f"{variant}/{MANIFEST}", "w").write(json.dumps(manifest))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(store, a detector trained and calibrated on ``seen``, saved)."""
    root = tmp_path_factory.mktemp("calibrate")
    variant = write_synthetic_store(str(root / "features"), dim=DIM, per_split={"train": 400, "val": 400, "test": 60},
                                    subsets={"seen": 2.0})
    add_other_source(variant)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train = ParquetSource(variant, subsets=("seen",), splits=("train",), batch_size=64)
    cfg = preset("debug", width=16, heads=2, rotations=1, batch_size=64, methods=("gendet",))
    det = train_all(cfg, train, encoder=ENCODER, preprocess_hash=PHASH).detectors["gendet"]
    calibrate(det, ParquetSource(variant, subsets=("seen",), splits=("val",), batch_size=256), 0.05, target_miss=0.05)
    torch.set_num_threads(threads)
    return str(root / "features"), det.save(str(root / "model"))


def test_calibrate_moves_the_real_fpr_of_another_source_to_its_target_on_held_out_rows(world, tmp_path):
    store, model = world
    record = run(CalibrateJob(features=store, subsets=("ourcam",), model=model, out=str(tmp_path / "out")))
    assert record["report_split"] == "test" and record["rows"] == {"real": 1200, "fake": 0}
    assert record["before"]["real_fpr"] > 0.12  # the shipped threshold calls many of this camera's reals fake
    assert abs(record["after"]["real_fpr"] - 0.05) <= 0.02, record  # the target, on rows the fit never read
    assert record["threshold"]["after"] > record["threshold"]["before"] and not record["platt_refit"]
    child = Detector.load(str(tmp_path / "out" / "detector"))
    parent = Detector.load(model)
    assert child.extra["recalibrated_from"] == model and child.calibration_subsets == ("ourcam",)
    assert child.platt == parent.platt and child.band()[0] <= child.threshold  # reals only: the scaling is kept
    x = np.random.default_rng(3).normal(size=(5, DIM)).astype(np.float32)
    np.testing.assert_array_equal(child.margins(x), parent.margins(x))  # the heads are untouched
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["after"] == record["after"]


def test_calibrate_refuses_rows_it_cannot_fit_or_report_in_one_line(world, tmp_path):
    store, model = world
    with pytest.raises(GendetError, match="no rows of nosuch in split val"):
        run(CalibrateJob(features=store, subsets=("nosuch",), model=model, out=str(tmp_path / "o")))
    with pytest.raises(GendetError, match="--report-split val is --split"):
        CalibrateJob(features=store, subsets=("ourcam",), split="val", report_split="val")
    assert not (tmp_path / "o").exists()


def test_calibrate_registers_a_version_naming_its_parent_and_gates_it(world, tmp_path, mlflow_server, monkeypatch,
                                                                      capsys):
    from mlflow import MlflowClient

    store, model = world
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert cli.main(["calibrate", store, "--subsets", "ourcam", "--model", model, "--out", str(tmp_path / "out"),
                     "--register", "ourcam-detector"]) == 0
    line = capsys.readouterr().out
    assert "registered ourcam-detector v1" in line and "real FPR on test" in line
    client = MlflowClient(mlflow_server)
    version = client.get_model_version("ourcam-detector", "1")
    run_tags = client.get_run(version.run_id).data.tags
    assert run_tags["gendet.calibrate.parent"] == model and run_tags["gendet.calibrate.subsets"] == "ourcam"
    assert "gendet.gate.reason" in version.tags  # the gate ran and said why
    assert resolve_variant(store).encoder == ENCODER
