"""The held-out protocol (issue 11): does a detector hold on images it was not built from?

One world, built once (``gendet.zoo``): every installed photo source, crops at three native sizes
(64, 128, 256 px), half the images of *both* labels stored as JPEG (quality 70-95) and half as
PNG, every zoo family. Then, per encoder, held-out photo source S, training arm and seed, the whole
ladder trained on a narrow slice and scored on slices it never saw (leave one source out: every
source in turn, ``--hold-out all``, the default):

* train: every source but S, sizes 64 + 128, one family (``ae_nearest_f8``, the SD v1.4 role), split
  ``train``; calibration (Platt + threshold at ``target_fpr``): the same slice, split ``val``
* ``seen``: that slice's ``test`` split (the sanity row)
* ``families``: the other families, same sources and sizes, ``test`` split
* ``size 256``: the other families at 256 px (a size never trained on), ``test`` split
* ``source``: S, every split and size, the other families (unseen source *and* families)
* ``jpeg - png``: false-positive rate of the calibrated threshold on JPEG reals minus PNG reals of the
  held-out cells (the "Fake or JPEG?" bias: 0 when the format says nothing)

Thresholds on S's reals, three ways, none fitted on a scored row: ``cal`` (Platt and threshold on the
training family's val rows), ``cal+`` (the threshold from the val reals of every family, as ``gendet
train`` sets it; reals are photos, not a generator's, so this adds crops without showing a held-out
fake; ``gendet train`` also fits Platt on every family's val fakes, which here would be the held-out
generators) and ``worst`` (the highest of the per-source ``cal+`` thresholds: at most ``target_fpr``
on every training source).

Arms (``--arms``): what the training slice's features are. ``clean``; ``aug:0.5`` (the slice
re-extracted with ``--degrade aug:0.5``: half its images get one random JPEG, downscale or crop,
gendet.data.degradations); ``clean+aug:1`` (both the clean and an always-augmented copy of every row);
``clean+clean`` (every clean row twice: the control for ``clean+aug:1``'s doubled steps per epoch).
Calibration and scoring are always on clean features.

Cells are mean over families of accuracy at 0.5 (GenImage's protocol), at a calibrated threshold, and
AP; mean ± sd over seeds of the mean over held-out sources (each source weighs the same, whether it
has 1 photo or 38; the per-source tables show each). No Ray: the library's extractor
(``run_local``), trainer (``train_all``) and metrics.

    python -m experiments.heldout                                 # leave-one-source-out, spectrum:v2, clean and clean+aug:1
    python -m experiments.heldout --hold-out mate-backgrounds --arms clean --encoders spectrum:v1 spectrum:v2
    python -m experiments.heldout --arms clean aug:0.5 clean+aug:1 --crops-per-photo 6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from experiments.settings import train_settings
from gendet.eval import metrics, tables
from gendet.extract.config import ExtractConfig
from gendet.extract.runner import run_local
from gendet.features.sources import TensorSource
from gendet.features.store import feature_files, feature_matrix, resolve_variant
from gendet.method.gendet.config import METHODS, TrainConfig, preset
from gendet.method.gendet.trainer import train_all
from gendet.zoo.shards import ZooShardsConfig, build_zoo_shards

RESULTS = Path(__file__).resolve().parent / "results"

TRAIN_FAMILY = "ae_nearest_f8"
TRAIN_SIZES = (64, 128)
TEST_SIZE = 256
CELLS = ("seen", "families", "size 256", "source")
THRESHOLDS = ("cal", "cal+", "worst")


def build_world(out: str, crops_per_photo: int) -> dict:
    cfg = ZooShardsConfig(crop_sizes=(*TRAIN_SIZES, TEST_SIZE), jpeg_fraction=0.5, jpeg_quality=(70, 95),
                          crops_per_photo=crops_per_photo, seed=0)
    summary = build_zoo_shards(os.path.join(out, "shards"), cfg, reuse=True)
    if not summary["corpus"]["found"].get("mate-backgrounds"):
        raise SystemExit("mate-backgrounds is not installed (apt-get install mate-backgrounds); the one non-pip photo "
                         "source is what this protocol holds out first")
    return summary


def _features(out: str, encoder: str, degrade: str = "") -> pa.Table:
    """Extract (incremental) and read one variant: every shard clean, the training family's augmented."""
    shards = os.path.join(out, "shards") if not degrade else os.path.join(out, "shards", f"{TRAIN_FAMILY}-*.tar")
    features = os.path.join(out, "features")
    summary = run_local(ExtractConfig(shards=shards, features=features, encoder=encoder, feature_dtype="float32",
                                      batch_size=128, degrade=degrade))
    print(f"  extract {encoder} {degrade or 'clean'}: {summary.get('images', '?')} images", flush=True)
    variant = resolve_variant(features, encoder=encoder, degrade=degrade)
    return pq.ParquetDataset(feature_files(variant.url)).read(columns=["key", "subset", "label", "split", "feature"])


