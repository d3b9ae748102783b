"""``gendet train-gamma`` / ``python -m pipelines.train_gamma``: GAMMA on Ray Train.

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

import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import tyro

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.config import check, from_dict, to_dict
from gendet.method.gamma.config import GammaConfig
from gendet.mlops.gate import GateConfig, check_gate_split
from pipelines import _jobs
from pipelines._common import Workers, check_outputs, check_reachable, storage_url
from pipelines._jobs import Flat, Positional

log = logging.getLogger(__name__)
MODEL, STATE, HISTORY = "model", "state.pt", "history.json"
RUN_RECORD = "gendet-gamma-run.json"  # beside Ray Train's files under --storage/--name: what the run trains


@dataclass(frozen=True, kw_only=True, slots=True)
class GammaTrainJob:
    """GAMMA (a classification head and two segmentation heads over token grids, with reverse
    cross-attention) on a token variant of a feature store (`gendet extract --tokens`), on Ray Train;
    calibrated on held-out rows, scored per subset with pixel F1/IoU where masks exist, logged to
    MLflow; with --register NAME, registered as challenger and gated. Rerun the same command (same
    --storage and --name) to resume.

    Examples:
      gendet train-gamma out/features --train-subsets sdv14,inpaint-sdv14 --eval-splits val --register gendet-gamma
      gendet train-gamma out/features --train-subsets ae_nearest_f8,splice-ae_nearest_f8 --epochs 20 --width 64
    """

    features: Positional[str]
    """Feature store URL with a token variant (`gendet extract --tokens`)."""
    train_subsets: tuple[str, ...] = ()
    """Subsets to train on (whole-image fakes, manipulations and their reals), e.g. sdv14,inpaint-sdv14."""
    gamma: Annotated[GammaConfig, Flat] = field(default_factory=GammaConfig)
    eval_splits: tuple[str, ...] = ("test",)
    """Splits scored for the per-subset table."""
    encoder: str | None = None
    """The token variant's encoder, when the store holds several."""
    target_fpr: float = 0.05
    """False-positive rate on held-out reals of the calibrated threshold."""
    target_miss: float = 0.05
    """Share of held-out fakes allowed below the uncertain band (answered ``real``)."""
    calibration_split: Literal["auto", "val", "train_holdout"] = "auto"
    """Rows the threshold and Platt scaling are fitted on (auto: val unless it is scored or absent,
    else a held-out share of the training content_ids, left out of training)."""
    calibration_holdout: float = 0.1
    """Share of the training content_ids held out for calibration under train_holdout."""
    out: str = "out/train-gamma"
    """Output folder: model/, metrics.json, table.md, plots/, the SQLite MLflow store when
    MLFLOW_TRACKING_URI is unset."""
    workers: Annotated[Workers, Flat] = field(default_factory=Workers)
    storage: str | None = None
    """Checkpoint storage URL every node reaches (default: OUT/ray_results)."""
    name: str = "gendet-gamma"
    """Run name under --storage; rerun the same name to resume."""
    shared_fs: bool = False
    """With RAY_ADDRESS set, local FEATURES, --out and --storage are a mount every node sees (NFS)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: MLFLOW_TRACKING_URI; unset, a SQLite store under --out)."""
    register: str | None = None
    """Register the model under this name (alias challenger) and run the gate."""
    gate: GateConfig = field(default_factory=GateConfig)
    stop_after_epoch: Annotated[int | None, tyro.conf.Suppress] = None
    """Tests: the driver dies after this epoch."""

    def __post_init__(self) -> None:
        check(bool(self.train_subsets), "--train-subsets: empty; name the subset(s) to train on")
        check(bool(self.eval_splits), "--eval-splits: empty; name the split(s) to score, e.g. test or val")
        check(0 < self.target_fpr < 1, f"--target-fpr {self.target_fpr}: must be in (0, 1)")
        check(0 < self.target_miss < 1, f"--target-miss {self.target_miss}: must be in (0, 1)")
        check(0 < self.calibration_holdout < 1, f"--calibration-holdout {self.calibration_holdout}: must be in (0, 1)")
        check_gate_split(self.gate, register=self.register, eval_splits=self.eval_splits)


def row_plan(job: GammaTrainJob, counts: dict[tuple[str, str], int]):
    """GenDet's rule for which rows train and which calibrate (``TrainConfig.training_rows`` /
    ``calibration_rows``), resolved for this store and these eval splits."""
    from gendet.method.gendet.config import VAL, TrainConfig, resolve_calibration_split

    plan = TrainConfig(train_subsets=tuple(job.train_subsets), target_fpr=job.target_fpr,
                       calibration_split=job.calibration_split, calibration_holdout=job.calibration_holdout)
    val_rows = sum(n for (split, _), n in counts.items() if split == VAL)
    return resolve_calibration_split(plan, eval_splits=job.eval_splits, val_rows=val_rows)


