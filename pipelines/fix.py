"""``gendet fix`` / ``python -m pipelines.fix``: retrain the champion with what slipped, gate, promote.

The closed loop after ``gendet refresh`` alerts (``refresh --fix`` calls it): a new generator's
subsets slipped past ``models:/NAME@champion``. ``fix``

1. pins the model to its version and reads **its own training job** from the run that made it
   (``job.json``: its TrainConfig, encoder and eval splits; runs logged before jobs were: the
   TrainConfig params ``tracking.log_config`` logged);
2. trains a challenger with that config plus the slipped subsets as training subsets, each
   limited to ``shots`` fakes and as many reals (TrainConfig ``shots``: a stable hash of
   content_id picks them), through ``pipelines.train.train`` itself: same Ray Train job,
   calibration (thresholds and Platt scaling are refitted), MLflow run, registration as
   ``challenger`` under the model's registered name;
3. runs the gate against the champion on the same evaluation set, with the per-family rule (no
   subset's calibrated accuracy may fall more than ``--gate.max-family-drop`` below the
   champion's), and moves ``champion`` only if it passes;
4. tags the training run and the new version with its lineage (``gendet.fix.parent_version``,
   ``gendet.fix.subsets``, ``gendet.fix.shots``) and writes ``OUT/fix.json``.

The slipped subsets must be in FEATURES (``refresh`` extracted them) with rows in the champion's
training split; their test rows are then part of the gate's evaluation set.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from gendet import io as gio
from gendet.config import check, from_dict
from gendet.eval.metrics import json_safe
from gendet.mlops.gate import GateConfig
from pipelines import _jobs
from pipelines._common import Workers
from pipelines._jobs import Flat, Positional

log = logging.getLogger(__name__)
DEFAULT_SHOTS = 64  # chosen on val over three demo worlds (experiments/results/fix-shots-cpu2-refit.md)
LINEAGE_PREFIX = "gendet.fix."
FIX_JSON = "fix.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class FixJob:
    """Retrain a registered model with the subsets that slipped past it (a few shots of each), with
    its own training job; register the result as challenger, gate it over every known family and
    promote it only if it passes (`gendet refresh --fix` runs this).

    Examples:
      gendet fix out/features --model models:/gendet@champion --subsets sdedit
      gendet fix s3://bucket/features --subsets new_gen_a,new_gen_b --shots 256 --num-workers 2
    """

    features: Positional[str]
    """The feature store holding the champion's training rows and the new subsets."""
    subsets: tuple[str, ...] = ()
    """The subsets that slipped, e.g. sdedit."""
    model: str = "models:/gendet@champion"
    """The registered model to fix (models:/NAME@ALIAS or models:/NAME/VERSION)."""
    shots: int = DEFAULT_SHOTS
    """Fakes (and as many reals) of each new subset to train on; 0: all of its training rows."""
    out: str = "out/fix"
    """Output folder: the training run's files and fix.json."""
    workers: Annotated[Workers, Flat] = field(default_factory=Workers)
    gate: GateConfig = field(default_factory=GateConfig)
    tracking_uri: str | None = None
    """MLflow tracking URI of the registry (default: MLFLOW_TRACKING_URI)."""

    def __post_init__(self) -> None:
        check(bool(self.subsets), "--subsets: none; name the ones that slipped, e.g. --subsets sdedit")
        check(self.shots >= 0, f"--shots {self.shots}: give a number of images per subset (0: all)")


def train_job(job: FixJob, parent: dict[str, Any], name: str, run_name: str) -> Any:
    """The ``TrainJob`` of the fix: the parent's own job (``parent``: its logged ``job.json`` dict),
    its training subsets plus ``job.subsets`` (``shots`` of each), on ``job.features``."""
    from gendet.method.gendet.config import TrainConfig
    from pipelines.train import TrainJob

    cfg = parent["train"] if isinstance(parent["train"], TrainConfig) else from_dict(TrainConfig, parent["train"])
    subsets = tuple(dict.fromkeys((*cfg.train_subsets, *job.subsets)))
    shots = tuple(f"{s}={job.shots}" for s in job.subsets) if job.shots else ()
    return TrainJob(features=job.features, train=replace(cfg, train_subsets=subsets, shots=shots),
                    eval_splits=tuple(parent.get("eval_splits") or ("test",)), encoder=parent.get("encoder") or None,
                    out=gio.absolute(job.out), workers=job.workers, name=run_name, register=name, gate=job.gate)


def parent_job(client: Any, run: Any) -> dict[str, Any]:
    """The parent's training job: its ``job.json``, or for runs logged before jobs were, its
    TrainConfig params, encoder and eval splits."""
    from gendet.mlops.lineage import logged_job, logged_train_config

    found = logged_job(client, run.info.run_id)
    if found is not None:
        return found
    params = run.data.params
    return {"train": logged_train_config(params), "encoder": params.get("encoder") or None,
            "eval_splits": tuple(s for s in params.get("eval_splits", "test").split(",") if s)}