def load_rows(out: str, encoder: str) -> dict[str, np.ndarray]:
    """The store's clean features joined to the zoo's index (source, size, format) on (key, family)."""
    table = _features(out, encoder)
    meta = table.drop_columns(["feature"]).append_column("row", pa.array(np.arange(table.num_rows)))
    index = pq.read_table(os.path.join(out, "shards", "zoo_index.parquet"), columns=["key", "family", "source", "size", "format"])
    joined = meta.join(index.rename_columns(["key", "subset", "source", "size", "format"]), keys=["key", "subset"])
    if joined.num_rows != table.num_rows:
        raise SystemExit(f"{joined.num_rows} of {table.num_rows} feature rows found in zoo_index.parquet")
    rows = {name: joined.column(name).to_numpy(zero_copy_only=False) for name in
            ("key", "subset", "label", "split", "source", "size", "format")}
    rows["x"] = feature_matrix(table.column("feature"))[joined.column("row").to_numpy()].astype(np.float32)
    rows["y"] = (rows["label"] == "fake").astype(np.int64)
    return rows


def augmented(out: str, encoder: str, rows: dict[str, np.ndarray], degrade: str) -> np.ndarray:
    """Features of ``rows`` under ``degrade`` (NaN for rows outside the training family)."""
    table = _features(out, encoder, degrade)
    where = {(k, s): i for i, (k, s) in enumerate(zip(table.column("key").to_pylist(), table.column("subset").to_pylist()))}
    x = feature_matrix(table.column("feature")).astype(np.float32)
    found = np.array([where.get((k, s), -1) for k, s in zip(rows["key"], rows["subset"])])
    result = np.full_like(rows["x"], np.nan)
    result[found >= 0] = x[found[found >= 0]]
    return result


def cells(rows: dict[str, np.ndarray], held: str, train_reals: str = "family") -> dict[str, np.ndarray]:
    trained_on = rows["source"] != held
    train_size = np.isin(rows["size"], TRAIN_SIZES)
    family = rows["subset"] == TRAIN_FAMILY
    split = rows["split"]
    # train_reals=all: the real crops every family drew from the training photos too (no held-out fake)
    real_rows = family | (rows["y"] == 0) if train_reals == "all" else family
    return {
        "train": trained_on & train_size & real_rows & (split == "train"),
        "calibration": trained_on & train_size & family & (split == "val"),
        "calibration reals": trained_on & train_size & (split == "val") & (rows["y"] == 0),
        "seen": trained_on & train_size & family & (split == "test"),
        "families": trained_on & train_size & ~family & (split == "test"),
        "size 256": trained_on & (rows["size"] == TEST_SIZE) & ~family & (split == "test"),
        "source": (rows["source"] == held) & ~family,
    }


def thresholds(det, rows: dict[str, np.ndarray], where: dict[str, np.ndarray]) -> dict[str, float]:
    """The three thresholds of the docstring, all from reals of the training sources' val split."""
    reals = where["calibration reals"]
    scores, fpr = det.score(rows["x"][reals]), det.target_fpr
    per_source = [metrics.calibrated_threshold(scores[rows["source"][reals] == s], fpr)
                  for s in np.unique(rows["source"][reals])]
    return {"cal": det.threshold, "cal+": metrics.calibrated_threshold(scores, fpr), "worst": max(per_source)}


