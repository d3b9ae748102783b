"""Ray Train throughput: ``pipelines.train.fit`` with 1 and 2 workers on the same store, side by side.

The store is ``benchmarks.train``'s (separable random 768-d features, float16, cached under
``--store-dir``). Each worker count runs the whole schedule (every method, ``--rotations``) in one
local Ray; the row records the wall time of ``fit`` (Ray Train start-up included), and features/s
per stage type from the run's history (rank 0's rows; each worker sees 1/N of them per stage, so the
job's rate is N times rank 0's and that is what is reported). Rows are appended to
``benchmarks/results/train-ray-<machine>-pt<torch>.csv`` with the Markdown table beside it.

    python -m benchmarks.train_ray --rows 50000 --rotations 2 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.train import STAGE_TYPES, result_tag, write_results, write_store


def run_fit(store: Path, workers: int, args: argparse.Namespace) -> dict:
    from gendet import io as gio
    from gendet.features.store import resolve_variant
    from gendet.method.gendet.config import preset
    from pipelines import train
    from pipelines._common import Workers, storage_url

    out = tempfile.mkdtemp(prefix=f"bench-ray-{workers}w-")
    job = train.TrainJob(features=str(store), out=out, name=f"bench-{workers}w",
                         train=preset(args.preset, train_subsets=("sdv14",), rotations=args.rotations,
                                      batch_size=args.batch_size),
                         workers=Workers(num_workers=workers, cpus_per_worker=args.cpus_per_worker),
                         worker_cache_rows=args.cache_rows, in_memory_rows=args.in_memory_rows)
    variant = resolve_variant(str(store))
    start = time.perf_counter()
    train.fit(job, job.train, variant, gio.absolute(out), storage_url(out, job.storage))
    wall = time.perf_counter() - start
    history = gio.read_json(gio.join(out, "history.json"))
    row = {"workers": workers, "rows": args.rows, "fit_wall_s": round(wall, 1)}
    per_stage = {h["stage"]: h["features_per_s"] * workers for h in history}
    for stage_type in STAGE_TYPES:
        rates = [r for stage, r in per_stage.items() if stage.split(".")[-1] == stage_type]
        row[f"{stage_type}_features_per_s"] = round(float(np.mean(rates)), 1) if rates else ""
    row["train_stages_s"] = round(sum({h["stage"]: h["seconds"] for h in history}.values()), 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rotations", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--preset", default="genimage")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--cache-rows", type=int, default=200_000, help="--worker-cache-rows of gendet train")
    p.add_argument("--in-memory-rows", type=int, default=0,
                   help="--in-memory-rows of gendet train (0: stream from Parquet, as the committed rows did)")
    p.add_argument("--store-dir", default="/tmp/gendet-bench")
    args = p.parse_args()

    import torch

    from pipelines._ray import init_ray

    store = Path(args.store_dir) / f"rows{args.rows}"
    write_store(store, args.rows)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init_ray(progress=False)
    rows = []
    for workers in args.workers:
        load = os.getloadavg()[0]
        row = run_fit(store, workers, args)
        row.update({"cpus_per_worker": args.cpus_per_worker, "batch_size": args.batch_size,
                    "rotations": args.rotations, "preset": args.preset, "cache_rows": args.cache_rows,
                    "cpu_cores": os.cpu_count(), "load_avg_1m_start": round(load, 2), "torch": torch.__version__,
                    "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")})
        print(row, flush=True)
        rows.append(row)
    print(write_results(rows, f"train-ray-{result_tag()}"))


if __name__ == "__main__":
    main()
