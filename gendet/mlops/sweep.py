"""A sweep in MLflow: one parent run (the grid, the data, the tables) and one child run per trial
(its whole TrainConfig as params, its numbers as metrics), logged by the driver as trials end."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from gendet import io as gio
from gendet.config import to_dict
from gendet.eval import sweep as gsweep

TRIAL_TAG = "gendet.sweep."


def log_parent_params(*, variant: Any, job: Mapping[str, Any], train_subsets: tuple[str, ...], methods: tuple[str, ...],
                      grid: Mapping[str, list[Any]], eval_splits: tuple[str, ...], trials: int, tune_run: str,
                      calibration_splits: set[str]) -> None:
    """The sweep's params on the active (parent) run, and its whole job as ``job.json``."""
    import mlflow

    from gendet.eval.metrics import json_safe
    from gendet.mlops.tracking import JOB_ARTIFACT

    mlflow.log_dict(json_safe(dict(job)), JOB_ARTIFACT)
    mlflow.log_params({"features": gio.redact(variant.url), "encoder": variant.encoder,
                       "train_subsets": ",".join(train_subsets), "methods": ",".join(methods),
                       "grid": json.dumps({k: [gsweep.cell(v) for v in vs] for k, vs in grid.items()}),
                       "select_split": str(job.get("select_split", "")), "eval_splits": ",".join(eval_splits),
                       "trials": trials, "tune_run": tune_run,
                       "calibration_split": ",".join(sorted(calibration_splits))})


def log_trial(client: Any, *, experiment_id: str, parent_run_id: str, run_name: str, trial_id: str, point: str,
              config: Any, numbers: Mapping[str, float], status: str) -> str:
    """One trial as a child run of ``parent_run_id`` (params: its config; metrics: ``numbers``);
    returns the run id."""
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from gendet.mlops.tracking import flatten

    run = client.create_run(experiment_id, run_name=run_name,
                            tags={MLFLOW_PARENT_RUN_ID: parent_run_id, TRIAL_TAG + "trial_id": trial_id,
                                  TRIAL_TAG + "point": point})
    now = int(time.time() * 1000)
    params = [Param(k, str(v)) for k, v in flatten(to_dict(config)).items()]
    metrics = [Metric(k, v, now, 0) for k, v in numbers.items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def log_tables(table_csv: str, text: str, rows: list[dict[str, Any]], wall: float,
               selected: Mapping[str, Any] | None = None) -> None:
    """The tables, the best trial by unseen accuracy on the selection split, and the chosen
    point's numbers on the eval splits (``selected/<number>``, mean over its seeds), on the active
    (parent) run."""
    import mlflow

    mlflow.log_text(table_csv, "sweep.csv")
    mlflow.log_text(text, "sweep.md")
    done = [r for r in rows if r["status"] == "TERMINATED" and "unseen_acc" in r]
    if done:
        best = max(done, key=lambda r: r["unseen_acc"])
        mlflow.log_metrics({"best_unseen_acc": best["unseen_acc"], "wall_seconds": wall})
        mlflow.set_tag(TRIAL_TAG + "best", best["point"])
    if selected:
        means = {n: [r[n] for r in selected["reported"] if isinstance(r.get(n), float) and r[n] == r[n]]
                 for n in gsweep.NUMBERS}
        mlflow.log_metrics({f"selected/{n}": sum(v) / len(v) for n, v in means.items() if v})
        mlflow.set_tag(TRIAL_TAG + "selected", selected["point"])
