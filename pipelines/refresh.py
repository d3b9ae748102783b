"""``gendet refresh`` / ``python -m pipelines.refresh``: a new generator arrives; does it slip past?

Meant to run on a schedule (``cluster/``: a CronJob or KubeRay RayCronJob) over the folder where new
shards land:

0. pin the model: ``models:/NAME@champion`` is resolved to its version before any work;
1. extract, incrementally, with the model's own encoder: shards already in the store are skipped,
   so only what is new is decoded and encoded (``pipelines.extract``);
2. score the model on every shard of SHARDS that is extracted and not yet scored by this model
   version (``gendet.eval.refresh_state``: new ones, those a crashed run left, all of them when
   the champion changed), with ``pipelines.evaluate``;
3. judge every subset in them against the model's reference (``gendet.eval.slip``): its mean
   calibrated accuracy as logged by the run that made it, or ``--reference metrics.json``;
4. print the table, log a run to MLflow (experiment ``gendet-refresh``, tag ``gendet.alert``,
   artifact ``refresh.json``; tags ``gendet.refresh.*`` on a registered model version), write
   ``OUT/refresh.json``, set the Prometheus gauges (``pipelines._metrics``), and only then
   record the shards as scored; exit ``--alert-exit`` (3) when a subset slipped.

5. with ``--fix``, when a subset slipped: after the verdict is recorded, ``pipelines.fix``
   retrains the model with the slipped subsets (``--fix-shots`` images each), gates it against the
   champion (every known family checked) and promotes it only if it passes; refresh.json gains
   ``fix`` (what fix.json holds). The exit code is still ``--alert-exit``: the alert happened,
   and the output says whether the fix was promoted.

``ray job submit`` exits 1 for any failed job, whatever its code: under it (or any scheduler that
only knows failed/succeeded) pass ``--alert-exit 0`` and page on the metrics; a failed job is then
a crash. Nothing to score: it says so and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.config import check
from gendet.eval import refresh_state
from gendet.eval.metrics import json_safe
from gendet.eval.slip import MAX_DROP, MIN_FAKE_ACC, SlipRule, format_verdicts, judge, verdicts_dict
from pipelines import _jobs
from pipelines._common import check_outputs, check_reachable
from pipelines._jobs import Positional
from pipelines.fix import DEFAULT_SHOTS

log = logging.getLogger(__name__)
ALERT_EXIT = 3
REFRESH_JSON = "refresh.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class RefreshJob:
    """A new generator arrives: extract only the new shards, score the champion on them, alert
    when a subset slips (exit --alert-exit, MLflow tags, Prometheus gauges); with --fix, retrain
    with a few of its images, gate and promote (`gendet fix`). Meant to run on a schedule.

    Examples:
      gendet refresh s3://bucket/incoming/ s3://bucket/features --model models:/gendet@champion --out out/refresh
      gendet refresh incoming/ out/features --fix --fix-shots 64 --alert-exit 0      # under `ray job submit`
    """

    shards: Positional[str]
    """Where new shards land: a directory, .tar URL, brace pattern or glob (fsspec)."""
    features: Positional[str]
    """The feature store (only new shards are extracted into it)."""
    model: str = "models:/gendet@champion"
    """The detector to check (an MLflow model URI or a directory)."""
    reference: str | None = None
    """A metrics.json whose mean_acc_calibrated is the reference (default: the registered model's run)."""
    max_drop: float = MAX_DROP
    """Allowed fall of a subset's calibrated accuracy below the reference (a fraction)."""
    min_fake_acc: float = MIN_FAKE_ACC
    """Least share of a new subset's fakes caught at the calibrated threshold."""
    alert_exit: int = ALERT_EXIT
    """Exit code when a subset slipped; 0 under `ray job submit` (which exits 1 for any failed job):
    alert on the Prometheus metrics, and a failed job means a crash."""
    out: str = "out/refresh"
    """Output folder: refresh.json, the SQLite MLflow store when MLFLOW_TRACKING_URI is unset."""
    tracking_uri: str | None = None
    """MLflow tracking URI of the registry (default: MLFLOW_TRACKING_URI; unset, a SQLite store under --out)."""
    batch_size: int = 64
    """Images per encoder call (extraction of the new shards)."""
    concurrency: int = 1
    """Encoder actors."""
    num_gpus: float = 0.0
    """GPUs per encoder actor."""
    shared_fs: bool = False
    """With RAY_ADDRESS set, local SHARDS, FEATURES and --out are a mount every node sees (NFS)."""
    fix: bool = False
    """When a subset slips, retrain with it (`gendet fix`), gate, and promote if the gate passes."""
    fix_shots: int = DEFAULT_SHOTS
    """With --fix: fakes (and as many reals) of each slipped subset to train on; 0: all of its training rows."""
    fix_out: str | None = None
    """With --fix: the retraining's output folder (default: OUT/fix)."""

    def __post_init__(self) -> None:
        check(self.alert_exit == 0 or 3 <= self.alert_exit <= 125,
              f"--alert-exit {self.alert_exit}: 1 is a crash and 2 bad input; pass 0 (alert through the metrics) or 3-125")
        SlipRule(max_drop=self.max_drop, min_fake_acc=self.min_fake_acc)
        check(self.batch_size >= 1 and self.concurrency >= 1 and self.num_gpus >= 0,
              "--batch-size and --concurrency must be >= 1, --num-gpus >= 0")
        check(self.fix_shots >= 0, f"--fix-shots {self.fix_shots}: give a number of images per subset (0: all)")
        if self.fix:
            check(refresh_state.parse_registered(self.model) is not None,
                  f"--fix: {self.model} is not a registered model; fix retrains and promotes one: "
                  "pass --model models:/NAME@champion")

    @property
    def result_url(self) -> str:
        return gio.join(self.out, REFRESH_JSON)


def preflight(job: RefreshJob) -> SlipRule:
    """The checks that need no model, each failure one line, before any work: --reference, where
    SHARDS, FEATURES and --out live, MLflow answering, --out and the state writable."""
    if job.reference and not gio.exists(job.reference):
        raise GendetError(f"--reference {job.reference}: not found; pass a metrics.json written by `gendet evaluate`")
    if job.shared_fs:  # the extraction step checks the same paths: one flag for the whole verb
        os.environ[gio.SHARED_FS_ENV] = "1"
    check_reachable({"SHARDS": job.shards, "FEATURES": job.features, "--out": job.out}, shared_fs=job.shared_fs)
    check_outputs({"--out": job.out, "FEATURES": gio.join(job.features, refresh_state.STATE_DIR)}, tracking_dir=job.out)
    return SlipRule(max_drop=job.max_drop, min_fake_acc=job.min_fake_acc)


def resolve_model(uri: str) -> tuple[refresh_state.ModelRef, Any, Any]:
    """(the pinned model, its Detector, an MlflowClient on its registry or None). An alias is
    resolved to its version first, and that version is what is loaded and recorded."""
    from mlflow import MlflowClient

    from gendet.mlops.registry import pin
    from gendet.serve.loading import load_detector

    client = MlflowClient()
    found = pin(client, uri)
    if found is None:
        detector = load_detector(uri)
        return refresh_state.ModelRef(uri=uri, load_uri=uri, digest=refresh_state.model_digest(detector)), detector, None
    name, version = found.name, str(found.version)
    load_uri = f"models:/{name}/{version}"
    detector = load_detector(load_uri)
    ref = refresh_state.ModelRef(uri=uri, load_uri=load_uri, digest=refresh_state.model_digest(detector), name=name,
                                 version=version)
    return ref, detector, client


def reference_value(job: RefreshJob, model: refresh_state.ModelRef, method: str) -> float | None:
    if job.reference:
        value = gio.read_json(job.reference).get("mean_acc_calibrated")
        return None if value is None else float(value)
    from gendet.mlops.registry import reference_metric

    return reference_metric(model.load_uri, f"{method}/mean_acc_calibrated")


def extracted_variant(features: str, summary: dict[str, Any], encoder: str):
    """The store variant this run's extraction wrote to (by folder name: URLs may be spelt apart)."""
    from gendet.features.store import list_variants, resolve_variant

    output = summary.get("output")
    hits = [v for v in list_variants(features) if output and gio.basename(v.url) == gio.basename(output)]
    return hits[0] if hits else resolve_variant(features, encoder=encoder)


def refresh(job: RefreshJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steps 0-3: (the result dict, also what refresh.json holds; the context ``run`` records)."""
    from gendet.data.shards import list_shards, shard_stem
    from gendet.encoders.registry import encoder_weights_arg
    from gendet.extract.config import ExtractConfig
    from gendet.features.store import done_shards
    from pipelines._ray import require_ray
    from pipelines.evaluate import evaluate_store
    from pipelines.extract import extract

    require_ray()
    rule = preflight(job)
    model, detector, client = resolve_model(job.model)  # the registry answers, the model loads
    stems = [shard_stem(url) for url in list_shards(job.shards)]
    cfg = ExtractConfig(shards=job.shards, features=job.features, encoder=detector.encoder,
                        weights=encoder_weights_arg(detector.encoder_weights), batch_size=job.batch_size,
                        concurrency=job.concurrency, num_gpus=job.num_gpus,
                        precision=detector.encoder_precision or "fp32")  # the model's features' key (variant key)
    extracted = extract(cfg)
    variant = extracted_variant(job.features, extracted, detector.encoder)
    done = done_shards(variant.url)
    state_at = refresh_state.state_url(job.features, variant.url, model)
    state = refresh_state.load_state(state_at, model)
    todo = refresh_state.unscored(state, done, stems)
    result: dict[str, Any] = {"model": job.model, "model_uri": model.load_uri, "model_version": model.version,
                              "model_digest": model.digest, "encoder": detector.encoder, "extract": extracted,
                              "extracted_shards": extracted["shards_written"], "new_shards": todo, "state": state_at,
                              "subsets": {}, "alert": False}
    context = {"model": model, "client": client, "state": state, "state_url": state_at, "done": done}
    if not todo:
        return result, context
    report = evaluate_store({"champion": detector}, variant, shards=tuple(todo),
                            model_uris={"champion": model.load_uri})[0]["champion"]
    reference = reference_value(job, model, detector.method)
    verdicts = judge(report, reference, rule)
    result.update(reference_mean_acc_calibrated=reference, rule={"max_drop": rule.max_drop, "min_fake_acc": rule.min_fake_acc},
                  metrics=report, subsets=verdicts_dict(verdicts), alert=any(v.slipped for v in verdicts),
                  table=format_verdicts(verdicts, reference))
    return result, context


def write_result(url: str, result: dict[str, Any]) -> None:
    """OUT/refresh.json: the verdict, then again with the fix's outcome when ``--fix`` ran."""
    gio.write_bytes_atomic(url, (json.dumps(json_safe(result), indent=2) + "\n").encode())


def run(job: RefreshJob) -> dict[str, Any]:
    """Refresh (``refresh``), then record: MLflow run and version tags, OUT/refresh.json, the
    Prometheus gauges, and the shards as scored last: a run that dies before scores them again."""
    from gendet.mlops import tracking
    from gendet.mlops.refresh import log_refresh, tag_model_version
    from pipelines import _metrics

    with tracking.tracking_uri(job.tracking_uri):
        result, ctx = refresh(job)
        model, state, now = ctx["model"], ctx["state"], time.time()
        if result["new_shards"]:
            result["mlflow_run"] = log_refresh(result, job.out)
            state = refresh_state.record(state, stems=result["new_shards"], done=ctx["done"], verdicts=result["subsets"],
                                         run=result["mlflow_run"], at=now)
        slipped = refresh_state.slipped_subsets(state)  # this run's verdicts and earlier ones by the same model
        result["standing"] = {"alert": bool(slipped), "slipped": slipped}
        if result["new_shards"] and ctx["client"] is not None:
            tag_model_version(ctx["client"], model, slipped, result["mlflow_run"], now)
        write_result(job.result_url, result)
        _metrics.publish(model.label, model.version_label, state["subsets"], now)
        if result["new_shards"]:
            refresh_state.save_state(ctx["state_url"], state)
        slipped_now = [s for s, v in result["subsets"].items() if v["slipped"]]
        if job.fix and slipped_now:  # after the verdict is recorded: a failed fix loses no alert
            from pipelines import fix

            result["fix"] = fix.run(fix.FixJob(features=job.features, model=model.load_uri, subsets=tuple(slipped_now),
                                               shots=job.fix_shots, out=job.fix_out or gio.join(job.out, "fix"),
                                               tracking_uri=ctx["client"].tracking_uri))
            write_result(job.result_url, result)
    return result


def main(job: RefreshJob) -> int:
    result = run(job)
    if not result["new_shards"]:
        log.info("nothing new under %s: every extracted shard is already scored by %s", job.shards, result["model_uri"])
    else:
        _jobs.emit(result["table"])
        for subset, verdict in result["subsets"].items():
            if verdict["slipped"]:
                log.warning("ALERT %s: %s", subset, verdict["reason"])
    if result.get("fix"):
        from pipelines.fix import format_fix

        fixed = result["fix"]
        _jobs.emit(format_fix(fixed))
        log.warning("%s: version %s %s (the alert stands: exit %d)", "FIXED" if fixed["promoted"] else "NOT FIXED",
                    fixed["challenger_version"], "is now the champion" if fixed["promoted"] else "stays challenger",
                    job.alert_exit)
    log.info("result written to %s", job.result_url)
    return job.alert_exit if result["alert"] else 0


JOB = _jobs.JobSpec(RefreshJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.refresh"))
