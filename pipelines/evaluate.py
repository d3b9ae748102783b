"""``gendet evaluate`` / ``python -m pipelines.evaluate``: per-subset tables of a model on a store.

Ray Data streams the store's evaluation rows (of a variant over ``--ray-min-rows`` rows; smaller
ones are scored in this process, by the same scorer) through a scoring actor (features in, one score per
method out: no image is decoded, no encoder loaded), the driver collects the small score table and
builds ``metrics.json`` with ``gendet.eval.metrics``. ``--degrade all`` adds Table 4: the same model on
every degraded variant of the store (``gendet extract --degrade SPEC``), one row each. A GAMMA model
(``gamma.json``, from ``gendet train-gamma``) is scored instead on the store's token variant(s), in
this process (``gendet.method.gamma.eval``: the same per-subset table, plus pixel F1/IoU for the
subsets with masks).

The scoring itself is the library's (``gendet.eval.scoring``); this module runs it on Ray Data.
Before any scoring (``preflight``): the model loads, the MLflow server answers (for ``models:/``,
``runs:/`` and ``--mlflow-run``, which must exist), every variant has rows of the eval splits, and
``--out`` (a folder: metrics.json, table.md) can be written; with ``RAY_ADDRESS`` set, FEATURES
and ``--out`` must be URLs every node reaches unless ``--shared-fs``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gendet import io as gio
from gendet.config import check
from pipelines import _jobs
from pipelines._common import check_outputs, check_reachable
from pipelines._jobs import Positional

if TYPE_CHECKING:  # torch and pyarrow load only when the job runs: `gendet evaluate --help` stays fast
    from gendet.features.store import Variant
    from gendet.method.gamma.detector import GammaDetector
    from gendet.method.gendet.detector import Detector

log = logging.getLogger(__name__)


def score_variant(detectors: dict[str, Detector], variant: Variant, splits: tuple[str, ...] = (), *,
                  shards: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Columns label, subset, score_<method>, discrepancy_<method> over the rows of ``splits``
    (or of the shards named by stem in ``shards``: what ``refresh`` has just extracted), scored
    by the library's ``DetectorScorer`` on a Ray Data actor."""
    import ray.data
    from ray.data.expressions import col

    from gendet.eval import scoring
    from gendet.features.store import feature_files
    from pipelines._ray import init_ray

    scoring.check_matches(detectors, variant)
    column, values = scoring.rows_to_score(splits, shards)
    init_ray()
    ds = (ray.data.read_parquet(feature_files(variant.url)).select_columns(scoring.COLUMNS)
          .filter(expr=col(column).is_in(values))
          .map_batches(scoring.DetectorScorer, fn_constructor_kwargs={"detectors": detectors}, batch_format="pyarrow",
                       batch_size=4096, compute=ray.data.ActorPoolStrategy(size=1)))
    frame = ds.to_pandas()
    if frame.empty:
        raise scoring.no_rows_error(variant, splits, shards)
    return {c: frame[c].to_numpy() for c in frame.columns}


# Below this many rows a variant is scored in this process (gendet.eval.scoring.score_store, the same
# scorer): a Ray Data job costs ~30 s of start-up on 2 cores, scoring 100k rows of 784-d features
# with five detectors takes seconds. Measured on the demo's store: Table 4 over 3 variants of 504
# rows took 111 s on Ray Data.
RAY_MIN_ROWS = 100_000


def evaluate_store(detectors: dict[str, Detector], variant: Variant, splits: tuple[str, ...] = (), *,
                   shards: tuple[str, ...] = (), model_uris: dict[str, str] | None = None,
                   ray_min_rows: int = RAY_MIN_ROWS) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """(metrics.json per method, scored columns) of ``detectors`` on a store variant: on Ray Data,
    or in this process when the variant has at most ``ray_min_rows`` rows."""
    from gendet.eval import scoring

    if variant.rows and variant.rows <= ray_min_rows:
        scored = scoring.score_store(detectors, variant, splits, shards=shards)
    else:
        scored = score_variant(detectors, variant, splits, shards=shards)
    return scoring.reports(scored, detectors, model_uris=model_uris), scored


# --- gendet evaluate -----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluateJob:
    """Per-subset metrics of a model on a feature store's eval splits (no image decoded: the store
    holds the features), printed and written as OUT/metrics.json and OUT/table.md; --degrade all adds
    Table 4 (the model on every degraded variant of the store).

    Examples:
      gendet evaluate out/features --model models:/gendet@champion --eval-splits val
      gendet evaluate out/features --model out/train/detectors/gendet --degrade all --out out/eval
    """

    features: Positional[str]
    """Feature store URL."""
    model: str = "models:/gendet@champion"
    """The model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH or a model directory."""
    out: str = "out/evaluate"
    """Output folder: metrics.json and table.md."""
    encoder: str | None = None
    """The store variant's encoder when several are present (default: the model's)."""
    eval_splits: tuple[str, ...] = ("test",)
    """Splits to score (GenImage has train and val: score val)."""
    degrade: str = ""
    """Score the variant extracted with this --degrade spec; all: Table 4 over every degraded variant."""
    mlflow_run: str | None = None
    """Also log metrics.json and the table into this MLflow run id."""
    ray_min_rows: int = RAY_MIN_ROWS
    """Score on Ray Data when the variant has more rows than this, else in this process (0: always Ray)."""
    shared_fs: bool = False
    """With RAY_ADDRESS set, local FEATURES and --out are a mount every node sees (NFS)."""
    tracking_uri: str | None = None
    """MLflow tracking URI for models:/ and runs:/ (default: MLFLOW_TRACKING_URI)."""

    def __post_init__(self) -> None:
        check(bool(self.eval_splits), "--eval-splits: empty; name the split(s) to score, e.g. test or val")
        check(self.ray_min_rows >= 0, f"--ray-min-rows {self.ray_min_rows}: must be >= 0")


