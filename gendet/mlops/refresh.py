"""A refresh in MLflow: one run per refresh that scored something (experiment ``gendet-refresh``,
tag ``gendet.alert``, artifact ``refresh.json``), and the model version's standing verdict as tags
``gendet.refresh.*`` where people look at the model."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from gendet import io as gio
from gendet.eval.metrics import json_safe

EXPERIMENT = "gendet-refresh"
VERSION_TAG_PREFIX = "gendet.refresh."


def log_refresh(result: Mapping[str, Any], out_dir: str) -> str:
    """One MLflow run for a refresh that scored new shards; returns its id."""
    import mlflow

    from gendet.mlops import tracking

    tags = {"gendet.alert": str(result["alert"]).lower(), "gendet.model": result["model"],
            "gendet.model_uri": result["model_uri"]}
    with tracking.start_run(out_dir, experiment=EXPERIMENT, tags=tags) as run:
        mlflow.log_params(gio.redacted({"model": result["model"], "encoder": result["encoder"],
                                        "new_shards": len(result["new_shards"]), **result["rule"]}))
        mlflow.log_metrics(tracking.subset_metrics("champion", result["metrics"]))
        mlflow.log_dict(json_safe(dict(result)), "refresh.json")
        return run.info.run_id


def tag_model_version(client: Any, model: Any, slipped: list[str], run_id: str, at: float) -> None:
    """The model version's standing verdict (every subset it has judged)."""
    tags = {"alert": str(bool(slipped)).lower(), "slipped": ",".join(slipped) or "none", "run": run_id,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))}
    for key, value in tags.items():
        client.set_model_version_tag(model.name, model.version, VERSION_TAG_PREFIX + key, value)
