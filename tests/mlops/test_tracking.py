"""Tracking: where runs go, and that config, losses, per-subset metrics and plots land in a real store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from gendet import GendetError
from gendet.eval import plots
from gendet.eval.metrics import metrics_report
from gendet.method.gendet.config import TrainConfig
from gendet.mlops import tracking


def test_tracking_uri_is_env_when_set_else_sqlite_under_out(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(str(tmp_path / "job")) == f"sqlite:///{tmp_path / 'job' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/")
    assert tracking.resolve_tracking_uri(str(tmp_path / "job")) == "http://127.0.0.1:9/"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(GendetError, match="MLFLOW_TRACKING_URI"):
        tracking.resolve_tracking_uri("memory://bucket/job")
    with pytest.raises(GendetError, match="MLFLOW_TRACKING_URI"):
        tracking.resolve_tracking_uri(None)


def test_a_jobs_tracking_uri_is_undone_after_it(tmp_path, monkeypatch):
    """--tracking-uri holds for the job only: MLflow's own URI (which outranks the environment) is
    restored with the environment, so the next job in the process logs where it should."""
    import mlflow

    mlflow.set_tracking_uri(None)  # (unsets the environment's too)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'before.db'}")
    with tracking.tracking_uri("http://127.0.0.1:9/"):
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:9/"
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'before.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with tracking.tracking_uri("http://127.0.0.1:9/"):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() != "http://127.0.0.1:9/"


def test_flatten_nests_with_dots_and_keeps_lists_as_json():
    flat = tracking.flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": (1, 2), "f": None})
    assert flat == {"a.b": 1, "a.c.d": "x", "e": "[1, 2]", "f": None}


def _reports() -> dict[str, dict]:
    labels = np.array(["real", "fake"] * 6)
    subsets = np.array(["sd14"] * 6 + ["vq dm"] * 6)  # a space: metric names must stay valid
    out = {}
    for method, fake_score in (("linear_probe", 0.4), ("gendet", 0.9)):
        scores = np.where(labels == "fake", fake_score, 0.2)
        out[method] = metrics_report(scores, labels, subsets, calibrated_threshold=0.3, target_fpr=0.05,
                                     model=method, encoder="spectrum:v1")
    return out


def test_a_run_logs_config_losses_subset_metrics_and_plots_into_the_out_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # anything MLflow wrote to the cwd would show up here
    out = tmp_path / "job"
    cfg = TrainConfig(rotations=2)
    history = [{"stage": "pretrain", "job": "teacher", "mean_loss": 0.7},
               {"stage": "pretrain", "job": "probe", "mean_loss": 0.69},
               {"stage": "r01.a", "job": "real.gendet", "mean_loss": 0.5},
               {"stage": "r02.a", "job": "real.gendet", "mean_loss": 0.25}]
    reports = _reports()
    with tracking.start_run(str(out), run_name="t") as run:
        params = tracking.log_config(cfg)
        assert tracking.log_stage_history(history) == 4
        logged = tracking.log_reports(reports)
        tracking.log_figure(plots.accuracy_bars(reports), "accuracy")

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["rotations"] == "2" and got.data.params["methods"] == json.dumps(list(cfg.methods))
    assert set(params) == set(got.data.params)
    curve = client.get_metric_history(run.info.run_id, "loss/real.gendet")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(1, 0.5), (2, 0.25)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/probe")] == [0]
    assert got.data.metrics["gendet/sd14/acc"] == 1.0
    assert got.data.metrics["linear_probe/sd14/acc"] == reports["linear_probe"]["subsets"]["sd14"]["acc"] == 0.5
    assert got.data.metrics["gendet/vq dm/real_acc_calibrated"] == 1.0
    assert got.data.metrics["linear_probe/mean_acc"] == 0.5 and logged["gendet/mAP"] == 1.0
    artifacts = Path(out / "mlartifacts")
    files = {p.as_posix().split("/artifacts/", 1)[-1] for p in artifacts.rglob("*") if p.is_file()}
    assert {"metrics/gendet/metrics.json", "metrics/linear_probe/metrics.json", "plots/accuracy.png"} <= files
    saved = json.loads(next(artifacts.rglob("gendet/metrics.json")).read_text())
    assert saved == reports["gendet"]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_two_jobs_in_one_process_each_log_under_their_own_out_dir(tmp_path, monkeypatch):
    """The first job fails (its run is marked FAILED); the second still gets its own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError):
        with tracking.start_run(str(tmp_path / "one")) as failed:
            tracking.log_config({"job": "one"})
            raise RuntimeError("boom")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the default is not exported as the user's choice
    with tracking.start_run(str(tmp_path / "two")) as done:
        tracking.log_config({"job": "two"})
    for job, run, status in (("one", failed, "FAILED"), ("two", done, "FINISHED")):
        got = MlflowClient(f"sqlite:///{tmp_path / job / 'mlflow.db'}").get_run(run.info.run_id)
        assert got.data.params == {"job": job} and got.info.status == status


# --- preflight: the tracking store checked before any work ---------------------------------------------

def test_an_unreachable_tracking_server_is_one_line_within_the_timeout(monkeypatch):
    import time

    from conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(GendetError) as err:
        tracking.check_tracking("unused")
    assert time.monotonic() - started < 5  # not MLflow's minutes of retries
    message = str(err.value)
    assert message.startswith(f"MLflow tracking server {uri} does not answer (") and "\n" not in message
    assert "MLFLOW_TRACKING_URI" in message


def test_a_server_that_answers_passes_and_one_that_fails_does_not(mlflow_server, monkeypatch):
    import http.server
    import threading

    tracking.check_server(mlflow_server)  # a real MLflow server: /health answers 200
    tracking.check_server(mlflow_server.replace("http://", "http://user:secret@") + "/")  # credentials are not the host

    class Answers(http.server.BaseHTTPRequestHandler):
        status = 503

        def do_GET(self):
            self.send_response(self.status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(GendetError, match=r"does not answer \(HTTP 503\)"):
            tracking.check_server(uri)
        Answers.status = 401  # a guarded server answers: reachable, its auth is MLflow's business
        tracking.check_server(uri)
    finally:
        server.shutdown()
        server.server_close()


def test_check_tracking_refuses_a_remote_out_without_a_server_and_passes_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(GendetError, match="s3://bucket/run: a SQLite MLflow store needs a local output directory"):
        tracking.check_tracking("s3://bucket/run")
    assert tracking.check_tracking(str(tmp_path / "out")) == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
