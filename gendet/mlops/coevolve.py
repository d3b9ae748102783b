"""A co-evolution round in MLflow (experiment ``gendet-coevolve``): the round's run with its lineage
tags (generator and detector digests, before and after) and metrics, and the families held out of
every round (read from the first champion's run)."""

from __future__ import annotations

import json
from typing import Any

EXPERIMENT = "gendet-coevolve"
TAG = "gendet.coevolve."


def default_held_out(client: Any, name: str, version: str, rates: dict, family: str) -> tuple[str, ...]:
    """The store's subsets that neither the first champion trained on nor any round touches (``FAMILY-*``)."""
    run = client.get_run(client.get_model_version(name, version).run_id)
    trained = set(json.loads(run.data.params.get("train_subsets", "[]") or "[]"))
    return tuple(s for s in rates if s not in trained and s != family and not s.startswith(f"{family}-"))


def log_round(k: int, record: dict[str, Any]) -> str:
    """The round's MLflow run in the active experiment; returns its id."""
    import mlflow

    gen, before, after = record["generator"], record["detector_before"], record["detector_after"]
    tags = {TAG + "round": str(k), TAG + "subset": record["subset"], TAG + "generator_weights_digest": gen["weights_digest"],
            TAG + "parent_weights_digest": gen["parent_weights_digest"], TAG + "detector_version_before": before["version"],
            TAG + "detector_version_after": after["version"], TAG + "detector_digest_before": before["digest"],
            TAG + "detector_digest_after": after["digest"], TAG + "promoted": str(bool(record["fix"]["promoted"]))}
    metrics = {"psnr_before": gen["metrics"]["before"]["psnr"], "psnr_after": gen["metrics"]["after"]["psnr"],
               "ssim_before": gen["metrics"]["before"]["ssim"], "ssim_after": gen["metrics"]["after"]["ssim"],
               "align_caught_before": gen["metrics"]["before"]["caught"], "align_caught_after": gen["metrics"]["after"]["caught"],
               "caught_before": record["caught_before"], "caught_after": record["caught_after"],
               "held_out_acc_before": record["held_out"]["before"]["acc"],
               "held_out_acc_after": record["held_out"]["after"]["acc"]}
    with mlflow.start_run(run_name=f"coevolve-{record['subset']}", tags=tags) as run:
        mlflow.log_metrics({k_: float(v) for k_, v in metrics.items() if v is not None})
        mlflow.log_dict(record, "round.json")
        return run.info.run_id
