"""``gendet refresh`` / ``python -m pipelines.refresh``: a new generator arrives; does it slip past?

Meant to run on a schedule (``cluster/refresh-cronjob.yaml``) over the folder where new shards
land:

1. extract, incrementally, with the champion's own encoder: shards already in the store are
   skipped, so only what is new is decoded and encoded (``pipelines.extract``);
2. score the champion on exactly the rows of the shards this run wrote (``pipelines.evaluate``);
3. judge every subset in them against the champion's reference (``gendet.eval.slip``): its mean
   calibrated accuracy as logged by the run that made it, or ``--reference metrics.json``;
4. print the table, write ``--out`` (refresh.json), log a run to MLflow (experiment
   ``gendet-refresh``, tag ``gendet.alert``), and exit 3 when any subset slipped, so the
   scheduler marks the run failed and its usual alerting fires.

Nothing new: it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gendet import io as gio
from gendet.eval.metrics import json_safe
from gendet.eval.slip import MAX_DROP, MIN_FAKE_ACC, SlipRule, format_verdicts, judge, verdicts_dict

ALERT_EXIT = 3
EXPERIMENT = "gendet-refresh"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", metavar="SHARDS",
                   help="where new shards land: a directory, .tar URL, brace pattern or glob (fsspec)")
    p.add_argument("features", metavar="FEATURES", help="the feature store (only new shards are extracted into it)")
    p.add_argument("--model", default="models:/gendet@champion", help="the detector to check (MLflow URI or directory)")
    p.add_argument("--reference", default=None, metavar="METRICS_JSON",
                   help="metrics.json whose mean_acc_calibrated is the reference (default: the registered model's run)")
    p.add_argument("--max-drop", type=float, default=MAX_DROP, help="allowed fall below the reference (fraction)")
    p.add_argument("--min-fake-acc", type=float, default=MIN_FAKE_ACC, help="least share of new fakes caught")
    p.add_argument("--out", default="refresh.json", help="where to write the result (path or fsspec URL)")
    p.add_argument("--mlflow-out", default=None, help="directory of the SQLite MLflow store when MLFLOW_TRACKING_URI is unset "
                                                      "(default: next to --out)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    p.add_argument("--concurrency", type=int, default=1, help="encoder actors")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per encoder actor")


def reference_value(args: argparse.Namespace, method: str) -> float | None:
    if args.reference:
        value = gio.read_json(args.reference).get("mean_acc_calibrated")
        return None if value is None else float(value)
    from gendet.mlops.registry import reference_metric

    return reference_metric(args.model, f"{method}/mean_acc_calibrated")


def refresh(args: argparse.Namespace) -> dict[str, Any]:
    """Steps 1-3; returns the result dict (also what ``--out`` holds)."""
    from gendet.encoders.registry import encoder_weights_arg
    from gendet.extract.config import ExtractConfig
    from gendet.features.store import resolve_variant
    from gendet.serve.loading import load_detector
    from pipelines._ray import require_ray
    from pipelines.evaluate import evaluate_store
    from pipelines.extract import extract

    require_ray()
    rule = SlipRule(max_drop=args.max_drop, min_fake_acc=args.min_fake_acc)  # validated before any work
    detector = load_detector(args.model)
    cfg = ExtractConfig(shards=args.shards, features=args.features, encoder=detector.encoder,
                        weights=encoder_weights_arg(detector.encoder_weights), batch_size=args.batch_size,
                        concurrency=args.concurrency, num_gpus=args.num_gpus)
    extracted = extract(cfg)
    result: dict[str, Any] = {"model": args.model, "encoder": detector.encoder, "extract": extracted,
                              "new_shards": extracted["shards_written"], "subsets": {}, "alert": False}
    if not extracted["shards_written"]:
        return result
    variant = resolve_variant(args.features, encoder=detector.encoder)
    report = evaluate_store({"champion": detector}, variant, shards=tuple(extracted["shards_written"]),
                            model_uris={"champion": args.model})[0]["champion"]
    reference = reference_value(args, detector.method)
    verdicts = judge(report, reference, rule)
    result.update(reference_mean_acc_calibrated=reference, rule={"max_drop": rule.max_drop, "min_fake_acc": rule.min_fake_acc},
                  metrics=report, subsets=verdicts_dict(verdicts), alert=any(v.slipped for v in verdicts),
                  table=format_verdicts(verdicts, reference))
    return result


def log_result(result: dict[str, Any], out_dir: str) -> str:
    """One MLflow run per refresh that found something new; returns its id."""
    import mlflow

    from gendet.mlops import tracking

    with tracking.start_run(out_dir, experiment=EXPERIMENT, tags={"gendet.alert": str(result["alert"]).lower(),
                                                                   "gendet.model": result["model"]}) as run:
        mlflow.log_params({"model": result["model"], "encoder": result["encoder"],
                           "new_shards": len(result["new_shards"]), **result["rule"]})
        mlflow.log_metrics(tracking.subset_metrics("champion", result["metrics"]))
        mlflow.log_dict(json_safe(result), "refresh.json")
        return run.info.run_id


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """Steps 1-4 without printing: refresh, log to MLflow when something was new, write ``--out``."""
    if args.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
    result = refresh(args)
    if result["new_shards"]:
        result["mlflow_run"] = log_result(result, args.mlflow_out or os.path.dirname(args.out) or ".")
    gio.write_bytes_atomic(args.out, (json.dumps(json_safe(result), indent=2) + "\n").encode())
    return result


def run(args: argparse.Namespace) -> int:
    result = run_once(args)
    if not result["new_shards"]:
        print(f"nothing new under {args.shards}: every shard is already in {args.features}")
    else:
        print(result["table"])
        for subset, verdict in result["subsets"].items():
            if verdict["slipped"]:
                print(f"ALERT {subset}: {verdict['reason']}")
    print(f"result written to {args.out}")
    return ALERT_EXIT if result["alert"] else 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.refresh", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
