"""``gendet sweep`` / ``python -m pipelines.sweep``: a grid of TrainConfig values on Ray Tune, one MLflow run per trial.

The paper's Table 5 varies M (``margin``) and alpha; the default grid is theirs, alpha in
{0.01, 0.1, 1} x M in {1, 2, 4}, and ``--grid KEY=v1,v2`` sweeps any TrainConfig field (repeat it
for more dimensions; ``--seeds`` adds the seed as one more). Every point is built into a
TrainConfig, and so checked, before Ray starts: a bad key or value is one line, exit 2. So are the
store's rows (training subsets, eval splits), the MLflow server, ``--out`` and ``--storage``
(writable; with ``RAY_ADDRESS`` set, URLs every node reaches unless ``--shared-fs``).

Each Tune trial trains in its own process with the library: ``train_all`` on the training rows
held in memory (``ParquetSource.table`` into a ``TensorSource``), Platt scaling and thresholds
fitted on the rows ``gendet train`` would use (``TrainConfig.calibration_split``, resolved by the
driver: the val split, or a held-out part of the training rows when val is scored), then the eval
splits scored by ``pipelines.evaluate.evaluate_store`` (in-process below its Ray Data threshold).
It reports to Tune the mean accuracy, AP and calibrated accuracy over the subsets it never trained
on and over the ones it did (``gendet.eval.sweep.trial_numbers``). No trial writes to MLflow: a
Tune callback on the driver logs one run per trial (params: the trial's whole TrainConfig;
metrics: those numbers) as a child of the sweep's parent run, as each trial ends. The driver then
writes ``OUT/sweep.csv`` (one row per trial) and ``OUT/sweep.md`` (Table 5's shape: rows alpha,
columns M, unseen accuracy mean ± sd over seeds; then every grid point), and logs both to the
parent run.

On a local Ray trials take ``--cpus-per-trial`` logical CPUs (default 0.5: the local Ray advertises
more CPUs than the box has cores, and a trial's scoring may start Ray Data tasks of its own) and
at most ``--max-concurrent`` run at once (default: one per core), each with one torch thread per
whole CPU it holds (at least one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import fields
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.config import ConfigError, csv_tuple, from_dict, parse_assignments, to_dict
from gendet.eval import sweep as gsweep
from gendet.features.contents import check_rows, row_counts
from gendet.features.sources import ParquetSource, TensorSource
from gendet.features.store import Variant, feature_matrix, resolve_variant
from gendet.method.gendet.config import METHODS, VAL, TrainConfig, preset, preset_names, resolve_calibration_split
from gendet.method.gendet.trainer import check_calibration, check_source

DEFAULT_GRID = ("alpha=0.01,0.1,1", "margin=1,2,4")  # the paper's Table 5
TABLE_AXES = ("alpha", "margin")  # rows, columns of the Table-5 pivot when both are swept
CSV_FIXED = ("trial_id", "status", "mlflow_run_id", "train_seconds")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in csv_tuple(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    names = ", ".join(f.name for f in fields(TrainConfig))
    p.add_argument("features", metavar="FEATURES", help="feature store URL (written by `gendet extract`)")
    p.add_argument("--train-subsets", required=True, type=csv_tuple, help="subsets to train on, e.g. sd14 or sd14,sd15")
    p.add_argument("--out", default="out/sweep", help="output directory: sweep.csv, sweep.md, Tune's records, the SQLite "
                                                      "MLflow store when MLFLOW_TRACKING_URI is unset")
    p.add_argument("--encoder", default=None, help="feature-store variant to use when several encoders are present")
    p.add_argument("--preset", default="genimage", choices=preset_names(), help="learning rates and schedule (as "
                                                                                "`gendet train --preset`)")
    p.add_argument("--methods", type=csv_tuple, default=("gendet",),
                   help=f"rungs each trial trains, from {','.join(METHODS)} (default gendet; the first numbers are "
                        "gendet's, or the last rung's without it)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a TrainConfig field and its values, repeatable: one trial per combination (default: "
                        + " ".join(f"--grid {g}" for g in DEFAULT_GRID) + f", Table 5). Fields: {names}")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field fixed for every trial, repeatable (as `gendet train --set`)")
    p.add_argument("--seeds", type=_seeds, default=None, help="seeds every grid point runs with, e.g. 0,1,2 (default: 0; "
                                                              "or --grid seed=...)")
    p.add_argument("--eval-splits", type=csv_tuple, default=("test",), help="splits each trial is scored on")
    p.add_argument("--name", default="gendet-sweep", help="MLflow parent run name; Tune's records go to "
                                                          "STORAGE/NAME-<time>")
    p.add_argument("--storage", default=None, help="Tune's storage URL, reached by every node (default: OUT/ray_results)")
    p.add_argument("--shared-fs", action="store_true",
                   help="with RAY_ADDRESS set, allow local paths for FEATURES, --out and --storage: a mount every node sees "
                        "(NFS); env GENDET_SHARED_FS=1 does the same")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at once (0: one per core on a local Ray, as many as fit on a cluster)")
    p.add_argument("--cpus-per-trial", type=float, default=0.5, help="logical CPUs per trial (fractions allowed)")


# --- before Ray: every point checked ----------------------------------------------------------------
def parse_grid(items: list[str] | tuple[str, ...]) -> dict[str, list[Any]]:
    """``["alpha=0.01,0.1"]`` -> ``{"alpha": [0.01, 0.1]}``, each value typed as the field takes it."""
    known = {f.name for f in fields(TrainConfig)}
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not csv_tuple(text):
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,..., e.g. --grid alpha=0.01,0.1,1")
        if key not in known:
            raise ConfigError(f"--grid {item}: unknown field {key!r}; known: {', '.join(sorted(known))}")
        if key in grid:
            raise ConfigError(f"--grid {item}: {key} is swept twice; give all its values in one --grid")
        grid[key] = [parse_assignments(TrainConfig, [f"{key}={v}"])[key] for v in csv_tuple(text)]
    return grid


def build_sweep(args: argparse.Namespace) -> tuple[dict[str, list[Any]], list[dict[str, Any]], list[TrainConfig]]:
    """(grid, points, one TrainConfig per point), every point validated; raises ConfigError."""
    if not args.train_subsets:
        raise ConfigError("--train-subsets: empty; name the subset(s) to train on, e.g. --train-subsets sdv14")
    if args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial {args.cpus_per_trial}: must be > 0")
    if args.max_concurrent < 0:
        raise ConfigError(f"--max-concurrent {args.max_concurrent}: must be >= 0")
    grid = parse_grid(args.grid or DEFAULT_GRID)
    fixed = {"methods": tuple(args.methods), "train_subsets": tuple(args.train_subsets)}
    fixed |= parse_assignments(TrainConfig, args.assignments)
    if args.seeds is not None and ("seed" in grid or "seed" in fixed):
        raise ConfigError(f"--seeds and {'--grid' if 'seed' in grid else '--set'} seed=...: give the seeds once")
    if "seed" not in grid and "seed" not in fixed:
        grid["seed"] = list(args.seeds or (0,))
    both = sorted(set(grid) & set(fixed) - {"methods", "train_subsets"})
    if both:
        raise ConfigError(f"--grid and --set both give {both}; a field is either swept or fixed")
    points = gsweep.expand_grid(grid)
    configs = []
    for point in points:
        try:
            configs.append(preset(args.preset, **{**fixed, **point}))
        except ConfigError as exc:
            raise ConfigError(f"--grid point {_label(point)}: {exc}") from None
    return grid, points, configs


def _label(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={gsweep.cell(v)}" for k, v in point.items())


def _key(point: dict[str, Any]) -> str:
    return json.dumps({k: gsweep.cell(v) for k, v in point.items()}, sort_keys=True)


def resolve_data(configs: list[TrainConfig], variant: Variant, eval_splits: tuple[str, ...]) -> list[TrainConfig]:
    """The configs with their calibration rows resolved as ``gendet train`` resolves them (val,
    unless val is scored or absent: then a held-out part of the training rows); every distinct
    training and calibration selection checked for rows of both classes, the eval splits for rows."""
    counts = row_counts(variant.url)
    val_rows = sum(n for (split, _), n in counts.items() if split == VAL)
    resolved = [resolve_calibration_split(c, eval_splits=eval_splits, val_rows=val_rows) for c in configs]
    checked = set()
    for cfg in resolved:
        rows = (cfg.train_subsets, cfg.train_splits, cfg.calibration_split, cfg.calibration_holdout)
        if rows not in checked:
            checked.add(rows)
            check_rows(variant.url, eval_splits=eval_splits, train_subsets=cfg.train_subsets,
                       train_splits=cfg.train_splits, counts=counts)
            check_source(cfg, ParquetSource(variant.url, **cfg.training_rows()))
            check_calibration(cfg, ParquetSource(variant.url, **cfg.calibration_rows()))
    return resolved


def output_urls(args: argparse.Namespace) -> tuple[str, str]:
    """(OUT, Tune storage) URLs, checked to be reachable: with RAY_ADDRESS no node-local FEATURES,
    --out or --storage (unless --shared-fs)."""
    out = gio.absolute(args.out)
    storage = args.storage or gio.join(out, "ray_results")
    storage = gio.absolute(storage)
    for url, what in ((args.features, "FEATURES"), (out, "--out"), (storage, "--storage")):
        gio.require_reachable(url, what, "--shared-fs", shared=args.shared_fs)
    return out, storage


def check_outputs(out: str, storage: str) -> None:
    """Before Ray starts: the MLflow store usable (a remote --out needs a tracking server, which
    must answer), --out and --storage writable."""
    from gendet.mlops import tracking

    tracking.check_tracking(out)
    gio.check_writable(out, "--out")
    gio.check_writable(storage, "--storage")


# --- inside a Tune trial --------------------------------------------------------------------------
def run_trial(point: dict[str, Any], *, configs: dict[str, dict[str, Any]], variant: Variant,
              eval_splits: tuple[str, ...], threads: int) -> None:
    """One grid point: train in this process, calibrate, score, report the numbers to Tune."""
    import ray.tune
    import torch

    from gendet.method.gendet.trainer import train_all
    from gendet.mlops.training_report import headline_method
    from pipelines.evaluate import evaluate_store

    torch.set_num_threads(threads)
    cfg = from_dict(TrainConfig, configs[_key(point)])  # the point's config, checked and resolved by the driver
    rows = ParquetSource(variant.url, **cfg.training_rows()).table()
    source = TensorSource(feature_matrix(rows.column("feature")).astype("float32"),  # a copy: Arrow's is read-only
                          [label == "fake" for label in rows.column("label").to_pylist()],
                          batch_size=cfg.batch_size, seed=cfg.seed)
    calibration = ParquetSource(variant.url, dtype=cfg.feature_dtype, **cfg.calibration_rows())  # as gendet train
    started = time.perf_counter()
    result = train_all(cfg, source, calibration=calibration, **variant.detector_fields())
    train_seconds = time.perf_counter() - started
    reports = evaluate_store(result.detectors, variant, eval_splits)[0]
    numbers = gsweep.trial_numbers(reports, cfg.train_subsets, headline_method(result.detectors))
    ray.tune.report({**numbers, "train_seconds": train_seconds})


# --- on the driver --------------------------------------------------------------------------------
def _reported(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numbers in a Tune result (not Tune's counters), finite ones only."""
    return {k: float(v) for k, v in result.items()
            if (k in gsweep.NUMBERS or "/" in k or k == "train_seconds") and isinstance(v, (int, float))
            and math.isfinite(float(v))}


