"""`gendet evaluate` on a real local Ray: metrics.json with every contract key, Table 4 over the
degraded variants of a store, logging into a given MLflow run, and bad input as one line."""

import json

import mlflow
import pytest
import torch

from gendet.method.gendet.detector import Detector, build_method_nets
from gendet.method.gendet.networks import Arch
from helpers.cli import run_cli
from helpers.synthetic_store import ENCODER, PHASH, write_synthetic_store
from pipelines import evaluate

SUBSET_KEYS = {"n_real", "n_fake", "acc", "real_acc", "fake_acc", "ap", "best_acc", "acc_calibrated",
               "real_acc_calibrated", "fake_acc_calibrated"}


@pytest.fixture
def detector_dir(tmp_path):
    torch.manual_seed(0)
    arch = Arch(feature_dim=64, layers=1, heads=2)
    det = Detector(method="gendet", arch=arch, nets=build_method_nets("gendet", arch), encoder=ENCODER,
                   preprocess_hash=PHASH, threshold=0.5, target_fpr=0.05)
    return det.save(str(tmp_path / "detector"))


def test_evaluate_writes_metrics_and_table4_and_logs_to_a_run(ray_local, tmp_path, detector_dir, capsys, monkeypatch):
    store = str(tmp_path / "store")
    write_synthetic_store(store)
    write_synthetic_store(store, degrade="jpeg:30", seed=1)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Name the experiment: an earlier test may have left another store's experiment id active.
    experiment_id = mlflow.MlflowClient().create_experiment("evaluate-test",
                                                            artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        pass
    out = tmp_path / "eval"
    assert run_cli(evaluate, [store, "--model", detector_dir, "--out", str(out), "--degrade", "all",
                              "--mlflow-run", run.info.run_id, "--ray-min-rows", "0"]) == 0  # on Ray Data
    in_process = tmp_path / "in-process"  # a store this small is scored in the driver by default: same numbers
    assert run_cli(evaluate, [store, "--model", detector_dir, "--out", str(in_process), "--degrade", "all"]) == 0
    assert json.loads((in_process / "metrics.json").read_text()) == json.loads((out / "metrics.json").read_text())
    assert (out / "table.md").read_text().startswith("|")

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"model", "encoder", "threshold", "calibrated_threshold", "target_fpr", "mean_acc", "mAP"} <= set(metrics)
    assert set(metrics["subsets"]) == {"seen", "unseen"}
    assert all(SUBSET_KEYS <= set(v) and v["n_real"] == v["n_fake"] == 30 for v in metrics["subsets"].values())
    assert set(metrics["degraded"]) == {"none", "jpeg:30"}
    assert metrics["degraded"]["none"]["mean_acc"] == metrics["mean_acc"]
    printed = capsys.readouterr().out
    assert "| degradation |" in printed and "| jpeg:30 |" in printed
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    assert logged.data.metrics["eval_mean_acc"] == pytest.approx(metrics["mean_acc"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluate")}
    assert artifacts == {"evaluate/metrics.json", "evaluate/table.md"}


def test_bad_model_and_wrong_store_are_one_line_errors(ray_local, tmp_path, detector_dir, capsys):
    store = str(tmp_path / "store")
    write_synthetic_store(store, dim=32)
    assert run_cli(evaluate, [store, "--model", str(tmp_path / "nothing")]) == 2
    assert "neither a saved detector" in capsys.readouterr().err
    assert run_cli(evaluate, [store, "--model", detector_dir, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "do not match" in err and len(err.splitlines()) == 1
