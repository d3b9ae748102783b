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
   ``--out`` (refresh.json), set the Prometheus gauges (``pipelines._metrics``), and only then
   record the shards as scored; exit ``--alert-exit`` (3) when a subset slipped.

5. with ``--fix``, when a subset slipped: after the verdict is recorded, ``pipelines.fix.fix``
   retrains the model with the slipped subsets (``--fix-shots`` images each), gates it against the
   champion (every known family checked) and promotes it only if it passes; refresh.json gains
   ``fix`` (what fix.json holds). The exit code is still ``--alert-exit``: the alert happened,
   and the output says whether the fix was promoted.

``ray job submit`` exits 1 for any failed job, whatever its code: under it (or any scheduler that
only knows failed/succeeded) pass ``--alert-exit 0`` and page on the metrics; a failed job is then
a crash. Nothing to score: it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.eval import refresh_state
from gendet.eval.metrics import json_safe
from gendet.eval.slip import MAX_DROP, MIN_FAKE_ACC, SlipRule, format_verdicts, judge, verdicts_dict

ALERT_EXIT = 3
EXPERIMENT = "gendet-refresh"
VERSION_TAG_PREFIX = "gendet.refresh."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", metavar="SHARDS",
                   help="where new shards land: a directory, .tar URL, brace pattern or glob (fsspec)")
    p.add_argument("features", metavar="FEATURES", help="the feature store (only new shards are extracted into it)")
    p.add_argument("--model", default="models:/gendet@champion", help="the detector to check (MLflow URI or directory)")
    p.add_argument("--reference", default=None, metavar="METRICS_JSON",
                   help="metrics.json whose mean_acc_calibrated is the reference (default: the registered model's run)")
    p.add_argument("--max-drop", type=float, default=MAX_DROP, help="allowed fall below the reference (fraction)")
    p.add_argument("--min-fake-acc", type=float, default=MIN_FAKE_ACC, help="least share of new fakes caught")
    p.add_argument("--alert-exit", type=int, default=ALERT_EXIT, metavar="N",
                   help="exit code when a subset slipped; 0 under `ray job submit` (which exits 1 for any failed job): "
                        "alert on the Prometheus metrics, and a failed job means a crash")
    p.add_argument("--out", default="refresh.json", help="where to write the result (path or fsspec URL)")
    p.add_argument("--mlflow-out", default=None, help="directory of the SQLite MLflow store when MLFLOW_TRACKING_URI is unset "
                                                      "(default: next to --out)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    p.add_argument("--concurrency", type=int, default=1, help="encoder actors")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per encoder actor")
    p.add_argument("--shared-fs", action="store_true",
                   help="with RAY_ADDRESS set, allow local paths for SHARDS, FEATURES and --out: a mount every node sees "
                        "(NFS); env GENDET_SHARED_FS=1 does the same")
    p.add_argument("--fix", action="store_true",
                   help="when a subset slips, retrain with it (`gendet fix`), gate and promote if the gate passes")
    p.add_argument("--fix-shots", type=int, default=32, help="with --fix: fakes (and as many reals) of each slipped "
                                                             "subset to train on; 0 = all of its training rows")
    p.add_argument("--fix-out", default=None, help="with --fix: the retraining's output folder (default: fix/ next to --out)")


