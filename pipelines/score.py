"""``gendet score`` / ``python -m pipelines.score``: score a bucket of unlabelled images on Ray Data.

Plan (``gendet.serve.batch.store.plan_score``, before Ray starts: a bad source, an OUT that cannot
be written or a model that does not load fail here in one line): list SOURCE (shards, image files
or a manifest), leave out what OUT already holds, cut the rest into partitions. The model is
resolved once (an alias pinned to its version) and packed as files for the workers.
Run: one CPU task per partition reads and decodes it to the encoder's uint8 pixels (``PartReader``)
-> an autoscaling pool of scoring actors (``BatchScorer``: encoder and heads, 1..``--concurrency``
actors with ``--num-gpus`` each) -> the driver, which gathers each partition's rows and writes
``OUT/<part>.parquet`` and its done marker as soon as all are in. Lost nodes: Ray retries the lost
tasks and restarts the actors; a row run twice counts once (rows are keyed by their index).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import tyro

from gendet.config import check, parse_resources
from pipelines import _jobs

log = logging.getLogger(__name__)
CPU_ACTOR_CPUS = 0.01  # as extract's CPU encoder actors: decode tasks never wait behind them
READER_MEMORY_BYTES = 1 << 30  # a partition's decoded pixels (1000 x 3x256x256 uint8 = 197 MB) and the worker


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreJob:
    """Score unlabelled images with a registered model on Ray Data: one row per input in
    OUT/<part>.parquet (id, path, verdict = fake/real/uncertain/error, probability, band, error,
    model, encoder), written per partition with a done marker. Incremental: a rerun scores only
    inputs not done yet; an input that cannot be read or decoded is an `error` row with its reason.

    Examples:
      gendet score s3://bucket/uploads/2026-12-07/ s3://bucket/scores/2026-12-07 --model models:/gendet@champion
      gendet score s3://bucket/shards/ s3://bucket/scores/shards --num-gpus 1 --concurrency 8 --precision fp16
      gendet score manifest.parquet out/scores --model out/train/detectors/gendet      # path/url (+ id) column
      gendet score out/images out/scores --local                                       # one process, no Ray
    """

    source: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SOURCE")]
    """Images to score (any fsspec URL): a folder of image files (recursive) or a glob, WebDataset
    shards (a folder of .tar, a .tar, a pattern), or a manifest (.parquet/.csv/.jsonl) with a
    path (or url) column and optionally id."""
    out: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Output folder (any fsspec URL): OUT/<part>.parquet and OUT/_done/<part>.json."""
    model: str = "models:/gendet@champion"
    """The model: models:/NAME@ALIAS (pinned to its version for the whole run), models:/NAME/VERSION,
    runs:/RUN/PATH or a model directory."""
    format: Literal["auto", "shards", "images", "manifest"] = "auto"
    """What SOURCE is; auto: a manifest by its suffix, shards when it holds .tar files, else images."""
    rows_per_part: int = 1000
    """Images and manifest rows per output file (shards: one file each)."""
    batch_size: int = 64
    """Images per encoder call."""
    num_gpus: float = 0.0
    """GPUs per scoring actor (0: CPU)."""
    concurrency: int = 1
    """Most scoring actors (the pool starts at one and grows as resources allow)."""
    cpus_per_actor: float = 1.0
    """Torch threads of a CPU actor; the CPUs a GPU actor reserves."""
    actor_resources: str = ""
    """Custom Ray resources each scoring actor needs, as JSON ('{"node_gpu": 1}'): the actors run only on
    nodes that have them (a node type of `ray up`, a KubeRay group's rayStartParams resources)."""
    read_tasks: int | None = None
    """Most read/decode tasks at once; None: physical cores - 1 on a Ray this job starts, Ray's choice on a cluster."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Encoder compute precision (fp16/bf16 on GPU)."""
    threshold: float | None = None
    """Override the model's calibrated threshold (the band's upper edge)."""
    mask_dir: str | None = None
    """GAMMA models: write each scored image's mask as DIR/<part>/<index>.mask.png (the row's mask column)."""
    features: str | None = None
    """A feature store of SOURCE's shards (gendet extract's, the model's encoder): shards it holds are
    scored from its rows (the heads alone, nothing decoded or encoded; its quarantined samples as error
    rows), the others from their images."""
    mode: Literal["incremental", "overwrite"] = "incremental"
    """incremental: score only inputs OUT does not hold; overwrite: score everything again."""
    local: bool = False
    """Run without Ray, in this process (on --device)."""
    device: str = "cpu"
    """Encoder device with --local (cpu, cuda, cuda:N); on Ray, cuda when --num-gpus > 0."""
    shared_fs: bool = False
    """On a cluster (RAY_ADDRESS set), local SOURCE/OUT paths are a mount every node sees (NFS)."""
    tracking_uri: str | None = None
    """MLflow tracking URI for models:/ and runs:/ (default: MLFLOW_TRACKING_URI)."""

    def __post_init__(self) -> None:
        check(bool(self.source.strip()), "SOURCE: give a folder, glob, shards or manifest to score")
        check(bool(self.out.strip()), "OUT: give the folder to write scores to")
        check(self.rows_per_part >= 1, f"--rows-per-part {self.rows_per_part}: must be >= 1")
        check(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1")
        check(self.num_gpus >= 0, f"--num-gpus {self.num_gpus}: must be >= 0")
        check(self.concurrency >= 1, f"--concurrency {self.concurrency}: must be >= 1")
        check(self.cpus_per_actor > 0, f"--cpus-per-actor {self.cpus_per_actor}: must be > 0")
        check(self.read_tasks is None or self.read_tasks >= 1, f"--read-tasks {self.read_tasks}: must be >= 1")
        check(self.threshold is None or 0.0 <= self.threshold <= 1.0,
              f"--threshold {self.threshold}: a probability, in [0, 1]")
        parse_resources(self.actor_resources, "--actor-resources")


def build_dataset(job: ScoreJob, plan: Any, files: dict[str, bytes], label: str, encoder: str) -> Any:
    """partitions -> read tasks -> scoring actor pool (a lazy Ray Dataset)."""
    import ray.data

    from gendet.serve.batch.inputs import PartReader
    from gendet.serve.batch.scoring import BatchScorer
    from pipelines._ray import default_read_tasks

    parts = ray.data.from_items([p.item() for p in plan.parts], override_num_blocks=len(plan.parts))
    read_tasks = job.read_tasks or default_read_tasks()
    readers = ray.data.TaskPoolStrategy(size=read_tasks) if read_tasks else None
    # Its own memory reservation keeps Ray Data from fusing the reader into the actors: decoding
    # stays in CPU tasks, never on the (GPU) scoring actors.
    rows = parts.map_batches(PartReader(encoder), batch_size=1, num_cpus=1, memory=READER_MEMORY_BYTES,
                             compute=readers, batch_format="numpy")
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=job.concurrency, initial_size=1)
    kwargs = {"files": files, "model": label, "device": "cuda" if job.num_gpus > 0 else "cpu",
              "precision": job.precision, "threshold": job.threshold, "mask_dir": job.mask_dir,
              "threads": max(1, int(job.cpus_per_actor))}
    pinned = {"resources": parse_resources(job.actor_resources, "--actor-resources")} if job.actor_resources.strip() else {}
    return rows.map_batches(BatchScorer, fn_constructor_kwargs=kwargs, batch_size=job.batch_size, compute=pool,
                            num_gpus=job.num_gpus or None, num_cpus=job.cpus_per_actor if job.num_gpus else CPU_ACTOR_CPUS,
                            batch_format="numpy", **pinned)


