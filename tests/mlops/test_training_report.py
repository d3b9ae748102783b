"""The tail of a training run: the diagnostics figure and metrics land in OUT/plots/, the MLflow
run and the report's links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from gendet.eval import report
from gendet.eval.metrics import metrics_report
from gendet.mlops import tracking
from gendet.mlops.training_report import log_history, log_plots
from helpers.histories import short_training_history


def test_training_diagnostics_are_logged_saved_and_linked(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    history = short_training_history(rotations=2, methods=("gendet",))
    labels = np.array(["real", "fake"] * 4)
    reports = {"gendet": metrics_report(np.where(labels == "fake", 0.9, 0.1), labels, np.array(["a"] * 8),
                                        calibrated_threshold=0.5, target_fpr=0.05, model="gendet", encoder="e")}
    out = tmp_path / "job"
    with tracking.start_run(str(out), run_name="t") as run:
        log_history(history)
        paths = log_plots(reports, {}, {}, str(out), history)
    png = out / "plots" / "training_diagnostics.png"
    assert str(png) in paths and png.stat().st_size > 10_000
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/training_diagnostics.png" in artifacts
    g_shift = client.get_metric_history(run.info.run_id, "g_shift/augmenter")
    stage_of_step = {i: s for i, s in enumerate(dict.fromkeys(r["stage"] for r in history))}
    assert sorted(stage_of_step[m.step] for m in g_shift) == ["r01.c", "r02.c"]
    assert len(client.get_metric_history(run.info.run_id, "discrepancy/real.gendet")) == 2
    assert len(client.get_metric_history(run.info.run_id, "hinge/fake.gendet")) == 2
    # the demo report links every plot of the run's summary, this one included
    assert "![training_diagnostics.png](plots/training_diagnostics.png)" in report.plot_links(paths, str(out))


def test_no_diagnostics_figure_without_a_teacher_student_rung(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    history = short_training_history(rotations=1, methods=("linear_probe",))
    with tracking.start_run(str(tmp_path / "job")):
        paths = log_plots({"linear_probe": {"subsets": {}}}, {}, {}, str(tmp_path / "job"), history)
    assert not any(Path(p).name == "training_diagnostics.png" for p in paths)