def per_family(gate: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{subset: {"before": {...}, "after": {...}, "paired": {...}}}: the champion's and the
    challenger's calibrated accuracies on the gate's split, and the paired interval of their
    difference the gate decided on (``gendet.eval.paired``)."""
    return {s: {"before": row["champion"], "after": row["challenger"], "paired": row.get("paired")}
            for s, row in gate.get("families", {}).items()}


def reported_families(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{subset: calibrated accuracy, fakes caught, AP} of the challenger on the run's eval splits
    (test): what is reported, after the gate decided on val without it."""
    keys = ("acc_calibrated", "fake_acc_calibrated", "real_acc_calibrated", "ap", "n_real", "n_fake")
    return {s: {k: row.get(k) for k in keys} for s, row in (metrics.get("subsets") or {}).items()}


def run(job: FixJob) -> dict[str, Any]:
    """Retrain ``job.model`` (a registered model; its version is pinned first) with its own training
    job plus ``job.subsets``, register the result as ``challenger``, gate it against the champion
    (with the per-family rule) and promote it only if it passes.

    The registry is ``tracking_uri``, else MLFLOW_TRACKING_URI / the process's MLflow URI; the
    training run logs there too. Returns what ``OUT/fix.json`` holds: ``subsets``, ``shots``,
    ``parent_version`` and ``champion_version_before``, ``challenger_version``, ``promoted``,
    ``reason`` (the gate's), ``worst_family``, ``gate_split``, ``families`` ({subset: {"before",
    "after", "paired"}} of ``acc_calibrated``, ``fake_acc_calibrated``, ``real_acc_calibrated``,
    ``ap`` on the gate's split and the paired interval), ``eval_splits`` and ``reported`` (the
    challenger's numbers there, ``reported_families``), ``run_id``, ``seconds``.
    """
    import mlflow
    from mlflow import MlflowClient

    from gendet.mlops import registry
    from gendet.mlops.lineage import parent_run, tag_lineage
    from pipelines import train
    from pipelines._ray import require_ray

    started = time.perf_counter()
    require_ray()
    uri = job.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    client = MlflowClient(uri)
    name, parent_version, run_ = parent_run(client, job.model)
    champion = registry.version_by_alias(client, name, registry.CHAMPION)
    run_name = f"fix-{name}-v{parent_version}-{int(time.time())}"  # a new name: an old one would resume
    retrain = train_job(job, parent_job(client, run_), name, run_name)
    log.info("fix: retraining %s (version %s) with %s (%s shots each), training subsets %s", job.model, parent_version,
             ", ".join(job.subsets), job.shots or "all", ",".join(retrain.train.train_subsets))
    summary = train.run(replace(retrain, tracking_uri=uri))  # the training run and its registration: the parent's registry
    gate = summary["gate"]
    lineage = {"parent_version": parent_version, "subsets": ",".join(job.subsets), "shots": str(job.shots or "all")}
    tag_lineage(client, summary["run_id"], name, gate["version"], lineage, LINEAGE_PREFIX)
    result = {"model": job.model, "name": name, "parent_version": parent_version,
              "champion_version_before": None if champion is None else str(champion.version),
              "subsets": list(job.subsets), "shots": job.shots or None, "challenger_version": gate["version"],
              "promoted": gate["promoted"], "reason": gate["reason"], "worst_family": gate.get("worst_family"),
              "worst_family_drop": gate.get("worst_family_drop"), "gate_split": gate.get("split"),
              "families": per_family(gate), "eval_splits": list(retrain.eval_splits),
              "reported": reported_families(gio.read_json(summary["metrics"])),
              "run_id": summary["run_id"], "train_out": retrain.out, "tracking_uri": uri,
              "seconds": round(time.perf_counter() - started, 1)}
    gio.write_json_atomic(gio.join(retrain.out, FIX_JSON), json_safe(result))
    return result


def format_fix(result: dict[str, Any]) -> str:
    """A short table: every family's calibrated accuracy and fakes caught, before and after."""
    from gendet.eval.paired import in_points
    from gendet.eval.tables import markdown_table, pct

    rows = [[s, pct((row["before"] or {}).get("acc_calibrated")), pct(row["after"]["acc_calibrated"]),
             in_points(row.get("paired")), pct((row["before"] or {}).get("fake_acc_calibrated")),
             pct(row["after"]["fake_acc_calibrated"])]
            for s, row in result["families"].items() if row["after"]]
    verdict = "PROMOTED" if result["promoted"] else "not promoted"
    return (markdown_table(["subset", "acc_cal before", "acc_cal after", "after - before [interval], points",
                            "fake caught before", "fake caught after"], rows)
            + f"\n\nversion {result['challenger_version']} {verdict}: {result['reason']} ({result['seconds']:.0f} s)")


def main(job: FixJob) -> int:
    result = run(job)
    _jobs.emit(format_fix(result))
    log.info("result written to %s", gio.join(result["train_out"], FIX_JSON))
    return 0


JOB = _jobs.JobSpec(FixJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.fix"))