def score_on_ray(job: ScoreJob, plan: Any, files: dict[str, bytes], label: str,
                 encoder: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from gendet.progress import progress
    from gendet.serve.batch.scoring import write_finished
    from gendet.serve.batch.store import PartCollector
    from pipelines._ray import check_feasible, init_ray

    init_ray()
    wanted = {**parse_resources(job.actor_resources, "--actor-resources"),
              **({"CPU": job.cpus_per_actor, "GPU": job.num_gpus} if job.num_gpus else {})}
    if wanted:  # CPU actors reserve a token of a CPU and always fit
        check_feasible(wanted, 1, "scoring actors", "--num-gpus / --cpus-per-actor / --actor-resources")
    collector, written = PartCollector(), []
    with progress(total=len(plan.parts), unit="part", desc="score") as bar:
        for batch in build_dataset(job, plan, files, label, encoder).iter_batches(batch_size=None,
                                                                                 batch_format="pyarrow"):
            done = write_finished(plan, collector.add(batch.to_pydict()))
            written += done
            bar.update(len(done))
            bar.set_postfix(images=sum(m["rows"] for m in written))
    return written, {name: "not every row came back" for name in collector.pending}


def run(job: ScoreJob) -> dict[str, Any]:
    """Check and plan, then score (on Ray, or in this process with ``local``); returns the summary."""
    from gendet import GendetError
    from gendet import io as gio
    from gendet.mlops import tracking
    from gendet.serve.batch import scoring, store
    from gendet.serve.loading import REGISTRY_SCHEMES

    gio.check_writable(job.out, "OUT")
    if not job.local:
        from pipelines._ray import require_ray

        require_ray()
        for url, what in ((job.source, "SOURCE"), (job.out, "OUT")):
            gio.require_reachable(url, what, "--shared-fs", shared=job.shared_fs)
    with tracking.tracking_uri(job.tracking_uri):
        if job.model.startswith(REGISTRY_SCHEMES):
            tracking.check_server()
        files, label, model = scoring.model_files(job.model)
    if job.mask_dir and not getattr(model, "has_masks", False):
        raise GendetError(f"--mask-dir {job.mask_dir}: masks need a GAMMA model with segmentation heads; "
                          f"--model {job.model} has none")
    plan = store.plan_score(job.source, job.out, kind=job.format, rows_per_part=job.rows_per_part,
                            overwrite=job.mode == "overwrite")
    variant_url = stored_variant(job, plan, model) if job.features else None
    if variant_url:
        store.with_stored_features(plan, variant_url)
    log.info("%s: %d %s, %d already scored in %s; %d partitions to score with %s", gio.redact(job.source), plan.inputs,
             plan.kind, plan.skipped, gio.redact(job.out), len(plan.parts), label)
    stored = scoring.run_stored(plan, model, variant_url, model=label, threshold=job.threshold) if plan.stored else []
    if not plan.parts:
        written, failed = [], {}
    elif job.local:
        written, failed = scoring.run_local(plan, files, model=label, encoder=model.encoder, batch_size=job.batch_size,
                                            device=job.device, precision=job.precision, threshold=job.threshold,
                                            mask_dir=job.mask_dir)
    else:
        written, failed = score_on_ray(job, plan, files, label, model.encoder)
    return store.summary(plan, stored + written, failed)


def stored_variant(job: ScoreJob, plan: Any, model: Any) -> str:
    """The store variant whose rows score SOURCE's shards: the model's encoder and preprocessing (one line otherwise)."""
    from gendet import GendetError
    from gendet.eval.scoring import check_matches
    from gendet.features.store import resolve_variant
    from gendet.method.gendet.detector import Detector

    if plan.kind != "shards":
        raise GendetError(f"--features {job.features}: stored features are per shard; SOURCE is {plan.kind}, so every "
                          "image is encoded (drop --features, or score the shards the store was extracted from)")
    if not isinstance(model, Detector):
        raise GendetError(f"--features: {job.model} is a GAMMA model, which scores token grids; drop --features")
    variant = resolve_variant(job.features, model.encoder)
    check_matches({"model": model}, variant)
    return variant.url


def main(job: ScoreJob) -> int:
    from gendet.serve.batch.store import format_summary

    summary = run(job)
    _jobs.emit(format_summary(summary))
    return 1 if summary["parts_failed"] else 0


JOB = _jobs.JobSpec(ScoreJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.score"))
