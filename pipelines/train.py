"""``gendet train`` / ``python -m pipelines.train``: GenDet and its baselines on Ray Train.

A ``TorchTrainer`` with N workers (CPU or GPU) runs the library's schedule
(``gendet.method.gendet.trainer.train_all``) with DDP. The feature store streams in through Ray Data: three
datasets (all, real, fake rows of the training subsets and split) that Ray Train splits evenly
across workers (``streaming_split(equal=True)``), so every worker sees the same number of batches
per stage and no worker loads the whole store. After every stage each worker reports; rank 0
attaches its checkpoint, which Ray Train persists to ``--storage`` (any fsspec/pyarrow URL). A run
whose worker dies restarts from the last checkpoint (``FailureConfig``); a run whose driver dies is
resumed by running the same command again (same ``--storage`` and ``--name``): Ray Train restores
the run from its storage. The trained detectors come back the same way: rank 0 puts them in its
last checkpoint and the driver copies them from ``result.checkpoint`` to ``--out``, so no process
assumes it shares a disk with another. With ``RAY_ADDRESS`` set, FEATURES, ``--out`` and
``--storage`` must be URLs every node reaches (s3://, gs://) unless ``--shared-fs`` says they are a
mount every node shares.

Everything the run needs is checked before Ray starts (``preflight``): the config, the training
subsets and eval splits in the store, the calibration rows, the MLflow tracking server, and that
``--out`` and ``--storage`` can be written.

Then the driver evaluates every method (``pipelines.evaluate``), logs everything to MLflow (rank 0
only ever writes; the workers never touch MLflow), and with ``--register NAME`` registers the GenDet
detector as ``challenger`` and runs the promotion gate.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import tyro

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.config import from_dict, to_dict
from gendet.method.gendet.config import PRESETS, VAL, TrainConfig, resolve_calibration_split
from gendet.mlops.gate import GateConfig, check_gate_split
from pipelines import _jobs
from pipelines._common import Workers, check_outputs, check_reachable, storage_url
from pipelines._jobs import Flat, Positional

if TYPE_CHECKING:  # torch and pyarrow load only when the job runs: `gendet train --help` stays fast
    from gendet.features.sources import CachingSource
    from gendet.features.store import Variant

log = logging.getLogger(__name__)
DETECTORS = "detectors"
HISTORY = "history.json"
FINAL = "final"  # the stage name of the last report, whose checkpoint carries the detectors
IN_MEMORY_ROWS = 100_000  # ~300 MB of 768-d float32 features: read once by the driver (build_datasets)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainJob:
    """GenDet and its baselines (the ablation ladder) on a feature store, on Ray Train (DDP when
    --num-workers > 1), calibrated on held-out rows, scored per subset and logged to MLflow; with
    --register NAME, registered as challenger and gated against the champion. Rerun the same command
    (same --storage and --name) to resume a run that stopped.

    Examples:
      gendet train out/features --train-subsets sdv14 --eval-splits val --register gendet
      gendet train s3://bucket/features --train-subsets sdv14 --eval-splits val --num-workers 4 --use-gpu
          --storage s3://bucket/ray --register gendet
      gendet train out/features --train-subsets ae_nearest_f8 --preset demo --set alpha=0.5
    """

    features: Positional[str]
    """Feature store URL (written by `gendet extract`)."""
    train: Annotated[TrainConfig, Flat] = field(default_factory=TrainConfig)
    eval_splits: tuple[str, ...] = ("test",)
    """Splits scored for the per-subset table (GenImage has train and val: score val). Calibration
    is never fitted on them (--calibration-split auto)."""
    encoder: str | None = None
    """The store variant's encoder, when the store holds several."""
    out: str = "out/train"
    """Output folder: detectors/, metrics.json, table.md, plots/, the SQLite MLflow store when
    MLFLOW_TRACKING_URI is unset."""
    workers: Annotated[Workers, Flat] = field(default_factory=Workers)
    storage: str | None = None
    """Checkpoint storage URL every node reaches (default: OUT/ray_results)."""
    name: str = "gendet-train"
    """Run name under --storage; rerun the same name to resume."""
    shared_fs: bool = False
    """With RAY_ADDRESS set, local FEATURES, --out and --storage are a mount every node sees (NFS)."""
    worker_cache_rows: int = 200_000
    """Rows of each data split a worker keeps in memory after its first epoch; 0: stream every epoch."""
    in_memory_rows: int = IN_MEMORY_ROWS
    """A store of at most this many rows is read once by the driver and handed to Ray Data in memory;
    larger ones stream from Parquet every pass (0: always stream)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: MLFLOW_TRACKING_URI; unset, a SQLite store under --out)."""
    register: str | None = None
    """Register the GenDet detector under this name (alias challenger) and run the gate."""
    gate: GateConfig = field(default_factory=GateConfig)
    fault_after_stage: Annotated[str | None, tyro.conf.Suppress] = None
    """Tests: rank 0 dies once, for real, after this stage."""

    def __post_init__(self) -> None:
        from gendet.config import check

        check(bool(self.train.train_subsets), "--train-subsets: empty; name the subset(s) to train on, "
                                              "e.g. --train-subsets sdv14")
        check(bool(self.eval_splits), "--eval-splits: empty; name the split(s) to score, e.g. test or val")
        check(self.worker_cache_rows >= 0 and self.in_memory_rows >= 0,
              "--worker-cache-rows and --in-memory-rows must be >= 0")
        check_gate_split(self.gate, register=self.register, eval_splits=self.eval_splits)