def score_cell(det, rows: dict[str, np.ndarray], where: np.ndarray, cuts: dict[str, float]) -> dict[str, float]:
    scores, y, fmt = det.score(rows["x"][where]), rows["y"][where], rows["format"][where]
    out = {}
    for name, cut in cuts.items():
        report = metrics.metrics_report(scores, y, rows["subset"][where], threshold=0.5, calibrated_threshold=cut,
                                        target_fpr=det.target_fpr, model="", encoder="")
        out |= {"acc": report["mean_acc"], "AP": report["mAP"], f"acc {name}": report["mean_acc_calibrated"],
                f"real acc {name}": float((scores[y == 0] <= cut).mean()),
                "TPR@5%FPR": metrics.nanmean([m["tpr_at_5fpr"] for m in report["subsets"].values()])}
    flagged = scores > cuts["cal"]
    out["fpr jpeg"] = float(flagged[(y == 0) & (fmt == "jpg")].mean())
    out["fpr png"] = float(flagged[(y == 0) & (fmt == "png")].mean())
    return out


def training_slice(rows: dict[str, np.ndarray], arm_x: list[np.ndarray], where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([a[where] for a in arm_x])
    if np.isnan(x).any():
        raise SystemExit("augmented features are missing for some training rows; delete out/heldout/features and rerun")
    return x, np.concatenate([rows["y"][where]] * len(arm_x))


def one_run(rows: dict[str, np.ndarray], arm_x: list[np.ndarray], where: dict[str, np.ndarray], cfg: TrainConfig) -> list[dict]:
    """Train the ladder on the arm's features of the training slice; one record per (method, cell, metric)."""
    torch.manual_seed(cfg.seed)
    x, y = training_slice(rows, arm_x, where["train"])
    train = TensorSource(x, y, batch_size=cfg.batch_size, seed=cfg.seed)
    calib = TensorSource(rows["x"][where["calibration"]], rows["y"][where["calibration"]], batch_size=4096, seed=cfg.seed)
    result = train_all(cfg, train, calibration=calib)
    records = []
    for method, det in result.detectors.items():
        cuts = thresholds(det, rows, where)
        for cell in CELLS:
            for metric, value in score_cell(det, rows, where[cell], cuts).items():
                records.append({"method": method, "cell": cell, "metric": metric, "value": value})
    return records


def summary(frame: pd.DataFrame, columns: list[tuple[str, str]], row_keys: list[str]) -> str:
    """Rows ``row_keys`` (method, arm ...), a column per (cell, metric): mean over held-out sources per
    seed, then mean ± sd over seeds, in %."""
    per_seed = frame.groupby([*row_keys, "seed", "cell", "metric"], sort=False)["value"].mean()
    stats = per_seed.groupby([*row_keys, "cell", "metric"], sort=False).agg(["mean", "std"]).fillna(0.0)
    body = []
    for key in frame[row_keys].drop_duplicates().itertuples(index=False):
        cells_ = []
        for cell, metric in columns:
            at = (*key, cell, metric)
            cells_.append(f"{100 * stats.loc[at, 'mean']:.1f} ± {100 * stats.loc[at, 'std']:.1f}" if at in stats.index else "–")
        body.append([*key, *cells_])
    return tables.markdown_table([*row_keys, *(f"{c} {m}" for c, m in columns)], body)


def per_source(frame: pd.DataFrame, metric: str) -> str:
    """Rows method, a column per held-out source (mean ± sd over seeds) for the ``source`` cell."""
    part = frame[(frame["cell"] == "source") & (frame["metric"] == metric)]
    stats = part.groupby(["method", "held"], sort=False)["value"].agg(["mean", "std"]).fillna(0.0)
    helds = list(dict.fromkeys(part["held"]))
    body = [[m, *(f"{100 * stats.loc[(m, h), 'mean']:.1f} ± {100 * stats.loc[(m, h), 'std']:.1f}" for h in helds)]
            for m in dict.fromkeys(part["method"])]
    return tables.markdown_table(["method", *helds], body)


def verdict(f: pd.DataFrame, arm: str) -> str:
    """The issue's bar, in plain numbers, for one training arm."""
    mean = f.groupby(["method", "cell", "metric"])["value"].mean()
    lines = [f"Bar (arm `{arm}`, means over held-out sources and seeds):"]
    for cell in ("families", "source"):
        g, p, t = (100 * mean[(m, cell, "acc")] for m in ("gendet", "linear_probe", "teacher"))
        lines.append(f"- `{cell}` acc: gendet {g:.1f}, probe {p:.1f} (gendet - probe {g - p:+.1f}, bar +5: "
                     f"{'met' if g - p >= 5 else 'NOT met'}), teacher {t:.1f} ({'met' if g >= t else 'NOT met'})")
    gendet = f[(f["method"] == "gendet") & (f["cell"] == "source")].groupby(["metric", "held"])["value"].mean()
    lines.append("- gendet's real accuracy on the held-out source (bar 90 %), mean over sources / lowest source: " + ", ".join(
        f"{c} {100 * gendet[f'real acc {c}'].mean():.1f} / {100 * gendet[f'real acc {c}'].min():.1f} "
        f"({gendet[f'real acc {c}'].idxmin()})" for c in THRESHOLDS))
    return "\n".join(lines)


def report(frame: pd.DataFrame, args, found: dict, seconds: float) -> str:
    helds = list(dict.fromkeys(frame["held"]))
    cols = [("seen", "acc"), ("families", "acc"), ("size 256", "acc"), ("source", "acc"), ("source", "AP"),
            ("source", "TPR@5%FPR"), *((("source", f"acc {c}")) for c in THRESHOLDS),
            *((("source", f"real acc {c}")) for c in THRESHOLDS)]
    sections = []
    for encoder, part in frame.groupby("encoder", sort=False):
        jpeg = part[part["metric"].isin(["fpr jpeg", "fpr png"]) & (part["cell"] != "seen")]
        sections += [f"## {encoder}", summary(part, cols, ["method", "arm"]),
                     "`jpeg - png` FPR at `cal` (points, held-out cells): " + ", ".join(
                         f"{m}/{a} {100 * (g[g.metric == 'fpr jpeg'].value.mean() - g[g.metric == 'fpr png'].value.mean()):+.1f}"
                         for (m, a), g in jpeg.groupby(["method", "arm"], sort=False)),
                     *(verdict(g, arm) for arm, g in part.groupby("arm", sort=False))]
        if len(helds) > 1:
            for arm, arm_part in part.groupby("arm", sort=False):
                sections += [f"### {encoder}, arm `{arm}`: per held-out source, `source` acc at 0.5",
                             per_source(arm_part, "acc"), "`source` real acc at `cal`", per_source(arm_part, "real acc cal"),
                             "`source` real acc at `cal+`", per_source(arm_part, "real acc cal+"),
                             "`source` real acc at `worst`", per_source(arm_part, "real acc worst")]
    reals = " (and every family's real crops)" if args.train_reals == "all" else ""
    head = (f"`python -m experiments.heldout {' '.join(sys.argv[1:])}` on {os.cpu_count()} cores (shared, nice 15, "
            f"torch threads {torch.get_num_threads()}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
            f"{seconds:.0f} s. Photos per source: {found}; crops per photo at 64 px: {args.crops_per_photo}. Held out in "
            f"turn: {helds}. Trained on {TRAIN_FAMILY}{reals}, the other sources, sizes {list(TRAIN_SIZES)} px, split train "
            f"(preset `{args.preset}`); Platt + threshold at 5 % FPR on their val split. Half of each label's images are "
            "JPEG (q 70-95). Cells: mean ± sd over seeds of the mean over held-out sources of the mean over families, "
            "in %; `acc` at 0.5, `acc cal|cal+|worst` at those thresholds (module docstring); `real acc` on reals only.")
    return "\n\n".join([f"# Held-out protocol: seeds {args.seeds}, arms {args.arms}", head, *sections]) + "\n"


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One CSV row per run, method and cell, a column per metric (``frame.melt`` gives the records back)."""
    keys = ["encoder", "held", "arm", "seed", "method", "cell"]
    table = frame.pivot_table(index=keys, columns="metric", values="value", sort=False).reset_index()
    table.columns.name = None
    return table.round(5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/heldout")
    p.add_argument("--encoders", nargs="+", default=["spectrum:v2"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hold-out", nargs="+", default=["all"], help="photo sources to hold out in turn; all = every one")
    p.add_argument("--arms", nargs="+", default=["clean", "clean+aug:1"],
                   help="clean, aug:P, clean+aug:P, clean+clean (docstring); the default pair measured best (README)")
    p.add_argument("--train-reals", choices=("family", "all"), default="family",
                   help="reals to train on: the training family's, or every family's crops of the training photos")
    p.add_argument("--crops-per-photo", type=int, default=6, help="crops per photo at 64 px (fewer at larger sizes)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--results", default=str(RESULTS), help="folder of the .md and .csv written")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field for every run (gendet train --set); the result file is named by them")
    args = p.parse_args()
    if args.train_reals == "all" and any(d != "clean" for a in args.arms for d in a.split("+")):
        raise SystemExit("--train-reals all: only with --arms clean (the augmented variants hold the training family only)")
    torch.set_num_threads(1)
    started = time.perf_counter()
    found = build_world(args.out, args.crops_per_photo)["corpus"]["found"]
    helds = [s for s in found if found[s]] if args.hold_out == ["all"] else args.hold_out
    unknown = sorted(set(helds) - set(found))
    if unknown:
        raise SystemExit(f"--hold-out {unknown}: not in the world; its sources are {sorted(found)}")
    overrides = train_settings(args.sets)
    records = []
    for encoder in args.encoders:
        rows = load_rows(args.out, encoder)
        variants = {d: augmented(args.out, encoder, rows, d) for arm in args.arms for d in arm.split("+") if d != "clean"}
        for held in helds:
            where = cells(rows, held, args.train_reals)
            print(f"  {encoder} held out {held}: rows per cell { {k: int(v.sum()) for k, v in where.items()} }", flush=True)
            for arm in args.arms:
                arm_x = [rows["x"] if d == "clean" else variants[d] for d in arm.split("+")]
                for seed in args.seeds:
                    cfg = preset(args.preset, seed=seed, train_subsets=(TRAIN_FAMILY,), **overrides)
                    t0 = time.perf_counter()
                    for r in one_run(rows, arm_x, where, cfg):
                        records.append({"encoder": encoder, "held": held, "arm": arm, "seed": seed, **r})
                    print(f"  {encoder} {held} {arm} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    frame = pd.DataFrame(records)
    frame["method"] = pd.Categorical(frame["method"], categories=[m for m in METHODS if m in set(frame["method"])], ordered=True)
    frame = frame.sort_values(["encoder", "method"], kind="stable")
    frame["method"] = frame["method"].astype(str)
    name = (f"heldout-cpu{os.cpu_count()}" + ("-loso" if len(helds) > 1 else "-held-" + "-".join(helds)) +
            "".join("-" + a.replace(":", "").replace("+", "-") for a in args.arms if args.arms != ["clean", "clean+aug:1"]) +
            ("-reals-all" if args.train_reals == "all" else "") +
            tables.settings_suffix(args.sets))
    text = report(frame, args, found, time.perf_counter() - started)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / f"{name}.md").write_text(text)
    wide(frame).to_csv(Path(args.results) / f"{name}.csv", index=False)
    print(text)
    print("wrote", Path(args.results) / f"{name}.md")


if __name__ == "__main__":
    main()