def preflight(args: argparse.Namespace) -> SlipRule:
    """The checks that need no model, each failure one line, before any work: the rule, the exit
    code, --reference, where SHARDS, FEATURES and --out live, MLflow answering, --out and the state
    writable."""
    from gendet.mlops import tracking

    if args.alert_exit != 0 and not 3 <= args.alert_exit <= 125:
        raise GendetError(f"--alert-exit {args.alert_exit}: 1 is a crash and 2 bad input; pass 0 (alert through the "
                          "metrics) or 3-125")
    rule = SlipRule(max_drop=args.max_drop, min_fake_acc=args.min_fake_acc)
    if args.reference and not gio.exists(args.reference):
        raise GendetError(f"--reference {args.reference}: not found; pass a metrics.json written by `gendet evaluate`")
    if args.shared_fs:  # the extraction step checks the same paths: one flag for the whole verb
        os.environ[gio.SHARED_FS_ENV] = "1"
    for url, what in ((args.shards, "SHARDS"), (args.features, "FEATURES"), (args.out, "--out")):
        gio.require_reachable(url, what, "--shared-fs", shared=args.shared_fs)
    tracking.check_tracking(args.mlflow_out or os.path.dirname(args.out) or ".")
    gio.check_writable(os.path.dirname(args.out) or ".", "--out")
    gio.check_writable(gio.join(args.features, refresh_state.STATE_DIR), "FEATURES")
    if getattr(args, "fix", False):
        if refresh_state.parse_registered(args.model) is None:
            raise GendetError(f"--fix: {args.model} is not a registered model; fix retrains and promotes one: "
                              "pass --model models:/NAME@champion")
        if args.fix_shots < 0:
            raise GendetError(f"--fix-shots {args.fix_shots}: give a number of images per subset (0 = all)")
    return rule


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


def reference_value(args: argparse.Namespace, model: refresh_state.ModelRef, method: str) -> float | None:
    if args.reference:
        value = gio.read_json(args.reference).get("mean_acc_calibrated")
        return None if value is None else float(value)
    from gendet.mlops.registry import reference_metric

    return reference_metric(model.load_uri, f"{method}/mean_acc_calibrated")


def extracted_variant(features: str, summary: dict[str, Any], encoder: str):
    """The store variant this run's extraction wrote to (by folder name: URLs may be spelt apart)."""
    from gendet.features.store import list_variants, resolve_variant

    output = summary.get("output")
    hits = [v for v in list_variants(features) if output and gio.basename(v.url) == gio.basename(output)]
    return hits[0] if hits else resolve_variant(features, encoder=encoder)


def refresh(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steps 0-3: (the result dict, also what ``--out`` holds; the context ``run_once`` records)."""
    from gendet.data.shards import list_shards, shard_stem
    from gendet.encoders.registry import encoder_weights_arg
    from gendet.extract.config import ExtractConfig
    from gendet.features.store import done_shards
    from pipelines._ray import require_ray
    from pipelines.evaluate import evaluate_store
    from pipelines.extract import extract

    require_ray()
    rule = preflight(args)
    model, detector, client = resolve_model(args.model)  # the registry answers, the model loads
    stems = [shard_stem(url) for url in list_shards(args.shards)]
    cfg = ExtractConfig(shards=args.shards, features=args.features, encoder=detector.encoder,
                        weights=encoder_weights_arg(detector.encoder_weights), batch_size=args.batch_size,
                        concurrency=args.concurrency, num_gpus=args.num_gpus,
                        precision=detector.encoder_precision or "fp32")  # the model's features' key (variant key)
    extracted = extract(cfg)
    variant = extracted_variant(args.features, extracted, detector.encoder)
    done = done_shards(variant.url)
    state_at = refresh_state.state_url(args.features, variant.url, model)
    state = refresh_state.load_state(state_at, model)
    todo = refresh_state.unscored(state, done, stems)
    result: dict[str, Any] = {"model": args.model, "model_uri": model.load_uri, "model_version": model.version,
                              "model_digest": model.digest, "encoder": detector.encoder, "extract": extracted,
                              "extracted_shards": extracted["shards_written"], "new_shards": todo, "state": state_at,
                              "subsets": {}, "alert": False}
    context = {"model": model, "client": client, "state": state, "state_url": state_at, "done": done}
    if not todo:
        return result, context
    report = evaluate_store({"champion": detector}, variant, shards=tuple(todo),
                            model_uris={"champion": model.load_uri})[0]["champion"]
    reference = reference_value(args, model, detector.method)
    verdicts = judge(report, reference, rule)
    result.update(reference_mean_acc_calibrated=reference, rule={"max_drop": rule.max_drop, "min_fake_acc": rule.min_fake_acc},
                  metrics=report, subsets=verdicts_dict(verdicts), alert=any(v.slipped for v in verdicts),
                  table=format_verdicts(verdicts, reference))
    return result, context


def log_result(result: dict[str, Any], out_dir: str) -> str:
    """One MLflow run per refresh that scored something; returns its id."""
    import mlflow

    from gendet.mlops import tracking

    tags = {"gendet.alert": str(result["alert"]).lower(), "gendet.model": result["model"],
            "gendet.model_uri": result["model_uri"]}
    with tracking.start_run(out_dir, experiment=EXPERIMENT, tags=tags) as run:
        mlflow.log_params({"model": result["model"], "encoder": result["encoder"],
                           "new_shards": len(result["new_shards"]), **result["rule"]})
        mlflow.log_metrics(tracking.subset_metrics("champion", result["metrics"]))
        mlflow.log_dict(json_safe(result), "refresh.json")
        return run.info.run_id


def tag_model_version(client: Any, model: refresh_state.ModelRef, slipped: list[str], run_id: str, at: float) -> None:
    """The model version's standing verdict (every subset it has judged), where people look at the model."""
    tags = {"alert": str(bool(slipped)).lower(), "slipped": ",".join(slipped) or "none", "run": run_id,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))}
    for key, value in tags.items():
        client.set_model_version_tag(model.name, model.version, VERSION_TAG_PREFIX + key, value)


