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

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import fields
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.config import ConfigError, csv_tuple, from_dict, parse_assignments, read_config_file, to_dict
from gendet.features.contents import check_rows, row_counts
from gendet.features.sources import CachingSource, ParquetSource, epoch_seed
from gendet.features.store import Variant, feature_files, feature_matrix, resolve_variant
from gendet.method.gendet.config import METHODS, VAL, TrainConfig, preset, preset_names, resolve_calibration_split
from gendet.method.gendet.trainer import check_calibration, check_source

DETECTORS = "detectors"
HISTORY = "history.json"
FINAL = "final"  # the stage name of the last report, whose checkpoint carries the detectors
IN_MEMORY_ROWS = 100_000  # ~300 MB of 768-d float32 features: read once by the driver (build_datasets)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES", help="feature store URL (written by `gendet extract`)")
    p.add_argument("--train-subsets", required=True, type=csv_tuple, help="subsets to train on, e.g. sd14 or sd14,sd15")
    p.add_argument("--out", default="out/train", help="output directory: detectors, metrics, SQLite MLflow store when "
                                                      "MLFLOW_TRACKING_URI is unset")
    p.add_argument("--encoder", default=None, help="feature-store variant to use when several encoders are present")
    p.add_argument("--preset", default="genimage", choices=preset_names(), help="paper learning rates: genimage or ufd "
                                                                                "(debug: tiny, fast)")
    p.add_argument("--methods", type=csv_tuple, default=METHODS, help=f"comma list from {','.join(METHODS)}")
    p.add_argument("--rotations", type=int, default=None, help="rotations of stages a, b, c (paper: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per step per worker")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--target-fpr", type=float, default=None, help="FPR on held-out reals for the calibrated threshold")
    p.add_argument("--eval-splits", type=csv_tuple, default=("test",),
                   help="splits scored for the per-subset table (GenImage: val). Calibration is never fitted "
                        "on them: with val scored (or no val rows) it uses a held-out part of the training rows "
                        "(TrainConfig calibration_split, calibration_holdout)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (DDP when > 1)")
    p.add_argument("--placement-strategy", default="PACK", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
                   help="where Ray Train places its workers (SPREAD: across nodes, so one lost node stops one worker)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="logical CPUs per worker (fractions allowed)")
    p.add_argument("--storage", default=None, help="checkpoint storage URL, reached by every node (default: OUT/ray_results)")
    p.add_argument("--shared-fs", action="store_true",
                   help="with RAY_ADDRESS set, allow local paths for FEATURES, --out and --storage: they are on a mount "
                        "every node sees at the same path (NFS); env GENDET_SHARED_FS=1 does the same")
    p.add_argument("--name", default="gendet-train", help="run name under --storage; rerun the same name to resume")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures Ray Train recovers from")
    p.add_argument("--register", default=None, metavar="NAME", help="register the GenDet detector under NAME (alias "
                                                                    "challenger) and run the gate")
    p.add_argument("--gate-margin", type=float, default=0.0, help="mean accuracy the challenger must gain over the champion")
    p.add_argument("--worker-cache-rows", type=int, default=200_000,
                   help="rows of each data split a worker keeps in memory (as --feature-dtype of the preset) after "
                        "its first epoch; 0 = stream every epoch")
    p.add_argument("--in-memory-rows", type=int, default=IN_MEMORY_ROWS,
                   help="a store of at most this many rows is read once by the driver and handed to Ray Data in "
                        "memory; larger ones stream from Parquet every pass (0 = always stream)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="JSON or YAML file of TrainConfig fields (over the preset; flags and --set override it)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field, repeatable, applied last: e.g. --set alpha=0.5 --set margin=1.0 "
                        "--set student_lr=1e-4 --set classifier_input=both (fields: "
                        + ", ".join(f.name for f in fields(TrainConfig)) + ")")
    p.add_argument("--fault-after-stage", default=None, help=argparse.SUPPRESS)  # tests: kill a worker once
    p.add_argument("--gate-real-floor", type=float, default=0.8, help="minimum real accuracy at the calibrated threshold")
    p.add_argument("--gate-max-family-drop", type=float, default=0.02,
                   help="largest fall of any subset's calibrated accuracy below the champion's on it")
    p.add_argument("--shots", action="append", default=[], metavar="SUBSET=N",
                   help="few-shot training subset, repeatable: at most N of its fakes and N of its reals (TrainConfig shots)")


def build_config(args: argparse.Namespace) -> TrainConfig:
    if not args.train_subsets:  # the config reads () as "every subset": from the command line that is a slip
        raise ConfigError("--train-subsets: empty; name the subset(s) to train on, e.g. --train-subsets sdv14")
    if args.num_workers < 1:
        raise ConfigError(f"--num-workers {args.num_workers}: must be >= 1")
    # preset < --config FILE < the named flags < --set KEY=VALUE
    overrides = read_config_file(TrainConfig, args.config) if getattr(args, "config", None) else {}
    overrides |= {"methods": tuple(args.methods), "train_subsets": tuple(args.train_subsets)}
    overrides |= {k: v for k, v in {"rotations": args.rotations, "batch_size": args.batch_size, "seed": args.seed,
                                    "target_fpr": args.target_fpr}.items() if v is not None}
    if getattr(args, "shots", None):
        overrides["shots"] = tuple(args.shots)
    overrides |= parse_assignments(TrainConfig, getattr(args, "assignments", []))
    return preset(args.preset, **overrides)


# --- inside a Ray Train worker -------------------------------------------------------------------
def ray_shard_source(dim: int, cfg: TrainConfig, cache_rows: int) -> CachingSource:
    """The library's ``CachingSource`` over this worker's Ray Data shards (``all``/``real``/``fake``).
    Each kind's rows come from its own ``streaming_split(equal=True)``, so every worker keeps the
    same number of rows and DDP's workers take the same number of steps."""
    import numpy as np
    import ray.train

    shards = {kind: ray.train.get_dataset_shard(kind) for kind in ("all", "real", "fake")}

    def stream(kind: str, epoch: int):
        seed = epoch_seed(cfg.seed, kind, epoch) % (2**31)
        for batch in shards[kind].iter_batches(batch_size=cfg.batch_size, batch_format="pyarrow",
                                               local_shuffle_buffer_size=8 * cfg.batch_size,
                                               local_shuffle_seed=seed):
            y = np.asarray(batch.column("label").to_pylist()) == "fake"
            yield feature_matrix(batch.column("feature")), y.astype(np.int64)

    return CachingSource(stream, dim=dim, batch_size=cfg.batch_size, seed=cfg.seed, cache_rows=cache_rows,
                         dtype=cfg.feature_dtype)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from gendet.method.gendet.trainer import train_all

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

    source = ray_shard_source(config["dim"], cfg, config.get("cache_rows", 0))
    # Thresholds and Platt scaling are fitted on rows never trained on nor scored (the driver
    # resolved cfg.calibration_split): the val rows of every subset (reals are reals whatever
    # generator they are paired with, and more of them make the FPR quantile firmer), or the
    # training subsets' held-out content_ids when val is scored or absent.
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


def output_urls(args: argparse.Namespace) -> tuple[str, str]:
    """(--out, --storage) as URLs: local paths made absolute, storage defaulting to OUT/ray_results."""
    out_url = gio.absolute(args.out)
    storage = args.storage or gio.join(out_url, "ray_results")
    return out_url, gio.absolute(storage)


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


def fit(args: argparse.Namespace, cfg: TrainConfig, variant, out_url: str | None = None, storage: str | None = None) -> str:
    """Run the TorchTrainer; returns the URL holding the trained detectors (``collect_detectors``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines._ray import init_ray

    if out_url is None or storage is None:
        out_url, storage = output_urls(args)
    init_ray()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train_config": to_dict(cfg), "dim": variant.dim, "variant_url": gio.absolute(variant.url),
                           "detector_fields": variant.detector_fields(), "out_url": out_url, "use_gpu": args.use_gpu,
                           "fault_after_stage": args.fault_after_stage, "cache_rows": args.worker_cache_rows},
        scaling_config=ray.train.ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,
                                               resources_per_worker={"CPU": args.cpus_per_worker},
                                               placement_strategy=args.placement_strategy),
        run_config=ray.train.RunConfig(name=args.name, storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets=build_datasets(variant.url, cfg, rows=variant.rows, in_memory_rows=args.in_memory_rows),
    )
    result = trainer.fit()
    return collect_detectors(result.checkpoint, out_url, cfg.methods)


def preflight(args: argparse.Namespace) -> tuple[TrainConfig, Variant, str, str]:
    """Everything the run needs, checked before Ray starts, each failure one line: the config; with
    RAY_ADDRESS, no node-local FEATURES, --out or --storage (unless --shared-fs); the training
    subsets and eval splits in the store; the calibration rows; the MLflow store (a tracking server
    that answers; a remote --out needs one); --out and --storage writable.
    Returns (config with its calibration split resolved, variant, OUT URL, storage URL)."""
    from gendet.mlops import tracking

    cfg = build_config(args)
    out_url, storage = output_urls(args)
    for url, what in ((args.features, "FEATURES"), (out_url, "--out"), (storage, "--storage")):
        gio.require_reachable(url, what, "--shared-fs", shared=args.shared_fs)
    variant = resolve_variant(args.features, encoder=args.encoder)
    counts = row_counts(variant.url)
    check_rows(variant.url, eval_splits=args.eval_splits, train_subsets=cfg.train_subsets, train_splits=cfg.train_splits,
               counts=counts)
    val_rows = sum(n for (split, _), n in counts.items() if split == VAL)
    cfg = resolve_calibration_split(cfg, eval_splits=args.eval_splits, val_rows=val_rows)
    check_source(cfg, ParquetSource(variant.url, **cfg.training_rows()))
    check_calibration(cfg, ParquetSource(variant.url, **cfg.calibration_rows()))
    tracking.check_tracking(out_url)
    gio.check_writable(out_url, "--out")
    gio.check_writable(storage, "--storage")
    return cfg, variant, out_url, storage


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, fit on Ray Train, then evaluate, log, register and gate; returns the run summary."""
    from pipelines._ray import require_ray

    require_ray()
    cfg, variant, out_url, storage = preflight(args)
    print(f"calibration: {cfg.calibration_split}" + (f" ({cfg.calibration_holdout:.0%} of the training content_ids, "
                                                      "left out of training)" if cfg.calibration_split != VAL else ""))
    detectors_url = fit(args, cfg, variant, out_url, storage)
    from gendet.mlops.training_report import ReportOptions, report_training
    from pipelines.evaluate import evaluate_store

    opts = ReportOptions(out=out_url, eval_splits=tuple(args.eval_splits), run_name=args.name,
                         params={"num_workers": args.num_workers, "use_gpu": args.use_gpu},
                         register=args.register, gate_margin=args.gate_margin, gate_real_floor=args.gate_real_floor,
                         gate_max_family_drop=getattr(args, "gate_max_family_drop", 0.02))
    return report_training(cfg, variant, detectors_url, opts, evaluate_store)


def run(args: argparse.Namespace) -> int:
    train(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.train", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
