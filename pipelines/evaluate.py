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
``--out`` can be written; with ``RAY_ADDRESS`` set, FEATURES and ``--out`` must be URLs every node
reaches unless ``--shared-fs``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from gendet import GendetError
from gendet import io as gio
from gendet.config import csv_tuple
from gendet.eval import scoring
from gendet.eval.metrics import json_safe
from gendet.eval.tables import degradation_table, table
from gendet.features.contents import check_rows
from gendet.features.store import Variant, feature_files, list_variants, resolve_variant
from gendet.method.gamma.detector import GammaDetector
from gendet.method.gendet.detector import Detector
from gendet.serve.loading import load_model


def score_variant(detectors: dict[str, Detector], variant: Variant, splits: tuple[str, ...] = (), *,
                  shards: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Columns label, subset, score_<method>, discrepancy_<method> over the rows of ``splits``
    (or of the shards named by stem in ``shards``: what ``refresh`` has just extracted), scored
    by the library's ``DetectorScorer`` on a Ray Data actor."""
    import ray.data
    from ray.data.expressions import col

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
    if variant.rows and variant.rows <= ray_min_rows:
        scored = scoring.score_store(detectors, variant, splits, shards=shards)
    else:
        scored = score_variant(detectors, variant, splits, shards=shards)
    return scoring.reports(scored, detectors, model_uris=model_uris), scored


# --- gendet evaluate -----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES", help="feature store URL")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, runs:/…, or a detector directory")
    p.add_argument("--out", default="metrics.json", help="where to write metrics.json")
    p.add_argument("--encoder", default=None, help="store variant's encoder when several are present (default: the model's)")
    p.add_argument("--eval-splits", type=csv_tuple, default=("test",),
                   help="splits to score (GenImage has train/val: use val)")
    p.add_argument("--degrade", default="", help="score the variant extracted with this --degrade spec; 'all' = Table 4 over "
                                                 "every degraded variant")
    p.add_argument("--mlflow-run", default=None, help="log metrics.json and the table into this MLflow run id")
    p.add_argument("--ray-min-rows", type=int, default=RAY_MIN_ROWS,
                   help="score on Ray Data when the variant has more rows than this, else in this process (0 = always Ray)")
    p.add_argument("--shared-fs", action="store_true",
                   help="with RAY_ADDRESS set, allow local paths for FEATURES and --out: a mount every node sees (NFS); "
                        "env GENDET_SHARED_FS=1 does the same")


def preflight(args: argparse.Namespace) -> tuple[Detector | GammaDetector, dict[str, Variant]]:
    """Everything the run needs, before any scoring, each failure one line; returns the model and
    {degrade: variant} to score."""
    for url, what in ((args.features, "FEATURES"), (args.out, "--out")):
        gio.require_reachable(url, what, "--shared-fs", shared=args.shared_fs)
    if args.model.startswith(("models:/", "runs:/")) or args.mlflow_run:
        from gendet.mlops.tracking import check_server

        check_server()  # seconds, not MLflow's minutes of retries
    det = load_model(args.model)
    gamma = isinstance(det, GammaDetector)
    if args.mlflow_run:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            MlflowClient().get_run(args.mlflow_run)
        except MlflowException as exc:
            raise GendetError(f"--mlflow-run {args.mlflow_run}: no such run in the tracking store ({exc.error_code}); "
                              "pass a run id of MLFLOW_TRACKING_URI's store") from None
    encoder = args.encoder or det.encoder or None
    degrades = ([""] + sorted({v.degrade for v in list_variants(args.features) if v.degrade and (v.has_tokens or not gamma)})
                if args.degrade == "all" else [args.degrade])
    if gamma:
        from gendet.features.tokens import resolve_token_variant
        from gendet.method.gamma.eval import check_token_variant

        variants = {d: resolve_token_variant(args.features, encoder=encoder, degrade=d) for d in degrades}
    else:
        variants = {degrade: resolve_variant(args.features, encoder=encoder, degrade=degrade) for degrade in degrades}
    for variant in variants.values():
        if gamma:
            check_token_variant(det, variant)
        else:
            scoring.check_matches({det.method: det}, variant)
        check_rows(variant.url, eval_splits=args.eval_splits)
    gio.check_writable(os.path.dirname(args.out) or ".", "--out")
    return det, variants


def run(args: argparse.Namespace) -> int:
    from pipelines._ray import require_ray

    require_ray()
    det, variants = preflight(args)
    degrades = list(variants)
    by_degrade = {}
    for degrade, variant in variants.items():
        if isinstance(det, GammaDetector):
            by_degrade[degrade] = evaluate_gamma(det, variant, args)
            continue
        by_degrade[degrade] = evaluate_store({det.method: det}, variant, args.eval_splits, model_uris={det.method: args.model},
                                             ray_min_rows=args.ray_min_rows)[0][det.method]
    main_report = by_degrade[degrades[0]]
    if len(degrades) > 1:
        main_report = {**main_report, "degraded": {d or "none": r for d, r in by_degrade.items()}}
    gio.write_bytes_atomic(args.out, (json.dumps(json_safe(main_report), indent=2) + "\n").encode())
    text = table({det.method: by_degrade[degrades[0]]})
    if isinstance(det, GammaDetector):
        from gendet.method.gamma.eval import report_table

        text = report_table(by_degrade[degrades[0]], det.method)
    if len(degrades) > 1:
        text += "\n\n" + degradation_table(by_degrade)
    print(text)
    print(f"metrics written to {args.out}")
    if args.mlflow_run:
        # The client, not start_run: it logs into that run whatever experiment this process has active.
        from mlflow import MlflowClient

        client = MlflowClient()
        client.log_dict(args.mlflow_run, json_safe(main_report), "evaluate/metrics.json")
        client.log_text(args.mlflow_run, text, "evaluate/table.md")
        for key, value in (("eval_mean_acc", main_report["mean_acc"]), ("eval_mAP", main_report["mAP"]),
                           ("eval_mean_pixel_f1", main_report.get("mean_pixel_f1")),
                           ("eval_mean_pixel_iou", main_report.get("mean_pixel_iou"))):
            if value is not None:
                client.log_metric(args.mlflow_run, key, float(value))
    return 0


def evaluate_gamma(det: GammaDetector, variant: Variant, args: argparse.Namespace) -> dict:
    """metrics.json of a GAMMA model on a token variant's eval splits (pixel metrics included)."""
    from gendet.features.tokens import load_token_rows
    from gendet.method.gamma.eval import gamma_report

    rows = load_token_rows(args.features, encoder=variant.encoder, degrade=variant.degrade, splits=args.eval_splits)
    return gamma_report(det, rows, model=args.model)[0]


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.evaluate", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