def trial_run_logger(tracking_uri: str, experiment_id: str, parent_run_id: str, grid_keys: list[str],
                     configs: dict[str, TrainConfig], sweep_name: str):
    """A Tune callback that logs each ended trial as an MLflow child run of ``parent_run_id``."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
    from ray import tune

    from gendet.mlops.tracking import flatten

    class TrialRuns(tune.Callback):
        def __init__(self) -> None:
            self.client, self.runs, self.trial_ids = MlflowClient(tracking_uri), {}, {}

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._log(trial, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._log(trial, "FAILED")

        def _log(self, trial, status: str) -> None:
            point = {k: trial.config[k] for k in grid_keys}
            cfg = configs[_key(point)]
            run = self.client.create_run(experiment_id, run_name=f"{sweep_name} {_label(point)}",
                                         tags={MLFLOW_PARENT_RUN_ID: parent_run_id, "gendet.sweep.trial_id": trial.trial_id,
                                               "gendet.sweep.point": _label(point)})
            now = int(time.time() * 1000)
            params = [Param(k, str(v)) for k, v in flatten(to_dict(cfg)).items()]
            metrics = [Metric(k, v, now, 0) for k, v in _reported(trial.last_result or {}).items()]
            self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
            self.client.set_terminated(run.info.run_id, status)
            self.runs[_key(point)], self.trial_ids[_key(point)] = run.info.run_id, trial.trial_id

    return TrialRuns()


def write_tables(out: str, grid: dict[str, list[Any]], rows: list[dict[str, Any]], title: str) -> tuple[str, str]:
    """Write OUT/sweep.csv and OUT/sweep.md; returns (CSV text, Markdown text)."""
    knobs = [k for k in grid if k != "seed"]
    numbers = list(gsweep.NUMBERS)
    extra = sorted({k for r in rows for k in r if "/" in k})
    columns = [*CSV_FIXED[:1], *grid, *CSV_FIXED[1:], *numbers, *extra]
    table_csv = gsweep.csv_text(rows, columns)
    gio.write_bytes_atomic(gio.join(out, "sweep.csv"), table_csv.encode())
    done = [r for r in rows if r["status"] == "TERMINATED"]
    parts = [title, ""]
    if set(TABLE_AXES) <= set(knobs):
        others = [k for k in knobs if k not in TABLE_AXES]
        for values, members in gsweep.group(done, others).items() if others else [((), done)]:
            where = ", ".join(f"{k}={v}" for k, v in zip(others, values))
            parts += [f"Unseen accuracy (%), mean ± sd over seeds{f' ({where})' if where else ''}:", "",
                      gsweep.pivot_table(members, *TABLE_AXES), ""]
    parts += ["Every grid point (%, mean ± sd over seeds):", "", gsweep.grid_table(done, knobs or ["seed"], numbers)]
    failed = [r for r in rows if r["status"] != "TERMINATED"]
    if failed:
        parts += ["", f"{len(failed)} trial(s) did not finish: " + "; ".join(r["point"] for r in failed)]
    text = "\n".join(parts) + "\n"
    gio.write_bytes_atomic(gio.join(out, "sweep.md"), text.encode())
    return table_csv, text


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Check every point, run the grid on Ray Tune, log, write the tables; returns the summary
    (with ``result_grid``, Tune's own results)."""
    from pipelines._ray import init_ray, require_ray

    require_ray()
    grid, points, configs = build_sweep(args)  # every point checked before any work
    out, storage = output_urls(args)
    variant = resolve_variant(args.features, encoder=args.encoder)
    configs = resolve_data(configs, variant, tuple(args.eval_splits))
    check_outputs(out, storage)

    import mlflow
    from ray import tune

    from gendet.mlops import tracking

    run_name = f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local = not os.environ.get("RAY_ADDRESS", "").strip()
    # A local Ray's workers inherit this environment: without the trials' progress bars, which would
    # interleave in the driver's log (Tune reports progress). Restored once Ray is up.
    quiet = local and "TQDM_DISABLE" not in os.environ
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        init_ray()
    finally:
        if quiet:
            os.environ.pop("TQDM_DISABLE", None)
    max_concurrent = args.max_concurrent or ((os.cpu_count() or 1) if local else None)
    by_key = {_key(p): c for p, c in zip(points, configs)}
    started = time.perf_counter()
    with tracking.start_run(out, run_name=args.name, tags={"gendet.features": variant.url, "gendet.sweep": "parent"}) as parent:
        mlflow.log_params({"features": variant.url, "encoder": variant.encoder, "preset": args.preset,
                           "train_subsets": ",".join(args.train_subsets), "methods": ",".join(args.methods),
                           "grid": json.dumps({k: [gsweep.cell(v) for v in vs] for k, vs in grid.items()}),
                           "set": json.dumps(list(args.assignments)), "eval_splits": ",".join(args.eval_splits),
                           "trials": len(points), "tune_run": run_name,
                           "calibration_split": ",".join(sorted({c.calibration_split for c in configs}))})
        logger = trial_run_logger(mlflow.get_tracking_uri(), parent.info.experiment_id, parent.info.run_id, list(grid),
                                  by_key, args.name)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, configs={k: to_dict(c) for k, c in by_key.items()}, variant=variant,
                                 eval_splits=tuple(args.eval_splits), threads=max(1, int(args.cpus_per_trial))),
            {"cpu": args.cpus_per_trial})
        tuner = tune.Tuner(
            trainable, param_space={k: tune.grid_search(v) for k, v in grid.items()},
            tune_config=tune.TuneConfig(metric="unseen_acc", mode="max", max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name=run_name, storage_path=storage, callbacks=[logger]))
        result_grid = tuner.fit()
        wall = time.perf_counter() - started
        order = {_key(p): i for i, p in enumerate(points)}
        rows = []
        for result in result_grid:
            point = {k: result.config[k] for k in grid}
            metrics = result.metrics or {}
            rows.append({"trial_id": logger.trial_ids.get(_key(point), metrics.get("trial_id")), **point,
                         "point": _label(point), "status": "ERROR" if result.error else "TERMINATED",
                         "mlflow_run_id": logger.runs.get(_key(point)), **_reported(metrics)})
        rows.sort(key=lambda r: order[_key({k: r[k] for k in grid})])
        title = (f"# Sweep {args.name}: {len(points)} trials on {variant.encoder} features, trained on "
                 f"{','.join(args.train_subsets)} (preset {args.preset}), scored on {','.join(args.eval_splits)}; "
                 f"{wall:.0f} s")
        table_csv, text = write_tables(out, grid, rows, title)
        mlflow.log_text(table_csv, "sweep.csv")
        mlflow.log_text(text, "sweep.md")
        done = [r for r in rows if r["status"] == "TERMINATED" and "unseen_acc" in r]
        if done:
            best = max(done, key=lambda r: r["unseen_acc"])
            mlflow.log_metrics({"best_unseen_acc": best["unseen_acc"], "wall_seconds": wall})
            mlflow.set_tag("gendet.sweep.best", best["point"])
    print(text)
    summary = {"parent_run_id": parent.info.run_id, "experiment_id": parent.info.experiment_id,
               "tracking_uri": mlflow.get_tracking_uri(), "tune_path": os.path.join(storage, run_name),
               "csv": gio.join(out, "sweep.csv"), "md": gio.join(out, "sweep.md"), "wall_seconds": wall, "rows": rows}
    gio.write_json_atomic(gio.join(out, "sweep_summary.json"), json.loads(json.dumps(summary, default=str)))
    print(f"wrote {summary['csv']} and {summary['md']}; MLflow parent run {parent.info.run_id} ({summary['tracking_uri']})")
    failed = [r["point"] for r in rows if r["status"] != "TERMINATED"]
    if failed:
        raise GendetError(f"{len(failed)} of {len(rows)} trials failed ({failed[0]} first); their errors are under "
                          f"{summary['tune_path']}")
    return {**summary, "result_grid": result_grid}


def run(args: argparse.Namespace) -> int:
    sweep(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.sweep", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
