"""The scheduled refresh as a team runs it: ``ray job submit`` on a ``ray start`` cluster, the champion
in a real ``mlflow server``. A slip is an answer, not a crash: with ``--alert-exit 0`` the job
succeeds, and the verdict reaches MLflow (run tag, artifact, model version tags) and the
Prometheus endpoint of the head (``ray_gendet_refresh_alert``), where it stays after the job exits."""

from __future__ import annotations

import json
import os
import subprocess
import time

import mlflow
import pytest
from mlflow import MlflowClient

from gendet.method.gendet.detector import Detector
from gendet.mlops import registry
from gendet.serve import pyfunc
from helpers.bad_shards import write_good_shards
from helpers.cli import run_cli
from helpers.metrics import scrape, value, wait_for_gauge
from pipelines import _metrics, refresh

MODEL = "refresh-slip"


@pytest.fixture
def champion(mlflow_server, tiny_detector_dir, tmp_path, monkeypatch):
    """models:/refresh-slip@champion: the tiny spectrum:v1 detector with a calibrated threshold
    above every score, so it catches none of a new generator's fakes."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("refresh-test")
    blind = Detector.load(tiny_detector_dir)
    blind.threshold = 1.0  # score > threshold: nothing is caught
    with mlflow.start_run():
        info = pyfunc.log_detector(blind.save(str(tmp_path / "blind")))
    client = MlflowClient(mlflow_server)
    version = registry.register(info.model_uri, MODEL, client=client).version
    client.set_registered_model_alias(MODEL, registry.CHAMPION, version)
    yield client, str(version)
    mlflow.set_tracking_uri(None)


def submit(address: str, env: dict, submission_id: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", "job", "submit", "--address", address, "--submission-id", submission_id, "--",
                           "python", "-m", "pipelines.refresh", *args], env=env, capture_output=True, text=True, timeout=400)


def test_a_slip_under_ray_job_submit_succeeds_and_pages_through_metrics(ray_head, champion, mlflow_server, tmp_path):
    address, env = ray_head
    client, version = champion
    shards, store, out = tmp_path / "incoming", tmp_path / "features", tmp_path / "refresh"
    write_good_shards(str(shards), "newgen", n_shards=2, per_shard=4)
    args = [str(shards), str(store), "--model", f"models:/{MODEL}@champion", "--tracking-uri", mlflow_server,
            "--out", str(out), "--batch-size", "4", "--shared-fs"]  # one machine: its paths are every node's

    job = submit(address, env, "refresh-slip-1", [*args, "--alert-exit", "0"])
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "refresh-slip-1' succeeded" in job.stdout and "ALERT" in job.stdout
    result = json.loads((out / "refresh.json").read_text())
    assert result["alert"] is True and result["model_version"] == version
    assert result["model_uri"] == f"models:/{MODEL}/{version}" and result["new_shards"] == ["newgen-000000", "newgen-000001"]
    assert all(v["slipped"] and v["fake_acc_calibrated"] == 0.0 for v in result["subsets"].values())

    run = client.get_run(result["mlflow_run"])
    assert run.data.tags["gendet.alert"] == "true"
    assert "refresh.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    tags = client.get_model_version(MODEL, version).tags
    assert tags["gendet.refresh.alert"] == "true" and tags["gendet.refresh.slipped"] == ",".join(sorted(result["subsets"]))
    assert tags["gendet.refresh.run"] == run.info.run_id

    # The job has exited; the detached actor keeps the gauges on the head's Prometheus endpoint.
    port = env["GENDET_TEST_METRICS_PORT"]
    alert = _metrics.PROMETHEUS_PREFIX + _metrics.ALERT
    samples = wait_for_gauge(port, alert, {"model": MODEL, "version": version})
    assert value(samples, alert, model=MODEL, version=version) == 1.0
    for subset in result["subsets"]:
        assert value(samples, _metrics.PROMETHEUS_PREFIX + _metrics.FAKE_CAUGHT, model=MODEL, subset=subset) == 0.0
        assert value(samples, _metrics.PROMETHEUS_PREFIX + _metrics.SUBSET_SLIPPED, model=MODEL, subset=subset) == 1.0
    ran_at = value(samples, _metrics.PROMETHEUS_PREFIX + _metrics.LAST_RUN, model=MODEL)
    assert abs(ran_at - time.time()) < 600

    # The next scheduled run: every shard is scored by this version, nothing is judged, exit 0 even
    # with the default --alert-exit; the standing alert stays exported, the timestamp moves on.
    again = submit(address, env, "refresh-slip-2", args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "nothing new" in again.stdout and json.loads((out / "refresh.json").read_text())["new_shards"] == []
    deadline = time.monotonic() + 90
    while value(samples := scrape(port), _metrics.PROMETHEUS_PREFIX + _metrics.LAST_RUN, model=MODEL) == ran_at:
        assert time.monotonic() < deadline, "the second run's timestamp was not exported"
        time.sleep(2)
    assert value(samples, alert, model=MODEL, version=version) == 1.0
    assert os.path.exists(result["state"]) and json.loads(open(result["state"]).read())["model"]["version"] == version


def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test (set_tracking_uri exports it)
    write_good_shards(str(tmp_path / "incoming"), "x", n_shards=1, per_shard=2)
    base = [str(tmp_path / "incoming"), str(tmp_path / "features"), "--out", str(tmp_path / "r")]
    assert run_cli(refresh, [*base, "--alert-exit", "1"]) == 2
    assert "--alert-exit 1: 1 is a crash" in capsys.readouterr().err
    assert run_cli(refresh, [*base, "--reference", str(tmp_path / "absent.json")]) == 2
    assert "absent.json: not found" in capsys.readouterr().err
    assert run_cli(refresh, [*base, "--model", str(tmp_path / "a-detector-dir"), "--fix"]) == 2
    assert "--fix: " in (err := capsys.readouterr().err) and "is not a registered model" in err
    assert run_cli(refresh, [*base, "--fix", "--fix-shots", "-1"]) == 2
    assert "--fix-shots -1" in capsys.readouterr().err
    try:
        assert run_cli(refresh, [*base, "--model", "models:/nobody@champion", "--tracking-uri", uri]) == 2
    finally:
        mlflow.set_tracking_uri(None)
    errors = [line for line in capsys.readouterr().err.splitlines() if "gendet: error:" in line]  # MLflow logs its INFO there
    assert len(errors) == 1 and "has no version with alias 'champion'" in errors[0]
    assert not (tmp_path / "r.json").exists() and not list((tmp_path / "features").glob("*/manifest.json"))
