"""``gendet extract`` / ``python -m pipelines.extract``: shards -> Parquet feature store on Ray Data.

Plan (``gendet.extract.prepare``, before Ray starts: every bad input fails here in one line):
take the store's lease, list the shards, skip those whose stats file exists unless the shard
changed or its outputs are damaged (``--mode overwrite`` redoes all).
Run: one CPU task per shard decodes, degrades and preprocesses it to uint8 pixels (``ShardReader``;
a quarter of float32's bytes through the object store and PCIe) -> an autoscaling pool of encoder
actors (``PartWritingMapper``, 1..``--concurrency`` actors with ``--num-gpus`` each) that encode
and write what they encoded as part files where they run (``gendet.extract.parts``) -> the driver,
which only counts rows: when a shard has all its rows, a small task (``finalize_shard``, 0 CPUs, so
it never waits behind decode or encode) writes the shard's Parquet, quarantine table and, last,
its stats file, named by the input shard. No feature passes through the driver.
Lost nodes: Ray retries a lost node's decode tasks and restarts its actors; the pool starts at one
actor and grows as resources allow, so the survivors still decode and encode; a batch run twice
counts once (rows are keyed by their index in the shard). A job killed at any moment loses only
shards without a stats file, and a rerun does exactly those.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Any

from gendet.config import parse_resources
from gendet.extract.config import ExtractConfig
from pipelines import _jobs
from pipelines._jobs import Flat, Inputs

FINALIZERS = 2  # actors that write finished shards (I/O: a shard's parts in, three files out)
_FINALIZER_POOLS: dict[str, list] = {}  # Ray job id -> its finalizer actors (write_shards)
READER_MEMORY_BYTES = 3 << 29  # the worker process (0.6-1.2 GiB measured), a shard (<= 256 MiB) and its decoded batch
CPU_ACTOR_CPUS = 0.01  # a CPU-only encoder actor's reservation (build_dataset says why)


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractJob:
    """Shards -> Parquet feature store (Ray Data): decode on CPU tasks, encode on an autoscaling pool
    of encoder actors, one Parquet file per input shard. Incremental: a rerun does only new or
    changed shards; bad samples are quarantined with a reason.

    Examples:
      gendet extract out/shards out/features
      gendet extract s3://bucket/genimage/ s3://bucket/features --num-gpus 1 --concurrency 8
          --encoder open_clip:ViT-L-14/openai --precision fp16
      gendet extract out/shards out/features --degrade jpeg:65      # a degraded variant (Table 4)
      gendet extract out/shards out/features --local                # one process, no Ray
    """

    extract: Annotated[ExtractConfig, Flat, Inputs]
    local: bool = False
    """Run without Ray: one process, ``--decode-workers`` processes decode, the encoder on ``--device``."""
    shared_fs: bool = False
    """On a cluster (RAY_ADDRESS set), local SHARDS/FEATURES paths are a mount every node sees (NFS)."""


def build_dataset(plan: Any) -> Any:
    """shard URLs -> reader tasks -> encoder actor pool (a lazy Ray Dataset)."""
    import ray.data

    from gendet.extract.mapper import PartWritingMapper
    from pipelines._ray import default_read_tasks

    cfg = plan.cfg
    shards = ray.data.from_items([{"url": url} for url in plan.todo], override_num_blocks=len(plan.todo))
    # A reader holds its whole shard in memory: reserve it. As the reservation differs from the
    # actors', it also keeps Ray Data from fusing the reader into them: decoding stays in parallel
    # CPU tasks, never on the encoder (GPU) actors.
    read_tasks = cfg.read_tasks or default_read_tasks()
    readers = ray.data.TaskPoolStrategy(size=read_tasks) if read_tasks else None
    images = shards.map_batches(plan.reader, batch_size=1, num_cpus=1, memory=READER_MEMORY_BYTES, compute=readers)
    mapper_args = {"encoder": plan.info.encoder, "weights": cfg.weights, "precision": cfg.precision,
                   "device": "cuda" if cfg.num_gpus > 0 else "cpu", "feature_dtype": cfg.feature_dtype,
                   "threads": max(1, int(cfg.cpus_per_actor)), "variant_url": plan.info.url,
                   "token_grid": plan.info.token_grid, "token_dim": plan.info.token_dim}
    # Autoscaling, not fixed: a fixed pool whose lost actors restart on the surviving nodes can take
    # every CPU there and leave none for decoding (measured: a stall until Ray Data's timeout).
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.concurrency, initial_size=cfg.concurrency)
    # CPU-only encoders reserve a token of a logical CPU (their threads still run): actors that reserved
    # whole CPUs could hold every CPU left after a node is lost, while their tasks wait on decode tasks
    # that Ray re-runs to rebuild the lost node's blocks and that need a CPU (measured: a stall until the
    # job's timeout). Not none: a 0-CPU actor may be placed on a 0-CPU head node (KubeRay's, `ray start
    # --head --num-cpus 0`), which is kept free of work. GPU encoders are capped by their GPUs and reserve
    # their host CPUs as asked.
    actor_cpus = cfg.cpus_per_actor if cfg.num_gpus > 0 else CPU_ACTOR_CPUS
    pinned = {"resources": parse_resources(cfg.actor_resources, "--actor-resources")} if cfg.actor_resources.strip() else {}
    return images.map_batches(PartWritingMapper, fn_constructor_kwargs=mapper_args, batch_size=cfg.batch_size,
                              compute=pool, num_gpus=cfg.num_gpus or None, num_cpus=actor_cpus, batch_format="numpy",
                              **pinned)


def write_shards(plan: Any, summaries: Any) -> tuple[list, dict]:
    """Count the actors' summaries; finalize each shard on a worker as soon as all its rows are
    written. Returns (stats of written shards, {stem: error} of failed ones)."""
    import ray

    from gendet import GendetError
    from gendet.config import to_dict
    from gendet.extract.parts import PartTracker, ShardFinalizer
    from gendet.extract.runner import check_lease, mark_incomplete
    from gendet.progress import progress

    # A few threaded finalizer actors, started before the first rows arrive: 0 CPUs (never queued
    # behind decode or encode), restarted elsewhere if their node is lost, and a retried finalize
    # of a shard already written returns its stats. They live as long as this driver's Ray job:
    # a threaded actor destroyed when its handles drop may abort in Ray's teardown (a SIGABRT
    # stack dump in the log of a run that succeeded, seen when refresh extracted inside the demo).
    context = ray.get_runtime_context()
    job_id = f"{context.namespace}/{context.get_job_id()}"  # a fresh ray.init has a fresh namespace
    if job_id not in _FINALIZER_POOLS:
        actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=8)(ShardFinalizer)
        _FINALIZER_POOLS[job_id] = [actor.options(scheduling_strategy="SPREAD").remote() for _ in range(FINALIZERS)]
    finalizers = _FINALIZER_POOLS[job_id]
    tracker, running, done, failed = PartTracker(), {}, [], {}
    config = to_dict(plan.cfg)

    def collect(bar, block: bool) -> None:
        ready, _ = ray.wait(list(running), num_returns=len(running) if block else 1, timeout=None if block else 0)
        for ref in ready:
            stem = running.pop(ref)
            try:
                done.append(ray.get(ref))
            except (GendetError, OSError, ray.exceptions.RayTaskError) as exc:
                cause = getattr(exc, "cause", None) or exc
                failed[stem] = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            bar.update(1)
            bar.set_postfix(images=sum(s["written"] for s in done), failed=len(failed))

    with progress(total=len(plan.todo), unit="shard", desc="extract") as bar:
        for summary in summaries:
            for stem in tracker.add(summary):
                check_lease(plan)
                finalizer = finalizers[len(running) % len(finalizers)]
                running[finalizer.finalize.remote(plan.info, stem, plan.url_of(stem), config)] = stem
            if running:
                collect(bar, block=False)
        if running:
            collect(bar, block=True)
    mark_incomplete(failed, tracker.pending)
    return done, failed


def extract(cfg: ExtractConfig) -> dict[str, Any]:
    """Run one extraction on Ray; returns the summary (``gendet.extract.runner.finish``)."""
    from gendet.data.shards import shard_stem
    from gendet.extract.parts import clear_parts
    from gendet.extract.runner import finish, prepare
    from pipelines._ray import check_feasible, init_ray

    plan = prepare(cfg, lease=True)  # validates everything before Ray starts; holds the store's lease
    try:
        if not plan.todo:
            return finish(plan, [], {})
        init_ray()
        wanted = {**parse_resources(cfg.actor_resources, "--actor-resources"),
                  **({"CPU": cfg.cpus_per_actor, "GPU": cfg.num_gpus} if cfg.num_gpus > 0 else {})}
        if wanted:  # CPU actors reserve a token of a CPU and always fit
            check_feasible(wanted, 1, "encoder actors", "--num-gpus / --cpus-per-actor / --actor-resources")
        clear_parts(plan.info.url, [shard_stem(url) for url in plan.todo])  # a killed run's leftovers
        summaries = build_dataset(plan).iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        done, failed = write_shards(plan, summaries)
        # A batch Ray ran again after a lost node may write parts of a shard already finalized:
        # with every task finished, no part is still needed.
        clear_parts(plan.info.url, [shard_stem(url) for url in plan.todo])
        return finish(plan, done, failed)
    finally:
        plan.release()


def run(job: ExtractJob) -> dict[str, Any]:
    """Check, then extract (on Ray, or in this process with ``local``); returns the summary."""
    from gendet import io as gio
    from gendet.extract.runner import run_local
    from pipelines._ray import require_ray

    cfg = job.extract
    if not job.local:
        require_ray()
        # Decode tasks read SHARDS and encoder actors write FEATURES on every node: a path on this
        # node's disk would be an empty folder there (refused before any work).
        for url, what in ((cfg.shards, "SHARDS"), (cfg.features, "FEATURES")):
            gio.require_reachable(url, what, "--shared-fs", shared=job.shared_fs)
    return run_local(cfg) if job.local else extract(cfg)


def main(job: ExtractJob) -> int:
    from gendet.extract.runner import format_summary

    summary = run(job)
    _jobs.emit(format_summary(summary))
    return 1 if summary["shards_failed"] or summary["store_damaged"] else 0


JOB = _jobs.JobSpec(ExtractJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.extract"))
