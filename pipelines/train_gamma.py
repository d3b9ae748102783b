"""``gendet train-gamma`` / ``python -m pipelines.train_gamma``: GAMMA (issue 13) on Ray Train.

A ``TorchTrainer`` with N workers runs the library's epoch loop (``gendet.method.gamma.trainer``) with
DDP when N > 1: every worker reads the training rows of the store's token variant
(``gendet extract --tokens``) in its shard of them and trains on it (pyarrow, batch by batch, not
Ray Data: an epoch revisits the same rows, which a worker keeps in memory, so there is no stream to
split; ``gendet.features.tokens.load_token_rows(shard=...)``). After every epoch each worker
reports its mean losses and rank 0 attaches a checkpoint (network, optimizer, schedule, epoch, RNG
state), which Ray Train persists to ``--storage``; a worker that dies restarts from it
(``FailureConfig``), and a run whose driver died is resumed by running the same command again
(same ``--storage`` and ``--name``). Rank 0's last report carries the trained model; the driver
copies it to ``OUT/model`` from there (no process assumes it shares a disk with another). Helpers
shared with ``gendet train`` (output URLs, Ray start-up, the verb's entry point) are reused.

Everything is checked before Ray starts (``preflight``): the GammaConfig, the token variant, the
training subsets and eval splits in it, the training and calibration rows, the MLflow store, and
that ``--out`` and ``--storage`` can be written.

Then the driver calibrates (Platt scaling and the threshold at ``--target-fpr`` on held-out rows:
the val split, or a held-out share of the training content_ids, chosen as GenDet's
``calibration_split`` chooses), scores the eval splits (``gendet.method.gamma.eval``: the
per-subset ``metrics.json`` of CONTRACTS.md plus pixel F1/IoU for subsets with masks, taken on
the token canvas: the true mask is ``token_mask >= 0.5`` upsampled to the canvas (each token a
16x16 block), the predicted one ``GammaDetector.masks`` of the model's token probabilities at the
same canvas), logs everything to MLflow (params, per-epoch losses, metrics, the model directory,
an overlay figure of true against predicted masks) and with ``--register NAME`` registers the
model as ``challenger`` and runs the promotion gate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.config import ConfigError, csv_tuple, from_dict, parse_assignments, read_config_file, to_dict
from gendet.method.gamma.config import GammaConfig

MODEL, STATE, HISTORY = "model", "state.pt", "history.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES", help="feature store URL with a token variant (`gendet extract --tokens`)")
    p.add_argument("--train-subsets", required=True, type=csv_tuple, help="subsets to train on, e.g. sd14,inpaint-sd14")
    p.add_argument("--out", default="out/train-gamma", help="output directory: model/, metrics.json, table.md, plots/, "
                                                            "SQLite MLflow store when MLFLOW_TRACKING_URI is unset")
    p.add_argument("--encoder", default=None, help="token variant to use when several encoders are present")
    p.add_argument("--config", default=None, metavar="FILE", help="JSON or YAML file of GammaConfig fields")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="a GammaConfig field, repeatable, applied last, e.g. --set epochs=10 --set reverse_attention=false")
    p.add_argument("--eval-splits", type=csv_tuple, default=("test",), help="splits scored for the per-subset table")
    p.add_argument("--target-fpr", type=float, default=0.05, help="FPR on held-out reals for the calibrated threshold")
    p.add_argument("--calibration-split", default="auto", choices=("auto", "val", "train_holdout"),
                   help="rows the threshold is fitted on (auto: val unless it is scored or absent, else a held-out "
                        "share of the training content_ids, left out of training)")
    p.add_argument("--calibration-holdout", type=float, default=0.1, help="share of training content_ids held out")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (DDP when > 1)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="logical CPUs per worker")
    p.add_argument("--storage", default=None, help="checkpoint storage URL, reached by every node (default: OUT/ray_results)")
    p.add_argument("--shared-fs", action="store_true", help="with RAY_ADDRESS set, allow local paths every node mounts")
    p.add_argument("--name", default="gendet-gamma", help="run name under --storage; rerun the same name to resume")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures Ray Train recovers from")
    p.add_argument("--register", default=None, metavar="NAME", help="register the model under NAME (alias challenger) "
                                                                    "and run the promotion gate")
    p.add_argument("--gate-margin", type=float, default=0.0, help="mean accuracy the challenger must gain over the champion")
    p.add_argument("--gate-real-floor", type=float, default=0.8, help="minimum real accuracy at the calibrated threshold")
    p.add_argument("--gate-max-family-drop", type=float, default=0.02,
                   help="largest fall of any subset's calibrated accuracy below the champion's on it")
    p.add_argument("--stop-after-epoch", type=int, default=None, help=argparse.SUPPRESS)  # tests: a driver that dies


def build_config(args: argparse.Namespace) -> GammaConfig:
    if not args.train_subsets:
        raise ConfigError("--train-subsets: empty; name the subset(s) to train on")
    if args.num_workers < 1:
        raise ConfigError(f"--num-workers {args.num_workers}: must be >= 1")
    overrides = read_config_file(GammaConfig, args.config) if args.config else {}
    overrides |= parse_assignments(GammaConfig, args.assignments)
    return from_dict(GammaConfig, overrides)


def row_plan(args: argparse.Namespace, counts: dict[tuple[str, str], int]):
    """GenDet's rule for which rows train and which calibrate (``TrainConfig.training_rows`` /
    ``calibration_rows``), resolved for this store and these eval splits."""
    from gendet.method.gendet.config import VAL, TrainConfig, resolve_calibration_split

    plan = TrainConfig(train_subsets=tuple(args.train_subsets), target_fpr=args.target_fpr,
                       calibration_split=args.calibration_split, calibration_holdout=args.calibration_holdout)
    val_rows = sum(n for (split, _), n in counts.items() if split == VAL)
    return resolve_calibration_split(plan, eval_splits=args.eval_splits, val_rows=val_rows)


def preflight(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the run needs, before Ray starts, each failure one line; returns the run's facts."""
    from gendet.features.contents import check_rows, row_counts
    from gendet.features.sources import ParquetSource
    from gendet.features.tokens import resolve_token_variant
    from gendet.method.gendet.trainer import check_calibration, check_source
    from gendet.mlops import tracking
    from pipelines.train import output_urls

    cfg = build_config(args)
    out_url, storage = output_urls(args)
    for url, what in ((args.features, "FEATURES"), (out_url, "--out"), (storage, "--storage")):
        gio.require_reachable(url, what, "--shared-fs", shared=args.shared_fs)
    variant = resolve_token_variant(args.features, encoder=args.encoder)
    counts = row_counts(variant.url)
    check_rows(variant.url, eval_splits=args.eval_splits, train_subsets=args.train_subsets, counts=counts)
    plan = row_plan(args, counts)
    training = ParquetSource(variant.url, **plan.training_rows())
    check_source(plan, training)
    check_calibration(plan, ParquetSource(variant.url, **plan.calibration_rows()))
    if sum(training.counts().values()) < args.num_workers:
        raise ConfigError(f"--num-workers {args.num_workers}: more workers than training rows")
    tracking.check_tracking(out_url)
    gio.check_writable(out_url, "--out")
    gio.check_writable(storage, "--storage")
    run = {"cfg": cfg, "variant": variant, "plan": plan, "out": out_url, "storage": storage,
           "sources": training_sources(training)}
    check_resumable(args, run)
    return run


