"""Table 5's analogue on the demo's world: alpha x M over seeds with `gendet sweep` (Ray Tune, MLflow),
under both student optimizers (``per_stage``, the default, where alpha should be inert, and ``shared``).

The world is the demo's first two steps (every zoo family but the refresh step's ``sdedit``, spectrum:v1
features); ``--build`` makes it with the same two verbs when it is missing::

    gendet zoo out/sweep-world/shards --families <all but sdedit> --crops-per-photo 16
    gendet extract out/sweep-world/shards out/sweep-world/features --encoder spectrum:v1 --batch-size 256 --local
    python -m experiments.sweep --build    # -> experiments/results/sweep-alpha-margin-cpu2.md|csv
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gendet.config import csv_tuple
from gendet.method.gendet.config import preset
from pipelines import demo
from pipelines import sweep as sweep_pipeline

GRID = ("alpha=0.01,0.1,1", "margin=1,2,4", "student_optimizer=per_stage,shared")
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    return f"{os.cpu_count()} cores ({model}), {mem / 2**20:.0f} GB RAM, {platform.system()} {platform.release()}"


def build_world(root: str) -> None:
    from gendet.zoo.config import parse_families

    families = ",".join(f for f in parse_families("all") if f != demo.NEW_FAMILY)
    gendet = [sys.executable, "-m", "pipelines"]  # the gendet command
    subprocess.run([*gendet, "zoo", f"{root}/shards", "--families", families, "--crops-per-photo", "16"], check=True)
    subprocess.run([*gendet, "extract", f"{root}/shards", f"{root}/features", "--encoder", "spectrum:v1",
                    "--batch-size", "256", "--local"], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="out/sweep-world", help="folder of the world's shards/ and features/")
    p.add_argument("--build", action="store_true", help="make the world first when its features are missing")
    p.add_argument("--out", default="out/sweep-alpha-margin")
    p.add_argument("--grid", action="append", default=None, metavar="KEY=V1,V2", help=f"default: {' '.join(GRID)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--name", default="sweep-alpha-margin", help="result files: experiments/results/<name>-cpu<N>.md|csv")
    args = p.parse_args()
    features = os.path.join(args.world, "features")
    if args.build and not os.path.isdir(features):
        build_world(args.world)
    train = preset("demo", methods=("gendet",), train_subsets=(demo.TRAIN_FAMILY,))
    job = sweep_pipeline.SweepJob(features=features, train=train, grid=tuple(args.grid or GRID),
                                  seeds=tuple(int(s) for s in csv_tuple(args.seeds)), eval_splits=("test",),
                                  out=args.out, name=args.name)
    argv = [features, "--train-subsets", demo.TRAIN_FAMILY, "--preset", "demo", "--eval-splits", "test",
            "--seeds", args.seeds, "--out", args.out, "--name", args.name,
            *[a for g in job.grid for a in ("--grid", g)]]  # the same job as `gendet sweep` flags (the result's text)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    load_before, started = os.getloadavg(), time.perf_counter()
    summary = sweep_pipeline.run(job)
    wall, load_after = time.perf_counter() - started, os.getloadavg()
    import ray
    import torch

    table = Path(summary["md"]).read_text().split("\n", 1)[1].lstrip("\n")  # its title line is replaced below
    lines = [f"# `gendet sweep`: alpha x M (Table 5) on the demo's world, seeds {args.seeds}", "",
             f"- machine: {machine()}; torch {torch.__version__}, Ray {ray.__version__}; {time.strftime('%Y-%m-%d')}",
             f"- command: `{' '.join(['python -m experiments.sweep', *map(shlex.quote, sys.argv[1:])])}`, i.e. "
             f"`gendet sweep {' '.join(map(shlex.quote, argv))}`",
             f"- wall time {wall:.0f} s for {len(summary['rows'])} trials (Ray start-up included; load average "
             f"{load_before[0]:.1f} before, {load_after[0]:.1f} after: the machine is shared)",
             f"- trained on {demo.TRAIN_FAMILY} (preset `demo`: 10 rotations of 2-epoch stages), GenDet only; "
             "scored on the test split; unseen = the 6 other families (no sdedit), seen = the training family; "
             "accuracy at 0.5 after Platt scaling, calibrated accuracy at 5 % FPR on val reals", "", table]
    stem = f"{args.name}-cpu{os.cpu_count()}"
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    shutil.copyfile(summary["csv"], RESULTS / f"{stem}.csv")
    print("\n".join(lines))
    print("wrote", RESULTS / f"{stem}.md", "and .csv")


if __name__ == "__main__":
    main()
