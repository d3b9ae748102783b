"""Ray Train throughput: ``pipelines.train.fit`` with 1 and 2 workers on the same store, side by side.

The store is ``benchmarks/train.py``'s (separable random 768-d features, float16, cached under
``--store-dir``). Each worker count runs the whole schedule (every method, ``--rotations``) in one
local Ray; the row records the wall time of ``fit`` (Ray Train start-up included), and features/s
per stage type from the run's history (rank 0's rows; each worker sees 1/N of them per stage, so the
job's rate is N times rank 0's and that is what is reported). Rows are appended to
``benchmarks/results/train-ray-<machine>-pt<torch>.csv`` with the Markdown table beside it.

    python benchmarks/train_ray.py --rows 50000 --rotations 2 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from train import STAGE_TYPES, result_tag, write_results, write_store  # noqa: E402  (benchmarks/train.py)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_fit(store: Path, workers: int, args: argparse.Namespace) -> dict:
    from gendet import io as gio
    from gendet.features.store import resolve_variant
    from pipelines import train
    from pipelines._ray import verb_args

    out = tempfile.mkdtemp(prefix=f"bench-ray-{workers}w-")
    targs = verb_args(train, [str(store), "--train-subsets", "sdv14", "--out", out, "--preset", args.preset,
                               "--rotations", str(args.rotations), "--batch-size", str(args.batch_size),
                               "--num-workers", str(workers), "--cpus-per-worker", str(args.cpus_per_worker),
                               "--name", f"bench-{workers}w", "--worker-cache-rows", str(args.cache_rows),
                               "--in-memory-rows", str(args.in_memory_rows)])
    cfg = train.build_config(targs)
    variant = resolve_variant(str(store))
    start = time.perf_counter()
    train.fit(targs, cfg, variant)
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
