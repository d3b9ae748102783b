"""`gendet sweep` on Ray Tune: a 2x2 grid on a small store, one MLflow child run per trial, the table."""

import csv

import pytest
from mlflow import MlflowClient

from gendet.eval.sweep import mean_sd
from helpers.cli import job_of, run_cli
from helpers.synthetic_store import write_synthetic_store
from pipelines import sweep as sweep_pipeline

pytestmark = pytest.mark.slow

GRID = {(a, m) for a in (0.1, 1.0) for m in (1.0, 2.0)}


def test_two_by_two_grid_on_tune_logs_a_child_run_per_trial_and_writes_the_table(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = str(tmp_path / "store")
    write_synthetic_store(store, per_split={"train": 80, "val": 30, "test": 30})
    out = tmp_path / "out"
    summary = sweep_pipeline.run(job_of(sweep_pipeline, [
        store, "--train-subsets", "seen", "--out", str(out), "--preset", "debug", "--grid", "alpha=0.1,1",
        "--grid", "margin=1,2", "--set", "rotations=1", "--set", "batch_size=32", "--name", "t-sweep"]))

    # the table: every grid point once, all finished, numbers in [0, 1]
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(float(r["alpha"]), float(r["margin"])) for r in rows} == GRID and len(rows) == 4
    assert {r["status"] for r in rows} == {"TERMINATED"} and {r["seed"] for r in rows} == {"0"}
    for r in rows:
        for key in ("unseen_acc", "unseen_ap", "seen_acc", "seen_ap", "unseen_acc_calibrated"):
            assert 0.0 <= float(r[key]) <= 1.0
    by_point = {(float(r["alpha"]), float(r["margin"])): r for r in rows}

    # Tune's own results are the table's numbers
    results = summary["result_grid"]
    assert len(results) == 4 and results.num_errors == 0
    for result in results:
        row = by_point[(result.config["alpha"], result.config["margin"])]
        assert result.metrics["trial_id"] == row["trial_id"]
        for key in ("unseen_acc", "unseen_ap", "seen_acc", "seen_ap"):
            assert result.metrics[key] == pytest.approx(float(row[key]), abs=1e-12)

    # one MLflow child run per trial, under the sweep's parent run, with that trial's whole TrainConfig
    client = MlflowClient(summary["tracking_uri"])
    assert summary["tracking_uri"] == f"sqlite:///{out / 'mlflow.db'}"  # no MLFLOW_TRACKING_URI: the store under --out
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.run_name == "t-sweep" and parent.data.params["trials"] == "4"
    children = client.search_runs([summary["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    for child in children:
        params = child.data.params
        row = by_point[(float(params["alpha"]), float(params["margin"]))]
        assert child.info.run_id == row["mlflow_run_id"] and child.info.status == "FINISHED"
        assert params["rotations"] == "1" and params["batch_size"] == "32" and params["seed"] == "0"
        assert params["methods"] == '["gendet"]' and params["train_subsets"] == '["seen"]'
        assert params["student_lr"] == "0.001"  # the preset's value: the whole config, not only the knobs
        assert params["calibration_split"] == "train_holdout"  # val chooses and test reports: both are scored
        assert child.data.metrics["unseen_acc"] == pytest.approx(float(row["unseen_acc"]))
        assert child.data.metrics["seen_ap"] == pytest.approx(float(row["seen_ap"]))
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.csv", "sweep.md"} <= artifacts

    # sweep.md: Table 5's shape (rows alpha, columns M) says what the CSV says
    md = (out / "sweep.md").read_text()
    assert "| alpha \\ margin | 1.0 | 2.0 |" in md
    for alpha in (0.1, 1.0):
        cells = [mean_sd([float(by_point[(alpha, m)]["unseen_acc"])]) for m in (1.0, 2.0)]
        assert f"| {alpha} | {cells[0]} | {cells[1]} |" in md
    assert "| alpha | margin | trials | unseen_acc |" in md

    # chosen on val, by the CSV's (val) numbers alone; then that point alone scored on test, once
    best = max(rows, key=lambda r: float(r["unseen_acc"]))
    selected = summary["selected"]
    assert selected["point"] == f"alpha={best['alpha']},margin={best['margin']}" and selected["select_split"] == "val"
    assert selected["chosen_by"] == [pytest.approx(float(best["unseen_acc"]))]
    (reported,) = selected["reported"]
    assert set(reported) >= {"seed", "unseen_acc", "seen_acc"} and 0.0 <= reported["unseen_acc"] <= 1.0
    assert f"Chosen on val (unseen accuracy, mean over seeds): {selected['point']}" in md
    assert "Reported once, on test (1 trial(s))" in md and mean_sd([reported["unseen_acc"]]) in md.split("Reported once")[1]
    assert parent.data.metrics["selected/unseen_acc"] == pytest.approx(reported["unseen_acc"])
    assert parent.data.tags["gendet.sweep.selected"] == selected["point"]


@pytest.mark.parametrize("flags, message", [
    (["--grid", "alpah=0.1,1"], "--grid alpah=0.1,1: unknown field 'alpah'"),
    (["--grid", "margin=-1,2"], "--grid point margin=-1.0,seed=0: margin: -1.0; M must be >= 0"),
    (["--grid", "alpha=0.1,big"], "alpha=big: expected a value of type float"),
    (["--grid", "alpha="], "--grid alpha=: expected KEY=V1,V2,..."),
    (["--grid", "classifier_input=raw,sideways"], "classifier_input=sideways: choose from raw, augmented, both"),
    (["--grid", "seed=0,1", "--seeds", "2"], "--seeds and --grid seed=...: give the seeds once"),
    (["--set", "rotations=0"], "rotations: 0; must be a positive integer"),
    (["--eval-splits", "val"], "--select-split val is also in --eval-splits: the best point would be chosen on the rows"),
])
def test_a_bad_grid_is_refused_in_one_line_before_ray_starts(tmp_path, capsys, monkeypatch, flags, message):
    def no_ray(**kwargs):
        raise AssertionError("Ray was started for a bad grid")

    monkeypatch.setattr("pipelines._ray.init_ray", no_ray)
    out = tmp_path / "out"
    assert run_cli(sweep_pipeline, [str(tmp_path / "no-store"), "--train-subsets", "seen", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gendet: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()  # no MLflow store, no Tune records


def test_calibrating_on_the_scored_split_is_refused_before_ray(tmp_path, capsys, monkeypatch):
    def no_ray(**kwargs):
        raise AssertionError("Ray was started for a bad request")

    monkeypatch.setattr("pipelines._ray.init_ray", no_ray)
    store = str(tmp_path / "store")
    write_synthetic_store(store, per_split={"train": 10, "val": 10, "test": 10})
    args = [store, "--train-subsets", "seen", "--out", str(tmp_path / "out")]  # val is scored: it chooses
    assert run_cli(sweep_pipeline, [*args, "--set", "calibration_split=val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val is among the scored splits" in err, err
    assert run_cli(sweep_pipeline, [*args[:2], "nope", *args[3:]]) == 2
    assert "no rows" in capsys.readouterr().err