RUN_RECORD = "gendet-gamma-run.json"  # beside Ray Train's files under --storage/--name: what the run trains


def run_record(run: dict[str, Any]) -> dict[str, Any]:
    variant = run["variant"]
    rows = {k: list(v) if isinstance(v, tuple) else v for k, v in run["plan"].training_rows().items()}
    return {"gamma_config": to_dict(run["cfg"]), "sources": list(run["sources"]), "training_rows": rows,
            "variant": {**variant.key_fields(), "token_grid": list(variant.token_grid)}}


def check_resumable(args: argparse.Namespace, run: dict[str, Any]) -> None:
    """A rerun under the same --storage/--name resumes that run: refuse, before Ray starts, one that
    would train something else on its checkpoint (another config, other rows or source classes)."""
    url = gio.join(run["storage"], args.name, RUN_RECORD)
    if not gio.exists(url):
        return
    before, now = gio.read_json(url), run_record(run)
    changed = sorted(k for k in now if before.get(k) != now[k])
    if changed:
        raise GendetError(f"{url}: the run {args.name!r} there trained with another {', '.join(changed)}; rerun it as it was "
                          "to resume it, or pass another --name (or --storage) to start a new run")


def training_sources(training) -> tuple[str, ...]:
    """Head 2's classes (``source_classes``) from the training rows' label and manipulation columns
    (no tokens read), decided once on the driver so every worker and every resume agree."""
    from types import SimpleNamespace

    import numpy as np

    from gendet.method.gamma.trainer import source_classes

    cols = training.table(None, columns=["family", "subset", "label", "manipulation", "generated_fraction"]).to_pydict()
    text = {k: np.asarray([v or "" for v in cols[k]], dtype=object) for k in ("family", "subset", "manipulation")}
    fraction = np.asarray([0.0 if v is None else v for v in cols["generated_fraction"]], dtype=np.float32)
    labels = (np.asarray(cols["label"], dtype=object) == "fake").astype(int)
    return source_classes(SimpleNamespace(**text, labels=labels, generated_fraction=fraction))


