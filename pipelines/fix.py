"""``gendet fix`` / ``python -m pipelines.fix``: retrain the champion with what slipped, gate, promote.

The closed loop after ``gendet refresh`` alerts (``refresh --fix`` calls it): a new generator's
subsets slipped past ``models:/NAME@champion``. ``fix``

1. pins the model to its version and reads **its own training config** from the run that made it
   (the TrainConfig params ``tracking.log_config`` logged, its encoder and eval splits);
2. trains a challenger with that config plus the slipped subsets as training subsets, each
   limited to ``shots`` fakes and as many reals (TrainConfig ``shots``: a stable hash of
   content_id picks them), through ``pipelines.train.train`` itself: same Ray Train job,
   calibration (thresholds and Platt scaling are refitted), MLflow run, registration as
   ``challenger`` under the model's registered name;
3. runs the gate against the champion on the same evaluation set, with the per-family rule (no
   subset's calibrated accuracy may fall more than ``--gate-max-family-drop`` below the
   champion's), and moves ``champion`` only if it passes;
4. tags the training run and the new version with its lineage (``gendet.fix.parent_version``,
   ``gendet.fix.subsets``, ``gendet.fix.shots``) and writes ``OUT/fix.json``.

The slipped subsets must be in FEATURES (``refresh`` extracted them) with rows in the champion's
training split; their test rows are then part of the gate's evaluation set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.config import csv_tuple
from gendet.eval.metrics import json_safe

DEFAULT_SHOTS = 32  # measured: >= 90 % of sdedit caught in both demo worlds (README "Fixing what slipped")
LINEAGE_PREFIX = "gendet.fix."
FIX_JSON = "fix.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES",
                   help="the feature store holding the champion's training rows and the new subsets")
    p.add_argument("--model", default="models:/gendet@champion",
                   help="the registered model to fix (models:/NAME@ALIAS or /VERSION)")
    p.add_argument("--subsets", required=True, type=csv_tuple, help="the subsets that slipped, e.g. sdedit")
    p.add_argument("--shots", type=int, default=DEFAULT_SHOTS,
                   help="fakes (and as many reals) of each new subset to train on; 0 = all of its training rows")
    p.add_argument("--out", default="out/fix", help="output folder: the training run's files and fix.json")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="logical CPUs per worker")
    p.add_argument("--gate-margin", type=float, default=0.0, help="mean accuracy the challenger must gain over the champion")
    p.add_argument("--gate-real-floor", type=float, default=0.8, help="minimum real accuracy at the calibrated threshold")
    p.add_argument("--gate-max-family-drop", type=float, default=0.02,
                   help="largest fall of any subset's calibrated accuracy below the champion's")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI of the registry (default: MLFLOW_TRACKING_URI)")


def parent_run(model: str, client: Any) -> tuple[str, str, Any]:
    """(registered name, version, the run that made it) of ``models:/NAME@ALIAS`` or ``/VERSION``."""
    from gendet.mlops.registry import pin

    found = pin(client, model)
    if found is None:
        raise GendetError(f"--model {model}: fix retrains a registered model; pass models:/NAME@champion or models:/NAME/VERSION")
    if not found.run_id:
        raise GendetError(f"--model {model}: version {found.version} has no training run at {client.tracking_uri}; "
                          "fix needs the run's TrainConfig: register a model trained with `gendet train`")
    return found.name, str(found.version), client.get_run(found.run_id)


def champion_settings(params: dict[str, str]) -> list[str]:
    """``--set KEY=VALUE`` items that rebuild the TrainConfig the run logged (``tracking.log_config``:
    tuples as JSON text). ``train_subsets`` and ``shots`` are left to the caller."""
    from gendet.method.gendet.config import TrainConfig

    items = []
    for f in fields(TrainConfig):
        if f.name in ("train_subsets", "shots") or f.name not in params:
            continue
        value = params[f.name]
        if value.startswith("["):
            value = ",".join(json.loads(value))
        items += ["--set", f"{f.name}={value}"]
    if not items:
        raise GendetError("the model's run logged no TrainConfig params; retrain it with `gendet train` (which logs them)")
    return items


def train_argv(features: str, params: dict[str, str], name: str, subsets: Sequence[str], shots: int, out: str,
               *, run_name: str, num_workers: int, cpus_per_worker: float, gate_margin: float, gate_real_floor: float,
               gate_max_family_drop: float) -> list[str]:
    """``gendet train`` arguments: the parent's config, its training subsets plus ``subsets``."""
    parent_subsets = tuple(json.loads(params.get("train_subsets", "[]")))
    argv = [features, "--train-subsets", ",".join(dict.fromkeys((*parent_subsets, *subsets))), "--out", out,
            "--eval-splits", params.get("eval_splits", "test"), "--num-workers", str(num_workers),
            "--cpus-per-worker", str(cpus_per_worker), "--name", run_name, "--register", name,
            "--gate-margin", str(gate_margin), "--gate-real-floor", str(gate_real_floor),
            "--gate-max-family-drop", str(gate_max_family_drop), *champion_settings(params)]
    if params.get("encoder"):
        argv += ["--encoder", params["encoder"]]
    if not parent_subsets:  # the parent trained on every subset: so does the fix, the new ones limited
        argv += ["--set", "train_subsets="]
    for subset in subsets if shots else ():
        argv += ["--shots", f"{subset}={shots}"]
    return argv


