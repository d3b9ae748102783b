"""The demo's training and evaluation repeated over seeds, on the demo's own feature store:
mean ± sd per method of the numbers the README reports (one demo run is one draw; on the hard
families and under JPEG two runs differ by several points).

    gendet demo                                                # makes out/demo/features (and out/demo/shards)
    python -m experiments.demo_seeds --seeds 0 1 2 --tag v0.5  # -> experiments/results/demo-seeds-cpu2-v0.5.md
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from experiments.settings import train_settings
from gendet.eval import tables
from gendet.method.gendet.config import METHODS, preset
from pipelines import demo, train
from pipelines._common import Workers

RESULTS = Path(__file__).resolve().parent / "results"


def one_seed(features: str, out: str, seed: int, sets: tuple[str, ...] = ()) -> dict:
    cfg = preset("demo", **{"train_subsets": (demo.TRAIN_FAMILY,), "seed": seed, **train_settings(sets)})  # --set last
    train.run(train.TrainJob(features=features, train=cfg, eval_splits=("test",), encoder=demo.ENCODER, out=out,
                             workers=Workers(num_workers=1, cpus_per_worker=1.0), name=f"seed-{seed}"))
    by_degrade = demo.degraded_reports(features, os.path.join(out, "detectors"), demo.DEGRADES, METHODS)
    seen = [demo.TRAIN_FAMILY]
    row = {}
    for method in METHODS:
        clean = by_degrade[""][method]
        unseen = [s for s in clean["subsets"] if s not in seen]
        for metric in ("acc", "ap", "acc_calibrated"):
            row[(method, f"unseen {metric}")] = tables.mean_over(clean, unseen, metric)
        for degrade in demo.DEGRADES:
            row[(method, degrade)] = tables.mean_over(by_degrade[degrade][method], unseen, "acc")
        row[(method, "inpaint_f8 acc")] = clean["subsets"]["inpaint_f8"]["acc"]
    return row


def world(features: str) -> str:
    """The features' world, from the zoo summary beside them (``gendet demo`` writes OUT/shards)."""
    path = Path(features).parent / "shards" / "zoo_summary.json"
    if not path.exists():
        return f" Encoder {demo.ENCODER}."
    zoo = json.loads(path.read_text())
    cfg, found = zoo["config"], zoo["corpus"]["found"]
    return (f" World: encoder {demo.ENCODER}, {zoo['photos']} photos ({', '.join(f'{k} {v}' for k, v in found.items())}), "
            f"native crops of {', '.join(map(str, cfg.get('crop_sizes') or [cfg['crop_size']]))} px "
            f"({cfg['crops_per_photo']} per photo and family at the smallest), "
            f"{cfg.get('jpeg_fraction', 0):.0%} of each label's images JPEG.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", default="out/demo/features")
    p.add_argument("--out", default="out/demo-seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tag", default="", help="appended to the result file's name (e.g. v0.5: older results are kept)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field for every seed (gendet train --set); the result file is named by them")
    args = p.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    rows = [one_seed(os.path.abspath(args.features), os.path.abspath(f"{args.out}/seed{s}"), s, tuple(args.sets))
            for s in args.seeds]
    lines = [f"# The demo's training over seeds {args.seeds}", "",
             f"`python -m experiments.demo_seeds` on {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s. Trained on {demo.TRAIN_FAMILY} "
             "(preset `demo`, 10 rotations), scored on the test split of the other families; mean ± sd over seeds "
             "of the mean over unseen families, in %. Degradations: accuracy at 0.5."
             + (f" Settings: {', '.join(args.sets)}." if args.sets else "") + world(args.features), ""]
    lines.append(tables.over_seeds_table(rows, METHODS))
    name = f"demo-seeds-cpu{os.cpu_count()}{tables.settings_suffix(args.sets)}{'-' + args.tag if args.tag else ''}.md"
    path = RESULTS / name
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("wrote", path)


if __name__ == "__main__":
    main()