def preflight(job: GammaTrainJob) -> dict[str, Any]:
    """Everything the run needs, before Ray starts, each failure one line; returns the run's facts."""
    from gendet.features.contents import check_rows, row_counts
    from gendet.features.sources import ParquetSource
    from gendet.features.tokens import resolve_token_variant
    from gendet.method.gamma.trainer import training_sources
    from gendet.method.gendet.trainer import check_calibration, check_source
    from gendet.method.runs import check_resumable

    out_url, storage = gio.absolute(job.out), storage_url(job.out, job.storage)
    check_reachable({"FEATURES": job.features, "--out": out_url, "--storage": storage}, shared_fs=job.shared_fs)
    variant = resolve_token_variant(job.features, encoder=job.encoder)
    counts = row_counts(variant.url)
    check_rows(variant.url, eval_splits=job.eval_splits, train_subsets=job.train_subsets, counts=counts)
    check_gate_split(job.gate, register=job.register, eval_splits=job.eval_splits, splits=tuple({s for s, _ in counts}))
    plan = row_plan(job, counts)
    training = ParquetSource(variant.url, **plan.training_rows())
    check_source(plan, training)
    check_calibration(plan, ParquetSource(variant.url, **plan.calibration_rows()))
    if sum(training.counts().values()) < job.workers.num_workers:
        raise GendetError(f"--num-workers {job.workers.num_workers}: more workers than training rows")
    check_outputs({"--out": out_url, "--storage": storage}, tracking_dir=out_url)
    run = {"cfg": job.gamma, "variant": variant, "plan": plan, "out": out_url, "storage": storage,
           "sources": training_sources(training)}
    check_resumable(storage, job.name, run_record(run), filename=RUN_RECORD)
    return run


def run_record(run: dict[str, Any]) -> dict[str, Any]:
    variant = run["variant"]
    rows = {k: list(v) if isinstance(v, tuple) else v for k, v in run["plan"].training_rows().items()}
    return {"gamma_config": to_dict(run["cfg"]), "sources": list(run["sources"]), "training_rows": rows,
            "variant": {**variant.key_fields(), "token_grid": list(variant.token_grid)}}


# --- inside a Ray Train worker -------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from gendet.features.tokens import load_token_rows
    from gendet.method.gamma.trainer import fit_gamma, trained_detector

    _jobs.setup_logging()  # a worker process: its progress lines reach `ray job logs`
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
def fit(job: GammaTrainJob, run: dict[str, Any]) -> str:
    """Run the TorchTrainer; returns ``OUT/model`` (copied from the run's last checkpoint)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from gendet.method.runs import write_record
    from pipelines._ray import init_ray
    from pipelines._torch_loopback import torch_config

    init_ray()
    variant, plan, workers = run["variant"], run["plan"], job.workers
    workers.check_feasible()
    trainer = TorchTrainer(
        train_loop_per_worker, torch_config=torch_config(workers.use_gpu),
        train_loop_config={"gamma_config": to_dict(run["cfg"]), "features": gio.absolute(job.features),
                           "encoder": variant.encoder,
                           "training_rows": plan.training_rows(), "sources": list(run["sources"]),
                           "detector_fields": variant.detector_fields(), "out_url": run["out"], "use_gpu": workers.use_gpu,
                           "stop_after_epoch": job.stop_after_epoch, "storage": run["storage"], "name": job.name},
        scaling_config=ray.train.ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                               resources_per_worker={"CPU": workers.cpus_per_worker},
                                               placement_strategy=workers.placement_strategy),
        run_config=ray.train.RunConfig(name=job.name, storage_path=run["storage"],
                                       failure_config=ray.train.FailureConfig(max_failures=workers.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    write_record(run["storage"], job.name, run_record(run), filename=RUN_RECORD)
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


def run(job: GammaTrainJob) -> dict[str, Any]:
    """Validate, fit on Ray Train, calibrate, evaluate, log, register and gate; returns the summary."""
    from gendet.features.tokens import load_token_rows
    from gendet.method.gamma.detector import GammaDetector
    from gendet.mlops import tracking
    from gendet.mlops.gamma_report import report_gamma
    from gendet.mlops.training_report import ReportOptions
    from pipelines._ray import require_ray

    require_ray()
    with tracking.tracking_uri(job.tracking_uri):
        facts = preflight(job)
        plan, variant = facts["plan"], facts["variant"]
        log.info("calibration: %s; source classes: %s", plan.calibration_split, ", ".join(facts["sources"]))
        model_url = fit(job, facts)
        det = GammaDetector.load(model_url)
        cal = load_token_rows(job.features, encoder=variant.encoder, **plan.calibration_rows())
        det.calibrate(cal.tokens, cal.labels, job.target_fpr, split=plan.calibration_split,
                      subsets=[str(s) for s in cal.subset], target_miss=job.target_miss)
        det.save(model_url)
        opts = ReportOptions(out=facts["out"], eval_splits=tuple(job.eval_splits), run_name=job.name,
                             params={"num_workers": job.workers.num_workers, "use_gpu": job.workers.use_gpu,
                                     "train_subsets": ",".join(job.train_subsets)},
                             register=job.register, gate=job.gate, job=to_dict(job))
        return report_gamma(facts["cfg"], det, model_url, variant, opts, features=job.features)


def main(job: GammaTrainJob) -> int:
    summary = run(job)
    _jobs.emit(summary["table"])
    log.info("run %s logged to %s; metrics in %s", summary["run_id"], summary["tracking_uri"], summary["metrics"])
    if summary.get("gate"):
        gate = summary["gate"]
        log.info("%s version %s: %s (%s)", gate["registered"], gate["version"],
                 "PROMOTED to champion" if gate["promoted"] else "stays challenger", gate["reason"])
    return 0


JOB = _jobs.JobSpec(GammaTrainJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.train_gamma"))
