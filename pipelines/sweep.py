"""``gendet sweep`` / ``python -m pipelines.sweep``: a grid of TrainConfig values on Ray Tune, one MLflow run per trial.

The paper's Table 5 varies M (``margin``) and alpha; the default grid is theirs, alpha in
{0.01, 0.1, 1} x M in {1, 2, 4}, and ``--grid KEY=v1,v2`` sweeps any TrainConfig field, its flag's
value replaced per point (repeat it for more dimensions; ``--seeds`` adds the seed as one more). Every point is built into a
TrainConfig, and so checked, before Ray starts: a bad key or value is one line, exit 2. So are the
store's rows (training subsets, eval splits), the MLflow server, ``--out`` and ``--storage``
(writable; with ``RAY_ADDRESS`` set, URLs every node reaches unless ``--shared-fs``).

Each Tune trial trains in its own process with the library: ``train_all`` on the training rows
held in memory (``ParquetSource.table`` into a ``TensorSource``), Platt scaling and thresholds
fitted on the rows ``gendet train`` would use (``TrainConfig.calibration_split``, resolved by the
driver with ``--select-split`` and ``--eval-splits`` both scored: a held-out part of the training
rows), then ``--select-split`` (val) scored by ``pipelines.evaluate.evaluate_store`` (in-process
below its Ray Data threshold). It reports to Tune the mean accuracy, AP and calibrated accuracy over
the subsets it never trained on and over the ones it did (``gendet.eval.sweep.trial_numbers``), its
detectors as the trial's checkpoint. The driver chooses the grid point with the best mean unseen
accuracy on the selection split (``gendet.eval.sweep.best_point``), and only then scores that
point's detectors on ``--eval-splits`` (test): the number the sweep reports, read once, by no choice. No trial writes to MLflow: a
Tune callback on the driver logs one run per trial (params: the trial's whole TrainConfig;
metrics: those numbers) as a child of the sweep's parent run, as each trial ends. The driver then
writes ``OUT/sweep.csv`` (one row per trial) and ``OUT/sweep.md`` (Table 5's shape: rows alpha,
columns M, unseen accuracy on the selection split mean ± sd over seeds; then every grid point; then
the chosen point on the eval splits), and logs both to the parent run.

On a local Ray trials take ``--cpus-per-trial`` logical CPUs (default 0.5: the local Ray advertises
more CPUs than the box has cores, and a trial's scoring may start Ray Data tasks of its own) and
at most ``--concurrency`` run at once (default: one per core), each with one torch thread per
whole CPU it holds (at least one).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any

import tyro

from gendet import GendetError
from gendet import io as gio
from gendet.config import ConfigError, check, from_dict, to_dict
from gendet.eval import sweep as gsweep
from gendet.method.gendet.config import PRESETS, VAL, TrainConfig, resolve_calibration_split
from pipelines import _jobs
from pipelines._common import check_outputs, check_reachable, storage_url
from pipelines._jobs import Flat, Positional

if TYPE_CHECKING:  # pyarrow and torch load only when the job runs: `gendet sweep --help` stays fast
    from gendet.features.store import Variant

log = logging.getLogger(__name__)
DEFAULT_GRID = ("alpha=0.01,0.1,1", "margin=1,2,4")  # the paper's Table 5


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepJob:
    """A grid of TrainConfig values on Ray Tune: each trial trains, calibrates and scores in its own
    process; one MLflow child run per trial under a parent run; OUT/sweep.csv and OUT/sweep.md
    (Table 5's shape: rows alpha, columns M, unseen accuracy mean ± sd over seeds).

    Examples:
      gendet sweep out/features --train-subsets sdv14    # Table 5: alpha x M, chosen on val, reported on test
      gendet sweep out/features --train-subsets sdv14 --grid student_lr=1e-5,1e-4 --seeds 0,1,2
    """

    features: Positional[str]
    """Feature store URL (written by `gendet extract`)."""
    train: Annotated[TrainConfig, Flat] = field(default_factory=lambda: TrainConfig(methods=("gendet",)))
    grid: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """A TrainConfig field and its values, KEY=V1,V2,..., repeatable: one trial per combination, each
    replacing that field's flag (none given: the paper's Table 5, --grid alpha=0.01,0.1,1 --grid margin=1,2,4)."""
    seeds: tuple[int, ...] = ()
    """Seeds every grid point runs with (none: --seed; or --grid seed=...)."""
    select_split: str = "val"
    """The split every trial is scored on and the best grid point chosen by (its unseen accuracy,
    mean over seeds): never a split of --eval-splits. On a store with train and val only, train
    chooses on the unseen families' training rows, which no trial fits."""
    eval_splits: tuple[str, ...] = ("test",)
    """Splits the chosen point is reported on, once, after the choice (never read by it)."""
    encoder: str | None = None
    """The store variant's encoder, when the store holds several."""
    out: str = "out/sweep"
    """Output folder: sweep.csv, sweep.md, sweep_summary.json, the SQLite MLflow store when MLFLOW_TRACKING_URI is unset."""
    storage: str | None = None
    """Tune's storage URL every node reaches (default: OUT/ray_results)."""
    name: str = "gendet-sweep"
    """MLflow parent run name; Tune's records go to STORAGE/NAME-<time>."""
    shared_fs: bool = False
    """With RAY_ADDRESS set, local FEATURES, --out and --storage are a mount every node sees (NFS)."""
    concurrency: int = 0
    """Trials at once (0: one per core on a local Ray, as many as fit on a cluster)."""
    cpus_per_trial: float = 0.5
    """Logical CPUs per trial (fractions allowed)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: MLFLOW_TRACKING_URI; unset, a SQLite store under --out)."""

    def __post_init__(self) -> None:
        check(bool(self.train.train_subsets), "--train-subsets: empty; name the subset(s) to train on, "
                                              "e.g. --train-subsets sdv14")
        check(self.cpus_per_trial > 0, f"--cpus-per-trial {self.cpus_per_trial}: must be > 0")
        check(self.concurrency >= 0, f"--concurrency {self.concurrency}: must be >= 0")
        check(self.select_split not in self.eval_splits,
              f"--select-split {self.select_split} is also in --eval-splits: the best point would be chosen on the "
              "rows it is reported on; choose on another split (val) and report test (a store of train and val "
              "only: --select-split train, the unseen families' training rows)")


