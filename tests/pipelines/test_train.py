"""`gendet train` on Ray Train: 2 CPU workers with DDP on a small store, MLflow logging, registry."""

import dataclasses
import glob
import json
import os
import tempfile

import pytest
from mlflow import MlflowClient

from gendet.features.sources import ParquetSource
from gendet.method.gendet.detector import Detector
from helpers.cli import job_of, run_cli
from helpers.listeners import beyond_loopback, listeners_while
from helpers.synthetic_store import write_synthetic_store
from pipelines import train as train_pipeline

pytestmark = pytest.mark.slow


def _args(store, out, *extra):
    return [store, "--train-subsets", "seen", "--out", str(out), "--preset", "debug", "--rotations", "1",
            "--batch-size", "32", "--num-workers", "2", "--cpus-per-worker", "0.5", "--register", "gendet",
            "--gate.real-floor", "0.5", *extra]


def test_two_worker_training_logs_registers_and_gates(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = str(tmp_path / "store")
    variant = write_synthetic_store(store)
    out = tmp_path / "out"
    rendezvous = set(glob.glob(os.path.join(tempfile.gettempdir(), "gendet-pg-*")))
    # val is scored (as on GenImage): calibration holds out part of the training rows instead
    with listeners_while(os.getpid()) as seen:  # DDP's rendezvous and gloo stay on loopback (issue 29)
        assert run_cli(train_pipeline, _args(store, out, "--eval-splits", "val", "--gate.split", "test")) == 0
    assert any("RayTrainWorker" in title for title in seen.values()), seen  # the check saw the workers' ports
    assert beyond_loopback(seen) == {}, f"listening beyond loopback: {beyond_loopback(seen)}"
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "gendet-pg-*"))) == rendezvous  # its file removed

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["subsets"]) == {"seen", "unseen"}
    for key in ("mean_acc", "mAP", "mean_acc_calibrated", "calibrated_threshold", "target_fpr"):
        assert key in metrics
    assert metrics["subsets"]["seen"]["acc"] > 0.7  # the seen generator is learnable
    for method in ("linear_probe", "teacher", "ts_real", "ts_fake", "gendet"):
        det = Detector.load(str(out / "detectors" / method))
        assert det.method == method and det.target_fpr is not None
        assert (out / "metrics" / f"{method}.json").exists()

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["gate"]["promoted"] is True and summary["gate"]["version"] == "1"
    assert summary["calibration_split"] == "train_holdout"
    assert Detector.load(str(out / "detectors" / "gendet")).calibration_split == "train_holdout"
    training_rows = sum(ParquetSource(variant, subsets=("seen",), holdout="exclude").counts().values())
    row_count_of_test = sum(ParquetSource(variant, subsets=("seen",), splits=("test",)).counts().values())
    pretrain = json.loads((out / "history.json").read_text())[0]  # rank 0's share of 2 workers
    assert pretrain["stage"] == "pretrain" and 2 * pretrain["rows"] in (training_rows, training_rows - 1)
    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.data.params["rotations"] == "1" and run.data.params["calibration_split"] == "train_holdout"
    assert "plots/training_diagnostics.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "gendet/seen/acc" in run.data.metrics and "linear_probe/unseen/ap" in run.data.metrics
    assert any(k.startswith("loss/real.gendet") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/acc_by_method.png" in artifacts and "plots/discrepancy_gendet.png" in artifacts
    assert str(client.get_model_version_by_alias("gendet", "champion").version) == "1"

    # A second run is registered as challenger; with a huge margin the gate refuses and says why.
    out2 = tmp_path / "out2"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["tracking_uri"])
    # (the gate reads the gendet rung alone: the second run trains only it)
    # (streamed from Parquet this time: Ray Data's filter leaves the same held-out rows out)
    assert run_cli(train_pipeline, _args(store, out2, "--gate.margin", "0.5", "--name", "second", "--methods", "gendet",
                                     "--eval-splits", "val", "--gate.split", "test", "--in-memory-rows", "0")) == 0
    pretrain = json.loads((out2 / "history.json").read_text())[0]
    assert 2 * pretrain["rows"] in (training_rows, training_rows - 1)
    gate = json.loads((out2 / "train_summary.json").read_text())["gate"]
    assert gate["promoted"] is False and "margin" in gate["reason"]
    # both models judged the gate's split image by image: a paired interval per family, around its difference
    assert gate["split"] == "test" and set(gate["families"]) == {"seen", "unseen"}
    for row in gate["families"].values():
        paired = row["paired"]
        assert paired["n"] == row_count_of_test and paired["lo"] <= paired["diff"] <= paired["hi"]
        assert paired["diff"] == pytest.approx(row["challenger"]["acc_calibrated"] - row["champion"]["acc_calibrated"])
    assert str(client.get_model_version_by_alias("gendet", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("gendet", "champion").version) == "1"


def test_bad_training_request_fails_before_ray(tmp_path, capsys):
    store = str(tmp_path / "store")
    write_synthetic_store(store, per_split={"train": 10, "test": 10})
    assert run_cli(train_pipeline, [store, "--train-subsets", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "no rows of subset nope in split train" in capsys.readouterr().err
    assert run_cli(train_pipeline, [store, "--train-subsets", "seen", "--rotations", "0", "--out", str(tmp_path / "o")]) == 2
    assert run_cli(train_pipeline, [store, "--train-subsets", "", "--out", str(tmp_path / "o")]) == 2
    assert "--train-subsets: empty" in capsys.readouterr().err  # not "every subset" by accident
    assert run_cli(train_pipeline, [store, "--train-subsets", "seen", "--num-workers", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--num-workers 0: must be >= 1" in capsys.readouterr().err
    # calibration is never fitted on rows that are missing or scored
    assert run_cli(train_pipeline, [store, "--train-subsets", "seen", "--set", "calibration_split=val",
                                "--out", str(tmp_path / "o")]) == 2
    assert "no val rows" in capsys.readouterr().err


def _train_args(store, out, storage, name, *extra):
    return [store, "--train-subsets", "seen", "--out", str(out), "--preset", "debug", "--rotations", "2",
            "--batch-size", "32", "--methods", "gendet", "--storage", str(storage), "--name", name, *extra]


def test_worker_killed_mid_run_resumes_from_last_checkpoint(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = str(tmp_path / "store")
    write_synthetic_store(store, per_split={"train": 60, "val": 20, "test": 20})
    out = tmp_path / "out"
    job = job_of(train_pipeline, _train_args(store, out, tmp_path / "ckpt", "killed-worker"))
    train_pipeline.run(dataclasses.replace(job, fault_after_stage="r01.b"))  # a test-only field: no flag
    assert json.loads((out / "fault-injected").read_text())["stage"] == "r01.b"
    resume = json.loads((out / "resume.json").read_text())
    assert resume["restored"] is True  # the restarted worker group began from a checkpoint
    stages = [row["stage"] for row in json.loads((out / "history.json").read_text())]
    assert stages.count("r01.b") == 1 and stages[-1] == "classifier"  # no stage ran twice in the record
    assert Detector.load(str(out / "detectors" / "gendet")).method == "gendet"


def test_driver_killed_then_same_command_resumes(ray_local, tmp_path, monkeypatch, capsys):
    import signal
    import subprocess
    import sys
    import time

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = str(tmp_path / "store")
    write_synthetic_store(store, per_split={"train": 400, "val": 20, "test": 20})
    out, storage = tmp_path / "out", tmp_path / "ckpt"
    args = _train_args(store, out, storage, "killed-driver", "--batch-size", "8")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill only once Ray Train has *registered* a checkpoint (its manager snapshot names one): a
    # checkpoint_* folder appears before its upload ends, and a run killed then has nothing to
    # restore (the race this test lost once under CI's load).
    snapshot = storage / "killed-driver" / "checkpoint_manager_snapshot.json"

    def registered() -> bool:
        try:
            return "checkpoint_" in snapshot.read_text()
        except OSError:
            return False

    deadline = time.time() + 240
    try:
        while time.time() < deadline and not registered():
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.5)
        assert registered(), "no checkpoint was registered in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "detectors").exists()
    assert run_cli(train_pipeline, args) == 0  # the same command again
    assert json.loads((out / "resume.json").read_text())["restored"] is True
    assert Detector.load(str(out / "detectors" / "gendet")).method == "gendet"
    # Ray Train would resume that run whatever the command asks: another alpha is one line, before Ray
    # (it was 3 retries and 9 tracebacks naming a temporary folder)
    capsys.readouterr()
    assert run_cli(train_pipeline, [*args, "--set", "alpha=0.2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run 'killed-driver' there trained with another train_config.alpha" in err[0], err