def per_family(gate: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{subset: {"before": {...}, "after": {...}}}: the champion's and the challenger's calibrated
    accuracies on the gate's evaluation set."""
    return {s: {"before": row["champion"], "after": row["challenger"]} for s, row in gate.get("families", {}).items()}


def fix(features: str, model: str = "models:/gendet@champion", subsets: Sequence[str] = (), shots: int | None = DEFAULT_SHOTS,
        out: str = "out/fix", *, num_workers: int = 1, cpus_per_worker: float = 1.0, gate_margin: float = 0.0,
        gate_real_floor: float = 0.8, gate_max_family_drop: float = 0.02, tracking_uri: str | None = None) -> dict[str, Any]:
    """Retrain ``model`` (a registered model; its version is pinned first) with its own training
    config plus ``subsets``, each limited to ``shots`` fakes and as many reals (None or 0: all of
    their training rows), register the result as ``challenger``, gate it against the champion
    (with the per-family rule) and promote it only if it passes.

    The registry is ``tracking_uri``, else MLFLOW_TRACKING_URI / the process's MLflow URI; the
    training run logs there too. Returns what ``OUT/fix.json`` holds: ``subsets``, ``shots``,
    ``parent_version`` and ``champion_version_before``, ``challenger_version``, ``promoted``,
    ``reason`` (the gate's), ``worst_family``, ``families`` ({subset: {"before", "after"}} of
    ``acc_calibrated``, ``fake_acc_calibrated``, ``real_acc_calibrated``, ``ap``), ``run_id``,
    ``seconds``.
    """
    import mlflow
    from mlflow import MlflowClient

    from gendet.mlops import registry
    from pipelines import train
    from pipelines._ray import require_ray, verb_args

    started = time.perf_counter()
    subsets = tuple(dict.fromkeys(subsets))
    if not subsets:
        raise GendetError("fix: no subsets; name the ones that slipped, e.g. --subsets sdedit")
    if shots is not None and shots < 0:
        raise GendetError(f"fix: shots {shots}; give a positive number of images per subset, or 0 for all")
    require_ray()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    client = MlflowClient(uri)
    name, parent_version, run = parent_run(model, client)
    champion = registry.version_by_alias(client, name, registry.CHAMPION)
    out = gio.absolute(out)
    run_name = f"fix-{name}-v{parent_version}-{int(time.time())}"  # a new name: an old one would resume
    argv = train_argv(features, run.data.params, name, subsets, shots or 0, out, run_name=run_name,
                      num_workers=num_workers, cpus_per_worker=cpus_per_worker, gate_margin=gate_margin,
                      gate_real_floor=gate_real_floor, gate_max_family_drop=gate_max_family_drop)
    print(f"fix: retraining {model} (version {parent_version}) with {', '.join(subsets)} "
          f"({shots or 'all'} shots each): gendet train {' '.join(argv)}", flush=True)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the training run and its registration go to the parent's registry
    try:
        summary = train.train(verb_args(train, argv))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    gate = summary["gate"]
    lineage = {"parent_version": parent_version, "subsets": ",".join(subsets), "shots": str(shots or "all")}
    for key, value in lineage.items():
        client.set_tag(summary["run_id"], LINEAGE_PREFIX + key, value)
        client.set_model_version_tag(name, gate["version"], LINEAGE_PREFIX + key, value)
    result = {"model": model, "name": name, "parent_version": parent_version,
              "champion_version_before": None if champion is None else str(champion.version),
              "subsets": list(subsets), "shots": shots or None, "challenger_version": gate["version"],
              "promoted": gate["promoted"], "reason": gate["reason"], "worst_family": gate.get("worst_family"),
              "worst_family_drop": gate.get("worst_family_drop"), "families": per_family(gate),
              "run_id": summary["run_id"], "train_out": out, "tracking_uri": uri,
              "seconds": round(time.perf_counter() - started, 1)}
    gio.write_json_atomic(gio.join(out, FIX_JSON), json_safe(result))
    return result


def format_fix(result: dict[str, Any]) -> str:
    """A short table: every family's calibrated accuracy and fakes caught, before and after."""
    from gendet.eval.tables import markdown_table, pct

    rows = [[s, pct((row["before"] or {}).get("acc_calibrated")), pct(row["after"]["acc_calibrated"]),
             pct((row["before"] or {}).get("fake_acc_calibrated")), pct(row["after"]["fake_acc_calibrated"])]
            for s, row in result["families"].items() if row["after"]]
    verdict = "PROMOTED" if result["promoted"] else "not promoted"
    return (markdown_table(["subset", "acc_cal before", "acc_cal after", "fake caught before", "fake caught after"], rows)
            + f"\n\nversion {result['challenger_version']} {verdict}: {result['reason']} ({result['seconds']:.0f} s)")


def run(args: argparse.Namespace) -> int:
    result = fix(args.features, model=args.model, subsets=args.subsets, shots=args.shots, out=args.out,
                 num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker, gate_margin=args.gate_margin,
                 gate_real_floor=args.gate_real_floor, gate_max_family_drop=args.gate_max_family_drop,
                 tracking_uri=args.tracking_uri)
    print(format_fix(result))
    print(f"result written to {gio.join(result['train_out'], FIX_JSON)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.fix", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