def write_result(url: str, result: dict[str, Any]) -> None:
    """``--out`` (refresh.json): the verdict, then again with the fix's outcome when ``--fix`` ran."""
    gio.write_bytes_atomic(url, (json.dumps(json_safe(result), indent=2) + "\n").encode())


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """Steps 0-4 without printing. The shards are recorded as scored last: a run that dies before
    scores them again."""
    from pipelines import _metrics

    if args.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
    result, ctx = refresh(args)
    model, state, now = ctx["model"], ctx["state"], time.time()
    if result["new_shards"]:
        result["mlflow_run"] = log_result(result, args.mlflow_out or os.path.dirname(args.out) or ".")
        state = refresh_state.record(state, stems=result["new_shards"], done=ctx["done"], verdicts=result["subsets"],
                                     run=result["mlflow_run"], at=now)
    slipped = refresh_state.slipped_subsets(state)  # this run's verdicts and earlier ones by the same model
    result["standing"] = {"alert": bool(slipped), "slipped": slipped}
    if result["new_shards"] and ctx["client"] is not None:
        tag_model_version(ctx["client"], model, slipped, result["mlflow_run"], now)
    write_result(args.out, result)
    _metrics.publish(model.label, model.version_label, state["subsets"], now)
    if result["new_shards"]:
        refresh_state.save_state(ctx["state_url"], state)
    slipped_now = [s for s, v in result["subsets"].items() if v["slipped"]]
    if getattr(args, "fix", False) and slipped_now:  # after the verdict is recorded: a failed fix loses no alert
        from pipelines.fix import fix

        result["fix"] = fix(args.features, model=model.load_uri, subsets=slipped_now, shots=args.fix_shots,
                            out=args.fix_out or gio.join(os.path.dirname(os.path.abspath(args.out)), "fix"),
                            tracking_uri=ctx["client"].tracking_uri)
        write_result(args.out, result)
    return result


def run(args: argparse.Namespace) -> int:
    result = run_once(args)
    if not result["new_shards"]:
        print(f"nothing new under {args.shards}: every extracted shard is already scored by {result['model_uri']}")
    else:
        print(result["table"])
        for subset, verdict in result["subsets"].items():
            if verdict["slipped"]:
                print(f"ALERT {subset}: {verdict['reason']}")
    if result.get("fix"):
        from pipelines.fix import format_fix

        fixed = result["fix"]
        print(format_fix(fixed))
        print(f"{'FIXED' if fixed['promoted'] else 'NOT FIXED'}: version {fixed['challenger_version']} "
              f"{'is now the champion' if fixed['promoted'] else 'stays challenger'} (the alert stands: exit {args.alert_exit})")
    print(f"result written to {args.out}")
    return args.alert_exit if result["alert"] else 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.refresh", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