# --- inside a Ray Train worker -------------------------------------------------------------------
def ray_shard_source(dim: int, cfg: TrainConfig, cache_rows: int, rows: dict[str, int] | None = None) -> CachingSource:
    """The library's ``CachingSource`` over this worker's Ray Data shards (``all``/``real``/``fake``).
    Each kind's rows come from its own ``streaming_split(equal=True)``, so every worker keeps the
    same number of rows and DDP's workers take the same number of steps."""
    import numpy as np
    import ray.train

    from gendet.features.sources import CachingSource, epoch_seed
    from gendet.features.store import feature_matrix

    shards = {kind: ray.train.get_dataset_shard(kind) for kind in ("all", "real", "fake")}

    def stream(kind: str, epoch: int):
        seed = epoch_seed(cfg.seed, kind, epoch) % (2**31)
        for batch in shards[kind].iter_batches(batch_size=cfg.batch_size, batch_format="pyarrow",
                                               local_shuffle_buffer_size=8 * cfg.batch_size,
                                               local_shuffle_seed=seed):
            y = np.asarray(batch.column("label").to_pylist()) == "fake"
            yield feature_matrix(batch.column("feature")), y.astype(np.int64)

    return CachingSource(stream, dim=dim, batch_size=cfg.batch_size, seed=cfg.seed, cache_rows=cache_rows, rows=rows,
                         dtype=cfg.feature_dtype)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from gendet.features.sources import ParquetSource
    from gendet.method.gendet.trainer import train_all

    _jobs.setup_logging()  # a worker process: its progress lines reach `ray job logs`

    cfg = from_dict(TrainConfig, config["train_config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ckpt_dir = tempfile.mkdtemp(prefix="gendet-ckpt-")
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            shutil.copytree(d, ckpt_dir, dirs_exist_ok=True)
    if rank == 0:  # where this attempt started from: the resume tests read it, users may too
        gio.write_json_atomic(gio.join(config["out_url"], "resume.json"),
                              {"restored": restored is not None, "checkpoint": getattr(restored, "path", None)})

    def report(stage: str, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        metrics = {**metrics, "stage": stage}
        if rank == 0 and checkpoint_dir:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))
        else:
            ray.train.report(metrics)
        _maybe_fail(config, rank, stage)

    rows = {k: n // world for k, n in (config.get("rows") or {}).items()}  # streaming_split(equal=True): a share each
    source = ray_shard_source(config["dim"], cfg, config.get("cache_rows", 0), rows or None)
    # Thresholds and Platt scaling are fitted on rows never trained on nor scored (the driver
    # resolved cfg.calibration_split): the val rows of the training subsets (and the extra subsets
    # named on purpose), never of the families reported as unseen, or the training subsets'
    # held-out content_ids when val is scored or absent.
    calibration = (ParquetSource(config["variant_url"], dtype=cfg.feature_dtype, **cfg.calibration_rows())
                   if rank == 0 else None)
    device = "cuda" if config["use_gpu"] else "cpu"
    result = train_all(cfg, source, checkpoint_dir=ckpt_dir, report=report, device=device,
                       prepare_model=ray.train.torch.prepare_model if world > 1 else None,
                       calibration=calibration, **config["detector_fields"])  # the store's variant key
    # The detectors leave through Ray Train's storage: rank 0's node may share no disk with the driver.
    # Its last checkpoint keeps the stage files too, so a run restored from it resumes as finished.
    if rank == 0:
        for method, det in result.detectors.items():
            det.save(os.path.join(ckpt_dir, DETECTORS, method))
        gio.write_json_atomic(os.path.join(ckpt_dir, HISTORY), result.history)
        ray.train.report({"stage": FINAL}, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir))
    else:
        ray.train.report({"stage": FINAL})  # a barrier: every worker reports as often as rank 0
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def _maybe_fail(config: dict[str, Any], rank: int, stage: str) -> None:
    """Fault injection for the failure-handling tests: rank 0 dies once, for real, after a stage."""
    marker = gio.join(config["out_url"], "fault-injected")
    if config.get("fault_after_stage") == stage and rank == 0 and not gio.exists(marker):
        gio.write_json_atomic(marker, {"stage": stage})
        os._exit(1)


# --- on the driver ---------------------------------------------------------------------------------
def build_datasets(variant_url: str, cfg: TrainConfig, *, rows: int = 0, in_memory_rows: int = 0) -> dict[str, Any]:
    """all / real / fake Ray datasets of the training rows (``cfg.training_rows()``: subsets x
    splits, less the calibration holdout under ``train_holdout``), features + label only.
    A variant of at most ``in_memory_rows`` rows is read once here and handed to Ray Data as Arrow
    tables (``from_arrow``): a Parquet read job per pass costs more than such a store weighs.
    Streamed, the holdout is the list of held-out content_ids the driver computes once
    (``ParquetSource.held_out_ids``: Ray's expressions cannot hash), filtered with ``not_in``."""
    import ray.data
    from ray.data.expressions import col

    from gendet.features.sources import ParquetSource
    from gendet.features.store import feature_files

    source = ParquetSource(variant_url, **cfg.training_rows())
    if 0 < rows <= in_memory_rows:
        return {kind: ray.data.from_arrow(source.table(None if kind == "all" else kind)) for kind in ("all", "real", "fake")}
    columns = ["feature", "label", "subset", "split"] + (["content_id"] if source.holdout else [])
    columns += ["key"] if source.shots else []
    ds = ray.data.read_parquet(feature_files(variant_url)).select_columns(columns)
    where = col("split").is_in(list(cfg.train_splits))
    if cfg.train_subsets:
        where = where & col("subset").is_in(list(cfg.train_subsets))
    if source.holdout == "exclude" and source.held_out_ids:
        where = where & col("content_id").not_in(source.held_out_ids)
    if source.shots:  # few-shot subsets: only their chosen keys (ParquetSource.shot_keys)
        few = col("subset").not_in(list(source.shots))
        for subset, keys in source.shot_keys.items():
            few = few | ((col("subset") == subset) & col("key").is_in(keys))
        where = where & few
    train = ds.filter(expr=where).select_columns(["feature", "label"])
    return {"all": train, "real": train.filter(expr=col("label") == "real"),
            "fake": train.filter(expr=col("label") == "fake")}


def collect_detectors(checkpoint, out_url: str, methods: tuple[str, ...]) -> str:
    """Copy the detectors and rank 0's history from the run's last checkpoint (on ``--storage``,
    wherever rank 0 ran) to ``OUT``; returns ``OUT/detectors``."""
    from gendet.method.gendet.detector import Detector

    if checkpoint is None:
        raise GendetError("the training run ended without a checkpoint: no detectors to collect; rerun the same command "
                          "to resume it")
    with checkpoint.as_directory() as local:
        for method in methods:
            Detector.load(os.path.join(local, DETECTORS, method)).save(gio.join(out_url, DETECTORS, method))
        with open(os.path.join(local, HISTORY), "rb") as f:
            gio.write_bytes_atomic(gio.join(out_url, HISTORY), f.read())
    return gio.join(out_url, DETECTORS)


def fit(job: TrainJob, cfg: TrainConfig, variant: Variant, out_url: str, storage: str) -> str:
    """Run the TorchTrainer; returns the URL holding the trained detectors (``collect_detectors``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from gendet.features.sources import ParquetSource
    from pipelines._ray import init_ray
    from pipelines._torch_loopback import torch_config

    init_ray()
    workers = job.workers
    workers.check_feasible()
    trainer = TorchTrainer(
        train_loop_per_worker, torch_config=torch_config(workers.use_gpu),
        train_loop_config={"train_config": to_dict(cfg), "dim": variant.dim, "variant_url": gio.absolute(variant.url),
                           "detector_fields": variant.detector_fields(), "out_url": out_url, "use_gpu": workers.use_gpu,
                           "fault_after_stage": job.fault_after_stage, "cache_rows": job.worker_cache_rows,
                           "rows": ParquetSource(variant.url, **cfg.training_rows()).counts()},
        scaling_config=ray.train.ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                               resources_per_worker={"CPU": workers.cpus_per_worker},
                                               placement_strategy=workers.placement_strategy),
        run_config=ray.train.RunConfig(name=job.name, storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=workers.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets=build_datasets(variant.url, cfg, rows=variant.rows, in_memory_rows=job.in_memory_rows),
    )
    from gendet.method.runs import write_record

    write_record(storage, job.name, run_record(cfg, variant))
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise GendetError(f"training failed ({first_line(exc, 300)}); rerun the same command (same --storage and "
                          "--name) to resume from its last checkpoint") from None
    return collect_detectors(result.checkpoint, out_url, cfg.methods)


def preflight(job: TrainJob) -> tuple[TrainConfig, Variant, str, str]:
    """Everything the run needs, checked before Ray starts, each failure one line: with RAY_ADDRESS,
    no node-local FEATURES, --out or --storage (unless --shared-fs); the training subsets and eval
    splits in the store; the calibration rows; the MLflow store (a tracking server that answers; a
    remote --out needs one); --out and --storage writable.
    Returns (config with its calibration split resolved, variant, OUT URL, storage URL)."""
    from gendet.features.contents import check_rows, row_counts
    from gendet.features.sources import ParquetSource
    from gendet.features.store import resolve_variant
    from gendet.method.gendet.trainer import check_calibration, check_source
    from gendet.method.runs import check_resumable

    out_url, storage = gio.absolute(job.out), storage_url(job.out, job.storage)
    check_reachable({"FEATURES": job.features, "--out": out_url, "--storage": storage}, shared_fs=job.shared_fs)
    variant = resolve_variant(job.features, encoder=job.encoder)
    cfg = job.train
    counts = row_counts(variant.url)
    check_rows(variant.url, eval_splits=job.eval_splits, train_subsets=cfg.train_subsets, train_splits=cfg.train_splits,
               counts=counts)
    check_gate_split(job.gate, register=job.register, eval_splits=job.eval_splits, splits=tuple({s for s, _ in counts}))
    val_rows = sum(n for (split, _), n in counts.items() if split == VAL)
    cfg = resolve_calibration_split(cfg, eval_splits=job.eval_splits, val_rows=val_rows)
    check_source(cfg, ParquetSource(variant.url, **cfg.training_rows()))
    check_calibration(cfg, ParquetSource(variant.url, **cfg.calibration_rows()))
    check_outputs({"--out": out_url, "--storage": storage}, tracking_dir=out_url)
    check_resumable(storage, job.name, run_record(cfg, variant))
    return cfg, variant, out_url, storage


def run_record(cfg: TrainConfig, variant: Variant) -> dict[str, Any]:
    """What a run under --storage/--name trains (gendet.method.runs): a rerun resumes only the same."""
    return {"train_config": to_dict(cfg), "variant": variant.key_fields()}


def run(job: TrainJob) -> dict[str, Any]:
    """Validate, fit on Ray Train, then evaluate, log, register and gate; returns the run summary."""
    from gendet.mlops import tracking
    from gendet.mlops.training_report import ReportOptions, report_training
    from pipelines._ray import require_ray
    from pipelines.evaluate import evaluate_store

    require_ray()
    with tracking.tracking_uri(job.tracking_uri):
        cfg, variant, out_url, storage = preflight(job)
        log.info("calibration: %s%s", cfg.calibration_split,
                 f" ({cfg.calibration_holdout:.0%} of the training content_ids, left out of training)"
                 if cfg.calibration_split != VAL else "")
        detectors_url = fit(job, cfg, variant, out_url, storage)
        opts = ReportOptions(out=out_url, eval_splits=tuple(job.eval_splits), run_name=job.name,
                             params={"num_workers": job.workers.num_workers, "use_gpu": job.workers.use_gpu},
                             register=job.register, gate=job.gate, job=to_dict(job))
        return report_training(cfg, variant, detectors_url, opts, evaluate_store)


def main(job: TrainJob) -> int:
    summary = run(job)
    _jobs.emit(summary["table"])
    log.info("run %s logged to %s; metrics in %s", summary["run_id"], summary["tracking_uri"], summary["metrics"])
    if summary.get("gate"):
        gate = summary["gate"]
        log.info("%s version %s: %s (%s)", gate["registered"], gate["version"],
                 "PROMOTED to champion" if gate["promoted"] else "stays challenger", gate["reason"])
    return 0


JOB = _jobs.JobSpec(TrainJob, main, presets=PRESETS,
                    preset_help="the paper's learning rates (genimage, ufd), or a short schedule (debug, demo); "
                                "TrainConfig values applied before --config, flags and --set")

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.train"))