# --- before Ray: every point checked ----------------------------------------------------------------
def build_sweep(job: SweepJob) -> tuple[dict[str, list[Any]], list[dict[str, Any]], list[TrainConfig]]:
    """(grid, points, one TrainConfig per point), every point validated; raises ConfigError."""
    grid = gsweep.parse_grid(TrainConfig, job.grid or DEFAULT_GRID)
    if job.seeds and "seed" in grid:
        raise ConfigError("--seeds and --grid seed=...: give the seeds once")
    if "seed" not in grid:
        grid["seed"] = list(job.seeds or (job.train.seed,))
    points = gsweep.expand_grid(grid)
    configs = []
    for point in points:
        try:
            configs.append(replace(job.train, **point))
        except ConfigError as exc:
            raise ConfigError(f"--grid point {_label(point)}: {exc}") from None
    return grid, points, configs


def _label(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={gsweep.cell(v)}" for k, v in point.items())


def _key(point: dict[str, Any]) -> str:
    return json.dumps({k: gsweep.cell(v) for k, v in point.items()}, sort_keys=True)


def resolve_data(configs: list[TrainConfig], variant: Variant, eval_splits: tuple[str, ...],
                 select_split: str | None = None) -> list[TrainConfig]:
    """The configs with their calibration rows resolved as ``gendet train`` resolves them (val,
    unless val is scored or absent: then a held-out part of the training rows); every distinct
    training and calibration selection checked for rows of both classes, the eval splits and the
    selection split for rows. A selection split the trials train on (``train`` on a train/val store)
    is read only for the unseen families, so it does not stop calibrating on a train holdout."""
    from gendet.features.contents import check_rows, row_counts
    from gendet.features.sources import ParquetSource
    from gendet.method.gendet.trainer import check_calibration, check_source

    counts = row_counts(variant.url)
    val_rows = sum(n for (split, _), n in counts.items() if split == VAL)
    def scored(cfg: TrainConfig) -> tuple[str, ...]:
        return eval_splits + ((select_split,) if select_split and select_split not in cfg.train_splits else ())

    resolved = [resolve_calibration_split(c, eval_splits=scored(c), val_rows=val_rows) for c in configs]
    checked = set()
    for cfg in resolved:
        rows = (cfg.train_subsets, cfg.train_splits, cfg.calibration_split, cfg.calibration_holdout)
        if rows not in checked:
            checked.add(rows)
            check_rows(variant.url, eval_splits=eval_splits + ((select_split,) if select_split else ()),
                       train_subsets=cfg.train_subsets,
                       train_splits=cfg.train_splits, counts=counts)
            check_source(cfg, ParquetSource(variant.url, **cfg.training_rows()))
            check_calibration(cfg, ParquetSource(variant.url, **cfg.calibration_rows()))
    return resolved


# --- inside a Tune trial --------------------------------------------------------------------------
def run_trial(point: dict[str, Any], *, configs: dict[str, dict[str, Any]], variant: Variant,
              select_split: str, threads: int) -> None:
    """One grid point: train in this process, calibrate, score the selection split, report the
    numbers to Tune with the detectors as the trial's checkpoint (the chosen point's are scored on
    the eval splits by the driver, after the choice)."""
    import tempfile

    import ray.tune
    import torch

    from gendet.features.sources import ParquetSource, TensorSource
    from gendet.features.store import feature_matrix
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
    reports = evaluate_store(result.detectors, variant, (select_split,))[0]
    numbers = gsweep.trial_numbers(reports, cfg.train_subsets, headline_method(result.detectors))
    with tempfile.TemporaryDirectory() as tmp:
        for method, det in result.detectors.items():
            det.save(os.path.join(tmp, method))
        ray.tune.report({**numbers, "train_seconds": train_seconds}, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


# --- on the driver --------------------------------------------------------------------------------
def _reported(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numbers in a Tune result (not Tune's counters), finite ones only."""
    return {k: float(v) for k, v in result.items()
            if (k in gsweep.NUMBERS or "/" in k or k == "train_seconds") and isinstance(v, (int, float))
            and math.isfinite(float(v))}


def trial_run_logger(tracking_uri: str, experiment_id: str, parent_run_id: str, grid_keys: list[str],
                     configs: dict[str, TrainConfig], sweep_name: str):
    """A Tune callback that logs each ended trial as an MLflow child run (``gendet.mlops.sweep``)."""
    from mlflow import MlflowClient
    from ray import tune

    from gendet.mlops.sweep import log_trial

    class TrialRuns(tune.Callback):
        def __init__(self) -> None:
            self.client, self.runs, self.trial_ids = MlflowClient(tracking_uri), {}, {}

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._log(trial, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._log(trial, "FAILED")

        def _log(self, trial, status: str) -> None:
            point = {k: trial.config[k] for k in grid_keys}
            self.runs[_key(point)] = log_trial(
                self.client, experiment_id=experiment_id, parent_run_id=parent_run_id,
                run_name=f"{sweep_name} {_label(point)}", trial_id=trial.trial_id, point=_label(point),
                config=configs[_key(point)], numbers=_reported(trial.last_result or {}), status=status)
            self.trial_ids[_key(point)] = trial.trial_id

    return TrialRuns()


def start_ray_quietly() -> None:
    """A local Ray's workers inherit this environment: start it without the trials' progress bars,
    which would interleave in the driver's log (Tune reports progress); restored once Ray is up."""
    from pipelines._ray import init_ray

    quiet = not os.environ.get("RAY_ADDRESS", "").strip() and "TQDM_DISABLE" not in os.environ
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        init_ray()
    finally:
        if quiet:
            os.environ.pop("TQDM_DISABLE", None)


def run(job: SweepJob) -> dict[str, Any]:
    """Check every point, run the grid on Ray Tune, log, write the tables; returns the summary
    (with ``result_grid``, Tune's own results, and ``table``, sweep.md's text)."""
    from gendet.features.store import resolve_variant
    from gendet.mlops import tracking
    from pipelines._ray import require_ray

    require_ray()
    with tracking.tracking_uri(job.tracking_uri):
        grid, points, configs = build_sweep(job)  # every point checked before any work
        out, storage = gio.absolute(job.out), storage_url(job.out, job.storage)
        check_reachable({"FEATURES": job.features, "--out": out, "--storage": storage}, shared_fs=job.shared_fs)
        variant = resolve_variant(job.features, encoder=job.encoder)
        configs = resolve_data(configs, variant, tuple(job.eval_splits), job.select_split)
        check_outputs({"--out": out, "--storage": storage}, tracking_dir=out)
        start_ray_quietly()
        return tune_grid(job, grid, points, configs, variant, out, storage)


def tune_grid(job: SweepJob, grid: dict[str, list[Any]], points: list[dict[str, Any]], configs: list[TrainConfig],
              variant: Variant, out: str, storage: str) -> dict[str, Any]:
    import mlflow
    from ray import tune

    from gendet.mlops import tracking
    from gendet.mlops.sweep import log_parent_params, log_tables

    run_name = f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local = not os.environ.get("RAY_ADDRESS", "").strip()
    max_concurrent = job.concurrency or ((os.cpu_count() or 1) if local else None)
    by_key = {_key(p): c for p, c in zip(points, configs)}
    started = time.perf_counter()
    with tracking.start_run(out, run_name=job.name, tags={"gendet.features": variant.url, "gendet.sweep": "parent"}) as parent:
        log_parent_params(variant=variant, job=to_dict(job), train_subsets=job.train.train_subsets,
                          methods=job.train.methods, grid=grid, eval_splits=tuple(job.eval_splits), trials=len(points),
                          tune_run=run_name, calibration_splits={c.calibration_split for c in configs})
        logger = trial_run_logger(mlflow.get_tracking_uri(), parent.info.experiment_id, parent.info.run_id, list(grid),
                                  by_key, job.name)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, configs={k: to_dict(c) for k, c in by_key.items()}, variant=variant,
                                 select_split=job.select_split, threads=max(1, int(job.cpus_per_trial))),
            {"cpu": job.cpus_per_trial})
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
        title = (f"# Sweep {job.name}: {len(points)} trials on {variant.encoder} features, trained on "
                 f"{','.join(job.train.train_subsets)}, chosen on {job.select_split}; {wall:.0f} s")
        selected = report_selected(job, grid, rows, result_grid, variant, by_key)
        table_csv, text = gsweep.write_tables(out, grid, rows, title, selected)
        log_tables(table_csv, text, rows, wall, selected)
    summary = {"parent_run_id": parent.info.run_id, "experiment_id": parent.info.experiment_id,
               "tracking_uri": mlflow.get_tracking_uri(), "tune_path": os.path.join(storage, run_name),
               "csv": gio.join(out, "sweep.csv"), "md": gio.join(out, "sweep.md"), "wall_seconds": wall, "rows": rows,
               "selected": selected}
    gio.write_json_atomic(gio.join(out, "sweep_summary.json"), gio.redacted(json.loads(json.dumps(summary, default=str))))
    failed = [r["point"] for r in rows if r["status"] != "TERMINATED"]
    if failed:
        raise GendetError(f"{len(failed)} of {len(rows)} trials failed ({failed[0]} first); their errors are under "
                          f"{summary['tune_path']}")
    return {**summary, "result_grid": result_grid, "table": text}


def report_selected(job: SweepJob, grid: dict[str, list[Any]], rows: list[dict[str, Any]], result_grid: Any,
                    variant: Variant, by_key: dict[str, TrainConfig]) -> dict[str, Any] | None:
    """The grid point chosen on --select-split (``gsweep.best_point``), then, once, its trials'
    detectors (their Tune checkpoints) scored on --eval-splits: what the sweep reports. None when
    no trial finished."""
    from gendet.method.gendet.detector import Detector
    from gendet.mlops.training_report import headline_method
    from pipelines.evaluate import evaluate_store

    knobs = [k for k in grid if k != "seed"]
    best = gsweep.best_point(rows, knobs)
    if best is None:
        return None
    values, members = best
    reported = []
    for result in result_grid:
        point = {k: result.config[k] for k in grid}
        if result.error or tuple(gsweep.cell(point[k]) for k in knobs) != values or result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as folder:
            detectors = {m: Detector.load(os.path.join(folder, m)) for m in sorted(os.listdir(folder))
                         if os.path.isdir(os.path.join(folder, m))}
            reports = evaluate_store(detectors, variant, tuple(job.eval_splits))[0]
        reported.append({"seed": point.get("seed"), **gsweep.trial_numbers(
            reports, by_key[_key(point)].train_subsets, headline_method(detectors))})
    return {"point": ",".join(f"{k}={v}" for k, v in zip(knobs, values)) or "(one point)",
            "select_split": job.select_split, "eval_splits": list(job.eval_splits),
            "chosen_by": [m.get("unseen_acc") for m in members], "reported": reported}


def main(job: SweepJob) -> int:
    summary = run(job)
    _jobs.emit(summary["table"])
    log.info("wrote %s and %s; MLflow parent run %s (%s)", summary["csv"], summary["md"], summary["parent_run_id"],
             summary["tracking_uri"])
    return 0


JOB = _jobs.JobSpec(SweepJob, main, presets=PRESETS,
                    preset_help="TrainConfig values every trial starts from (as `gendet train --preset`)")

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.sweep"))
