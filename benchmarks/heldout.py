"""The held-out protocol (issue 11): does a detector hold on images it was not built from?

One world, built once (``gendet.zoo``): every installed photo source, crops at three native sizes
(64, 128, 256 px), half the images of *both* labels stored as JPEG (quality 70-95) and half as
PNG, every zoo family. Then, per encoder and seed, the whole ladder trained on a narrow slice and
scored on slices it never saw:

* train: the pip photo packages, sizes 64 + 128, one family (``ae_nearest_f8``, the SD v1.4 role),
  split ``train``; calibration (Platt + threshold at ``target_fpr``): the same slice, split ``val``
* ``seen``: that slice's ``test`` split (the sanity row)
* ``families``: the other families, same sources and sizes, ``test`` split
* ``size 256``: the other families at 256 px (a size never trained on), ``test`` split
* ``source``: a photo source never trained on (Debian ``mate-backgrounds``; every split), other families
* ``jpeg - png``: false-positive rate of the calibrated threshold on JPEG reals minus PNG reals of the
  held-out cells (the "Fake or JPEG?" bias: 0 when the format says nothing)

Cells are mean over families of accuracy at 0.5 (GenImage's protocol), at the calibrated threshold,
and AP; the real accuracy at the calibrated threshold on the held-out source is the number a
trust-and-safety team lives with. Mean ± sd over seeds. No Ray: the library's extractor
(``run_local``), trainer (``train_all``) and metrics.

    python benchmarks/heldout.py                         # ~15 min on 2 cores
    python benchmarks/heldout.py --encoders spectrum:v2 --seeds 0 1 2 --set classifier_input=both
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gendet.config import parse_assignments  # noqa: E402
from gendet.eval import metrics, tables  # noqa: E402
from gendet.extract.config import ExtractConfig  # noqa: E402
from gendet.extract.runner import run_local  # noqa: E402
from gendet.features.sources import TensorSource  # noqa: E402
from gendet.features.store import feature_files, feature_matrix, resolve_variant  # noqa: E402
from gendet.method.config import METHODS, TrainConfig, preset  # noqa: E402
from gendet.method.trainer import train_all  # noqa: E402
from gendet.zoo.photos import PIP_SOURCES  # noqa: E402
from gendet.zoo.shards import ZooShardsConfig, build_zoo_shards  # noqa: E402

TRAIN_FAMILY = "ae_nearest_f8"
HELD_OUT_SOURCE = "mate-backgrounds"
TRAIN_SIZES = (64, 128)
TEST_SIZE = 256


def build_world(out: str, crops_per_photo: int) -> dict:
    cfg = ZooShardsConfig(crop_sizes=(*TRAIN_SIZES, TEST_SIZE), jpeg_fraction=0.5, jpeg_quality=(70, 95),
                          crops_per_photo=crops_per_photo, seed=0)
    summary = build_zoo_shards(os.path.join(out, "shards"), cfg, reuse=True)
    found = summary["corpus"]["found"]
    if not found.get(HELD_OUT_SOURCE):
        raise SystemExit(f"{HELD_OUT_SOURCE} is not installed (apt-get install {HELD_OUT_SOURCE}); the held-out "
                         "source is what this protocol tests")
    return summary


def load_rows(out: str, encoder: str) -> dict[str, np.ndarray]:
    """The store's features joined to the zoo's index (source, size, format) on (key, family)."""
    shards, features = os.path.join(out, "shards"), os.path.join(out, "features")
    summary = run_local(ExtractConfig(shards=shards, features=features, encoder=encoder, feature_dtype="float32",
                                      batch_size=128))
    print(f"  extract {encoder}: {summary.get('images', '?')} images", flush=True)
    variant = resolve_variant(features, encoder=encoder)
    table = pq.ParquetDataset(feature_files(variant.url)).read(columns=["key", "subset", "label", "split", "feature"])
    meta = table.drop_columns(["feature"]).append_column("row", pa.array(np.arange(table.num_rows)))
    index = pq.read_table(os.path.join(shards, "zoo_index.parquet"), columns=["key", "family", "source", "size", "format"])
    joined = meta.join(index.rename_columns(["key", "subset", "source", "size", "format"]), keys=["key", "subset"])
    if joined.num_rows != table.num_rows:
        raise SystemExit(f"{joined.num_rows} of {table.num_rows} feature rows found in zoo_index.parquet")
    rows = {name: joined.column(name).to_numpy(zero_copy_only=False) for name in
            ("subset", "label", "split", "source", "size", "format")}
    rows["x"] = feature_matrix(table.column("feature"))[joined.column("row").to_numpy()].astype(np.float32)
    rows["y"] = (rows["label"] == "fake").astype(np.int64)
    return rows


def cells(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    pip = np.isin(rows["source"], PIP_SOURCES)
    train_size = np.isin(rows["size"], TRAIN_SIZES)
    family = rows["subset"] == TRAIN_FAMILY
    return {
        "train": pip & train_size & family & (rows["split"] == "train"),
        "calibration": pip & train_size & family & (rows["split"] == "val"),
        "seen": pip & train_size & family & (rows["split"] == "test"),
        "families": pip & train_size & ~family & (rows["split"] == "test"),
        "size 256": pip & (rows["size"] == TEST_SIZE) & ~family & (rows["split"] == "test"),
        "source": (rows["source"] == HELD_OUT_SOURCE) & ~family,
    }


def score_cell(det, rows: dict[str, np.ndarray], where: np.ndarray) -> dict[str, float]:
    scores = det.score(rows["x"][where])
    report = metrics.metrics_report(scores, rows["y"][where], rows["subset"][where], threshold=0.5,
                                    calibrated_threshold=det.threshold, target_fpr=det.target_fpr, model="", encoder="")
    subsets = report["subsets"].values()
    real = rows["y"][where] == 0
    fmt = rows["format"][where]
    false_pos = scores > det.threshold
    out = {"acc": report["mean_acc"], "acc_cal": report["mean_acc_calibrated"], "ap": report["mAP"],
           "real_acc_cal": 1.0 - float(false_pos[real].mean()),
           "tpr_5fpr": metrics.nanmean([m["tpr_at_5fpr"] for m in subsets]),
           "fpr_jpeg": float(false_pos[real & (fmt == "jpg")].mean()), "fpr_png": float(false_pos[real & (fmt == "png")].mean())}
    return out


def one_run(rows: dict[str, np.ndarray], where: dict[str, np.ndarray], cfg: TrainConfig) -> dict[tuple[str, str], float]:
    torch.manual_seed(cfg.seed)
    train = TensorSource(rows["x"][where["train"]], rows["y"][where["train"]], batch_size=cfg.batch_size, seed=cfg.seed)
    calib = TensorSource(rows["x"][where["calibration"]], rows["y"][where["calibration"]], batch_size=4096, seed=cfg.seed)
    result = train_all(cfg, train, calibration=calib)
    out = {}
    for method, det in result.detectors.items():
        held = {name: score_cell(det, rows, where[name]) for name in ("seen", "families", "size 256", "source")}
        out[(method, "seen acc")] = held["seen"]["acc"]
        for name in ("families", "size 256", "source"):
            out[(method, f"{name} acc")] = held[name]["acc"]
            out[(method, f"{name} acc_cal")] = held[name]["acc_cal"]
            out[(method, f"{name} AP")] = held[name]["ap"]
        out[(method, "source real_acc_cal")] = held["source"]["real_acc_cal"]
        out[(method, "source TPR@5%FPR")] = held["source"]["tpr_5fpr"]
        jpeg = [held[n]["fpr_jpeg"] for n in ("families", "size 256", "source")]
        png = [held[n]["fpr_png"] for n in ("families", "size 256", "source")]
        out[(method, "jpeg - png FPR")] = float(np.mean(jpeg) - np.mean(png))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/heldout")
    p.add_argument("--encoders", nargs="+", default=["spectrum:v1", "spectrum:v2"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--crops-per-photo", type=int, default=6, help="crops per photo at 64 px (fewer at larger sizes)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field for every run (gendet train --set); the result file is named by them")
    args = p.parse_args()
    started = time.perf_counter()
    summary = build_world(args.out, args.crops_per_photo)
    overrides = parse_assignments(TrainConfig, args.sets)
    sections = []
    for encoder in args.encoders:
        rows = load_rows(args.out, encoder)
        where = cells(rows)
        counts = {name: int(mask.sum()) for name, mask in where.items()}
        print(f"  {encoder}: rows per cell {counts}", flush=True)
        runs = []
        for seed in args.seeds:
            cfg = preset(args.preset, seed=seed, train_subsets=(TRAIN_FAMILY,), **overrides)
            t0 = time.perf_counter()
            runs.append(one_run(rows, where, cfg))
            print(f"  {encoder} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        sections.append(f"## {encoder}\n\nrows per cell: {counts}\n\n" + tables.over_seeds_table(runs, METHODS))
    found = summary["corpus"]["found"]
    lines = [f"# Held-out protocol: seeds {args.seeds}", "",
             f"`python benchmarks/heldout.py{''.join(' --set ' + s for s in args.sets)}` on {os.cpu_count()} cores, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s. "
             f"Photos per source: {found}. Trained on {TRAIN_FAMILY}, pip sources {list(PIP_SOURCES)}, sizes "
             f"{list(TRAIN_SIZES)} px, split train (preset `{args.preset}`); calibrated on their val split (Platt, "
             "threshold at 5 % FPR on reals). Held out: the other families (`families`, test split), 256 px crops "
             f"(`size 256`), the photo source {HELD_OUT_SOURCE} (`source`, other families). Half of each label's "
             "images are JPEG (q 70-95), half PNG. Cells: mean ± sd over seeds of the mean over families, in %; "
             "`acc` at 0.5, `acc_cal` at the calibrated threshold; `jpeg - png FPR` in points.", "",
             *sections]
    path = REPO / "benchmarks" / "results" / f"heldout-cpu{os.cpu_count()}{tables.settings_suffix(args.sets)}.md"
    path.write_text("\n\n".join(lines) + "\n")
    print("\n\n".join(lines))
    print("wrote", path)


if __name__ == "__main__":
    main()
