"""`gendet train-gamma` on Ray Train: two CPU workers with DDP on a token store made by the real
`extract --local --tokens` (spectrum:v1, 8x8 tokens), per-epoch checkpoints, a driver that dies and the same command that
resumes, MLflow logging (a real tracking server), the registry and the gate."""

from __future__ import annotations

import dataclasses
import json

import pytest
from mlflow import MlflowClient

from gendet import GendetError
from gendet.features.tokens import load_token_rows
from gendet.method.gamma.detector import GammaDetector
from helpers.cli import job_of, run_cli
from helpers.token_store import write_masked_shards, write_token_store
from pipelines import train_gamma
from pipelines.cli import main as gendet_main

pytestmark = pytest.mark.slow

TINY = ["--set", "width=16", "--set", "layers=1", "--set", "heads=2", "--set", "epochs=2", "--set", "batch_size=8",
        "--set", "lr=0.003"]


def test_two_workers_train_resume_log_register(ray_local, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)  # FEATURES as a user types it, relative: the Ray workers still find it
    store, out, storage = "store", tmp_path / "out", tmp_path / "ckpt"
    write_masked_shards(tmp_path / "shards", n=48, splits=("train", "train", "val", "test"))
    assert gendet_main(["extract", str(tmp_path / "shards"), store, "--local", "--tokens", "--encoder", "spectrum:v1"]) == 0
    args = [store, "--train-subsets", "sd,inpaint-inpaint_f8", "--out", str(out), "--storage", str(storage),
            "--name", "gamma-run", "--num-workers", "2", "--cpus-per-worker", "0.5", "--register", "gamma-test",
            "--gate.real-floor", "0.0", *TINY]
    # The first attempt dies after epoch 1 with no retries left: an error line naming the fix
    dies = dataclasses.replace(job_of(train_gamma, [*args, "--max-failures", "0"]), stop_after_epoch=1)  # a test-only field
    with pytest.raises(GendetError, match="rerun the same command"):
        train_gamma.run(dies)
    assert json.loads((out / "resume.json").read_text()) == {"restored": False, "epoch": 0}
    assert not (out / "model").exists()

    assert run_cli(train_gamma, [*args[:-1], "epochs=3"]) == 2  # another config on that checkpoint: refused before Ray
    assert gendet_main(["train-gamma", *args]) == 0  # the same command again: resumes after epoch 1
    assert json.loads((out / "resume.json").read_text()) == {"restored": True, "epoch": 1}
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]  # epoch 0 not run again

    det = GammaDetector.load(str(out / "model"))
    assert det.sources == ("camera", "inpaint_f8", "sd") and det.calibration_split == "val" and det.target_fpr == 0.05
    assert det.grid == (8, 8) and det.encoder == "spectrum:v1" and det.preprocess_hash
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["subsets"]) == {"sd", "inpaint-inpaint_f8"} and metrics["mAP"] is not None
    masked = metrics["subsets"]["inpaint-inpaint_f8"]
    assert masked["pixel_f1"] is not None and masked["pixel_iou"] is not None and masked["n_masked"] == 3
    assert "pixel_f1" not in metrics["subsets"]["sd"]  # no masks there
    assert metrics["pixel"]["families"]["inpaint_f8"]["n"] == 3

    summary = json.loads((out / "train_summary.json").read_text())
    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["run_id"])
    assert run.data.params["width"] == "16" and run.data.params["sources"] == "camera,inpaint_f8,sd"
    assert "gamma/inpaint-inpaint_f8/pixel_f1" in run.data.metrics and "gamma/sd/acc" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/seg")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/gamma.json", "model/model.safetensors"} <= artifacts
    assert "plots/gamma_overlays.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    version = client.get_model_version_by_alias("gamma-test", "challenger")
    assert str(version.version) == summary["gate"]["version"] == "1" and version.run_id == run.info.run_id
    assert summary["gate"]["promoted"] is True
    assert str(client.get_model_version_by_alias("gamma-test", "champion").version) == "1"

    # `gendet evaluate` scores the registered GAMMA model on the token variant: the same numbers
    evaluated = tmp_path / "eval"
    assert gendet_main(["evaluate", store, "--model", "models:/gamma-test@champion", "--out", str(evaluated),
                        "--mlflow-run", run.info.run_id]) == 0
    again = json.loads((evaluated / "metrics.json").read_text())
    for key in ("mean_acc", "mAP", "mean_pixel_f1", "mean_pixel_iou", "calibrated_threshold"):
        assert again[key] == pytest.approx(metrics[key]), key
    assert "eval_mean_pixel_f1" in client.get_run(run.info.run_id).data.metrics


def test_bad_requests_fail_before_ray(tmp_path, capsys):
    store = str(tmp_path / "store")
    write_token_store(store, per_split={"train": 4, "test": 4})
    out = str(tmp_path / "o")
    assert run_cli(train_gamma, [store, "--train-subsets", "nope", "--out", out]) == 2
    assert "no rows of subset nope" in capsys.readouterr().err
    assert run_cli(train_gamma, [store, "--train-subsets", "sd", "--out", out, "--set", "heads=3"]) == 2
    assert "multiple of heads" in capsys.readouterr().err
    assert run_cli(train_gamma, [store, "--train-subsets", "sd", "--out", out, "--eval-splits", "val"]) == 2
    assert "no rows of split val" in capsys.readouterr().err
    pooled = tmp_path / "pooled"
    from helpers.synthetic_store import write_synthetic_store

    write_synthetic_store(str(pooled), per_split={"train": 4, "test": 4})
    assert run_cli(train_gamma, [str(pooled), "--train-subsets", "seen", "--out", out]) == 2
    assert "--tokens" in capsys.readouterr().err
    assert len(load_token_rows(store)) == 16


def test_calibration_rows_follow_gendets_rule(tmp_path):
    store = str(tmp_path / "store")
    write_token_store(store, per_split={"train": 8, "val": 4, "test": 4})
    run = train_gamma.preflight(job_of(train_gamma, [store, "--train-subsets", "sd", "--out", str(tmp_path / "o")]))
    assert run["plan"].calibration_split == "val" and run["sources"] == ("camera", "sd")
    args = job_of(train_gamma, [store, "--train-subsets", "sd,inpaint-inpaint_f8", "--out", str(tmp_path / "o"),
                                   "--eval-splits", "val", "--calibration-holdout", "0.5"])
    run = train_gamma.preflight(args)  # val is scored: part of the training content_ids calibrates instead
    assert run["plan"].calibration_split == "train_holdout" and run["sources"] == ("camera", "inpaint_f8", "sd")
    held = load_token_rows(store, **run["plan"].calibration_rows())
    kept = load_token_rows(store, **run["plan"].training_rows())
    assert len(held) and len(kept) and not set(held.content_id) & set(kept.content_id)
