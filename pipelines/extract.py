"""``gendet extract`` / ``python -m pipelines.extract``: shards -> Parquet feature store on Ray Data.

Plan (``gendet.extract.prepare``, before Ray starts: every bad input fails here in one line):
take the store's lease, list the shards, skip those whose stats file exists unless the shard
changed or its outputs are damaged (``--mode overwrite`` redoes all).
Run: one CPU task per shard decodes, degrades and preprocesses it to uint8 pixels (``ShardReader``;
a quarter of float32's bytes through the object store and PCIe) -> an actor pool of encoders
(``FeatureMapper``, built inside each actor, ``--concurrency`` actors with ``--num-gpus`` each,
finishing the pixels to float on their device) -> the driver. The shard is the unit of the write:
Ray's ``write_parquet`` picks its own file names and can split or merge shards, so the driver
consumes ``iter_batches`` (features only, ~1 KB a row) and writes a shard's Parquet, quarantine
table and stats file as soon as the shard's end row and all the rows it announced have arrived.
Shards finish independently, so a job killed at any moment loses only shards without a stats file,
and a rerun does exactly those.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gendet.config import add_config_arguments, config_from_args
from gendet.extract.config import ExtractConfig

READER_MEMORY_BYTES = 3 << 29  # the worker process (0.6-1.2 GiB measured), a shard (<= 256 MiB) and its decoded batch


# Flags whose help says more than the field's docstring (how to spell a value, where it applies).
HELPS = {
    "shards": "directory of .tar shards, a .tar URL, a brace pattern or a glob (fsspec)",
    "features": "feature store URL (fsspec); output goes to FEATURES/<variant>/",
    "encoder": "encoder name: spectrum:v1 (offline default) or open_clip:<arch>/<tag> "
               "(e.g. open_clip:ViT-L-14/openai; /none = random init)",
    "degrade": "robustness degradation before preprocessing: jpeg:65, jpeg:30, blur:3, blur:5, resize:112, resize:64",
    "device": "encoder device with --local (cpu, cuda, cuda:N)",
    "num_workers": "decode worker processes with --local",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ExtractConfig, positional=("shards", "features"), helps=HELPS)
    parser.add_argument("--local", action="store_true", help="run without Ray: one process, DataLoader workers decode (--device)")


def build_dataset(plan: Any) -> Any:
    """shard URLs -> reader tasks -> encoder actor pool (a lazy Ray Dataset)."""
    import ray.data

    from gendet.extract.mapper import FeatureMapper
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
                   "threads": max(1, int(cfg.cpus_per_actor))}
    return images.map_batches(FeatureMapper, fn_constructor_kwargs=mapper_args, batch_size=cfg.batch_size,
                              compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
                              num_gpus=cfg.num_gpus or None, num_cpus=cfg.cpus_per_actor, batch_format="numpy")


def extract(cfg: ExtractConfig) -> dict[str, Any]:
    """Run one extraction on Ray; returns the summary (``gendet.extract.runner.finish``)."""
    from gendet.extract.runner import consume, finish, prepare
    from pipelines._ray import init_ray

    plan = prepare(cfg, lease=True)  # validates everything before Ray starts; holds the store's lease
    try:
        if not plan.todo:
            return finish(plan, [], {})
        init_ray()
        batches = build_dataset(plan).iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        done, failed = consume(plan, batches)
        return finish(plan, done, failed)
    finally:
        plan.release()


def run(args: argparse.Namespace) -> int:
    from gendet.extract.runner import format_summary, run_local
    from pipelines._ray import require_ray

    if not args.local:
        require_ray()
    cfg = config_from_args(ExtractConfig, args)
    summary = run_local(cfg) if args.local else extract(cfg)
    print(format_summary(summary))
    return 1 if summary["shards_failed"] or summary["store_damaged"] else 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.extract", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
