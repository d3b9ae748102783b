"""Where a registered model came from, and what came from it: the run that trained a version, the
job it ran (to train it again with more data), and the lineage tags of a fix or a co-evolution
round on runs and versions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from gendet import GendetError, first_line
from gendet.mlops.tracking import JOB_ARTIFACT


def parent_run(client: Any, model: str) -> tuple[str, str, Any]:
    """(registered name, version, the run that made it) of ``models:/NAME@ALIAS`` or ``/VERSION``."""
    from gendet.mlops.registry import pin

    found = pin(client, model)
    if found is None:
        raise GendetError(f"--model {model}: this retrains a registered model; pass models:/NAME@champion or "
                          "models:/NAME/VERSION")
    if not found.run_id:
        raise GendetError(f"--model {model}: version {found.version} has no training run at {client.tracking_uri}; "
                          "a retraining needs the run's config: register a model trained with `gendet train`")
    return found.name, str(found.version), client.get_run(found.run_id)


def logged_job(client: Any, run_id: str) -> dict[str, Any] | None:
    """The job a run logged (``job.json``: what ``gendet train`` ran, as a dict); None for runs
    logged before jobs were (their TrainConfig is in the params: ``logged_train_config``)."""
    import os
    import tempfile

    from mlflow.exceptions import MlflowException

    names = {a.path for a in client.list_artifacts(run_id)}
    if JOB_ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, JOB_ARTIFACT, tmp)
            with open(path if os.path.isfile(path) else os.path.join(path, JOB_ARTIFACT)) as f:
                return json.load(f)
        except (MlflowException, OSError, ValueError) as exc:
            raise GendetError(f"run {run_id}: its {JOB_ARTIFACT} cannot be read ({first_line(exc, 200)})") from None


def logged_train_config(params: Mapping[str, str]):
    """The TrainConfig a run logged as params (``tracking.log_config``: tuples as JSON text), each
    value typed as its field takes it."""
    from gendet.config import parse_value
    from gendet.method.gendet.config import TrainConfig

    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if f.name not in params:
            continue
        text = params[f.name]
        values[f.name] = tuple(json.loads(text)) if text.startswith("[") else parse_value(TrainConfig, f.name, text)
    if not values:
        raise GendetError("the model's run logged no TrainConfig params; retrain it with `gendet train` (which logs them)")
    return TrainConfig(**values)


def tag_lineage(client: Any, run_id: str, name: str, version: str, tags: Mapping[str, str], prefix: str) -> None:
    """``prefix + key: value`` tags on the run and on the registered version it made."""
    for key, value in tags.items():
        client.set_tag(run_id, prefix + key, value)
        client.set_model_version_tag(name, version, prefix + key, value)