# --- inside a Ray Train worker -------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from gendet.features.tokens import load_token_rows
    from gendet.method.gamma.trainer import fit_gamma, trained_detector

    cfg = from_dict(GammaConfig, config["gamma_config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # this worker's shard only, read batch by batch: no worker holds the whole store's tokens
    rows = load_token_rows(config["features"], encoder=config["encoder"], shard=(rank, world), **config["training_rows"])
    state, restored = None, ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = torch.load(os.path.join(d, STATE), map_location="cpu", weights_only=True)
    if rank == 0:  # where this attempt started: the resume test reads it, users may too
        gio.write_json_atomic(gio.join(config["out_url"], "resume.json"),
                              {"restored": restored is not None, "epoch": 0 if state is None else int(state["epoch"])})

    def report(trainer, row: dict | None) -> None:
        """Every worker reports as often as rank 0 (a barrier); rank 0 attaches the state, and the
        model once the last epoch is done."""
        metrics = {"epoch": trainer.epoch, **{k: v for k, v in (row or {}).items() if k != "epoch"}}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="gendet-gamma-") as d:
            torch.save(trainer.state_dict(), os.path.join(d, STATE))
            gio.write_json_atomic(os.path.join(d, HISTORY), trainer.history)
            if trainer.done:
                trained_detector(trainer, config["sources"], **config["detector_fields"]).save(os.path.join(d, MODEL))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        if config.get("stop_after_epoch") == trainer.epoch and not trainer.done:
            _die_once_registered(config)

    start = 0 if state is None else int(state["epoch"])
    trainer, _ = fit_gamma(rows, cfg, state=state, on_epoch=report,
                           device=str(ray.train.torch.get_device()) if config["use_gpu"] else "cpu", sources=config["sources"],
                           wrap=ray.train.torch.prepare_model if world > 1 else None)
    if start >= cfg.epochs:  # restored a finished run: report its model again so the result carries it
        report(trainer, None)


def _die_once_registered(config: dict[str, Any], timeout_s: float = 120.0) -> None:
    """Fault injection for the resume test: rank 0 dies, for real, once Ray Train has registered
    the checkpoint it just reported (its run snapshot names one; a report is taken in asynchronously)."""
    import time

    snapshot = gio.join(config["storage"], config["name"], "checkpoint_manager_snapshot.json")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if "checkpoint_" in gio.read_bytes(snapshot).decode():
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    os._exit(1)


# --- on the driver ---------------------------------------------------------------------------------
def fit(args: argparse.Namespace, run: dict[str, Any]) -> str:
    """Run the TorchTrainer; returns ``OUT/model`` (copied from the run's last checkpoint)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines._ray import init_ray

    init_ray()
    variant, plan = run["variant"], run["plan"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"gamma_config": to_dict(run["cfg"]), "features": gio.absolute(args.features),
                           "encoder": variant.encoder,
                           "training_rows": plan.training_rows(), "sources": list(run["sources"]),
                           "detector_fields": variant.detector_fields(), "out_url": run["out"], "use_gpu": args.use_gpu,
                           "stop_after_epoch": args.stop_after_epoch, "storage": run["storage"], "name": args.name},
        scaling_config=ray.train.ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,
                                               resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=args.name, storage_path=run["storage"],
                                       failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    gio.write_json_atomic(gio.join(run["storage"], args.name, RUN_RECORD), run_record(run))
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise GendetError(f"GAMMA training failed ({first_line(exc, 300)}); rerun the same command (same --storage and "
                          "--name) to resume from its last checkpoint") from None
    if result.checkpoint is None:
        raise GendetError("the GAMMA run ended without a checkpoint; rerun the same command to resume it")
    model_url = gio.join(run["out"], MODEL)
    with result.checkpoint.as_directory() as local:
        if not os.path.exists(os.path.join(local, MODEL)):
            raise GendetError(f"the GAMMA run's last checkpoint ({result.checkpoint.path}) holds no model; rerun the same "
                              "command to finish it")
        from gendet.method.gamma.detector import GammaDetector

        GammaDetector.load(os.path.join(local, MODEL)).save(model_url)
        with open(os.path.join(local, HISTORY), "rb") as f:
            gio.write_bytes_atomic(gio.join(run["out"], HISTORY), f.read())
    return model_url


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, fit on Ray Train, calibrate, evaluate, log, register and gate; returns the summary."""
    from gendet.features.tokens import load_token_rows
    from gendet.method.gamma.detector import GammaDetector
    from gendet.mlops.gamma_report import report_gamma
    from gendet.mlops.training_report import ReportOptions
    from pipelines._ray import require_ray

    require_ray()
    run = preflight(args)
    plan, variant = run["plan"], run["variant"]
    print(f"calibration: {plan.calibration_split}; source classes: {', '.join(run['sources'])}")
    model_url = fit(args, run)
    det = GammaDetector.load(model_url)
    cal = load_token_rows(args.features, encoder=variant.encoder, **plan.calibration_rows())
    det.calibrate(cal.tokens, cal.labels, args.target_fpr, split=plan.calibration_split)
    det.save(model_url)
    opts = ReportOptions(out=run["out"], eval_splits=tuple(args.eval_splits), run_name=args.name,
                         params={"num_workers": args.num_workers, "use_gpu": args.use_gpu,
                                 "train_subsets": ",".join(args.train_subsets)},
                         register=args.register, gate_margin=args.gate_margin, gate_real_floor=args.gate_real_floor,
                         gate_max_family_drop=args.gate_max_family_drop)
    return report_gamma(run["cfg"], det, model_url, variant, opts, features=args.features)


def run(args: argparse.Namespace) -> int:
    train(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.train_gamma", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