def preflight(job: EvaluateJob) -> tuple[Detector | GammaDetector, dict[str, Variant]]:
    """Everything the run needs, before any scoring, each failure one line; returns the model and
    {degrade: variant} to score."""
    from gendet.eval import scoring
    from gendet.features.contents import check_rows
    from gendet.features.store import list_variants, resolve_variant
    from gendet.method.gamma.detector import GammaDetector
    from gendet.serve.loading import load_model

    check_reachable({"FEATURES": job.features, "--out": job.out}, shared_fs=job.shared_fs)
    if job.model.startswith(("models:/", "runs:/")) or job.mlflow_run:
        from gendet.mlops.tracking import check_run, check_server

        check_server()  # seconds, not MLflow's minutes of retries
        if job.mlflow_run:
            check_run(job.mlflow_run)
    det = load_model(job.model)
    gamma = isinstance(det, GammaDetector)
    encoder = job.encoder or det.encoder or None
    degrades = ([""] + sorted({v.degrade for v in list_variants(job.features) if v.degrade and (v.has_tokens or not gamma)})
                if job.degrade == "all" else [job.degrade])
    if gamma:
        from gendet.features.tokens import resolve_token_variant
        from gendet.method.gamma.eval import check_token_variant

        variants = {d: resolve_token_variant(job.features, encoder=encoder, degrade=d) for d in degrades}
    else:
        variants = {degrade: resolve_variant(job.features, encoder=encoder, degrade=degrade) for degrade in degrades}
    for variant in variants.values():
        if gamma:
            check_token_variant(det, variant)
        else:
            scoring.check_matches({det.method: det}, variant)
        check_rows(variant.url, eval_splits=job.eval_splits)
    check_outputs({"--out": job.out})
    return det, variants


def evaluate_gamma(det: GammaDetector, variant: Variant, job: EvaluateJob) -> dict:
    """metrics.json of a GAMMA model on a token variant's eval splits (pixel metrics included)."""
    from gendet.features.tokens import load_token_rows
    from gendet.method.gamma.eval import gamma_report

    rows = load_token_rows(job.features, encoder=variant.encoder, degrade=variant.degrade, splits=job.eval_splits)
    return gamma_report(det, rows, model=job.model)[0]


def run(job: EvaluateJob) -> dict[str, Any]:
    """Score, write OUT/metrics.json and OUT/table.md, log into --mlflow-run; returns metrics.json's
    dict with ``table`` (the Markdown) beside it."""
    from gendet.eval.metrics import json_safe
    from gendet.eval.tables import degradation_table, table
    from gendet.method.gamma.detector import GammaDetector
    from gendet.mlops import tracking
    from pipelines._ray import require_ray

    require_ray()
    with tracking.tracking_uri(job.tracking_uri):
        det, variants = preflight(job)
        degrades = list(variants)
        by_degrade = {}
        for degrade, variant in variants.items():
            if isinstance(det, GammaDetector):
                by_degrade[degrade] = evaluate_gamma(det, variant, job)
                continue
            by_degrade[degrade] = evaluate_store({det.method: det}, variant, job.eval_splits,
                                                 model_uris={det.method: job.model},
                                                 ray_min_rows=job.ray_min_rows)[0][det.method]
        main_report = by_degrade[degrades[0]]
        if len(degrades) > 1:
            main_report = {**main_report, "degraded": {d or "none": r for d, r in by_degrade.items()}}
        if isinstance(det, GammaDetector):
            from gendet.method.gamma.eval import report_table

            text = report_table(by_degrade[degrades[0]], det.method)
        else:
            text = table({det.method: by_degrade[degrades[0]]})
        if len(degrades) > 1:
            text += "\n\n" + degradation_table(by_degrade)
        gio.write_bytes_atomic(gio.join(job.out, "metrics.json"), (json.dumps(json_safe(main_report), indent=2) + "\n").encode())
        gio.write_bytes_atomic(gio.join(job.out, "table.md"), (text + "\n").encode())
        if job.mlflow_run:
            tracking.log_evaluation(job.mlflow_run, main_report, text)
    return {**main_report, "table": text}


def main(job: EvaluateJob) -> int:
    report = run(job)
    _jobs.emit(report["table"])
    log.info("metrics written to %s", gio.join(job.out, "metrics.json"))
    return 0


JOB = _jobs.JobSpec(EvaluateJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.evaluate"))
