"""Training throughput: a full GenDet run (all rungs of the ladder) streamed from a Parquet store.

For each ``--rows`` size, writes (once, cached under ``--store-dir``) a feature store of separable
random 768-d features (reals ~ N(0, I), fakes shifted on 64 coordinates, rows L2-normalised like
CLIP features, float16), then trains in a fresh subprocess and records one flat row: wall time,
features/s per stage type, peak RSS of that subprocess (``resource.getrusage``), validation AP of
each method, and the conditions (threads, batch, precision, device, load average, versions, and
``code``: the git short hash of the tree the ``gendet`` package is imported from, ``+dirty`` when
it has uncommitted changes, so two code versions can be timed side by side with one harness:
``PYTHONPATH=/path/to/other/worktree python -m benchmarks.train ...``: the timed subprocess runs this
file by its path, so the other tree's ``gendet`` comes first there, and it reports the version it imported).
Rows are appended to ``benchmarks/results/train-<machine>-pt<torch>.csv`` and the Markdown table
beside it is rewritten from the CSV.

    python -m benchmarks.train --rows 2000                        # smoke check
    python -m benchmarks.train --rows 50000 330000 --precision bf16
    python -m benchmarks.train --rows 330000 --device cuda --batch-size 4096
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gendet import io as gio
from gendet.eval.tables import markdown_table
from gendet.features.store import MANIFEST, PARQUET_SUFFIX, STATS_SUFFIX, feature_schema, variant_name

ENCODER, PREPROCESS, DIM, SHARD_ROWS = "synthetic:separable-768", "bench0001", 768, 25_000
STAGE_TYPES = ("pretrain", "a", "b", "c", "classifier")
RESULTS = Path(__file__).parent / "results"


def write_store(store: Path, rows: int, seed: int = 0) -> Path:
    """The benchmark's feature store (skipped when already complete); 2 % of rows are split=val.
    Each shard gets its stats file (the done marker readers require since issue 15)."""
    variant = store / variant_name(ENCODER, PREPROCESS)
    if (variant / MANIFEST).exists() and any(variant.glob("*" + STATS_SUFFIX)):
        return variant
    variant.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mu = np.zeros(DIM, dtype=np.float32)
    mu[:64] = 0.35
    shards = []
    for index, start in enumerate(range(0, rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, rows - start)
        fake = (np.arange(start, start + n) % 2).astype(bool)
        x = rng.standard_normal((n, DIM), dtype=np.float32) + fake[:, None] * mu
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        keys = [f"{start + i:09d}" for i in range(n)]
        split = np.where(rng.random(n) < 0.02, "val", "train")
        table = pa.table({
            "key": keys, "shard": [f"{index:06d}"] * n, "label": np.where(fake, "fake", "real"),
            "subset": ["sdv14"] * n, "content_id": keys, "split": split, "encoder": [ENCODER] * n,
            "preprocess_hash": [PREPROCESS] * n, "degrade": [""] * n,
            "feature": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), DIM),
        }, schema=feature_schema(DIM, "float16"))
        stem = f"{index:06d}"
        pq.write_table(table, variant / f"{stem}{PARQUET_SUFFIX}", row_group_size=5_000)
        gio.write_json_atomic(str(variant / f"{stem}{STATS_SUFFIX}"), {
            "shard": stem, "rows": n, "files": {"parquet": (variant / f"{stem}{PARQUET_SUFFIX}").stat().st_size}})
        shards.append(stem)
    gio.write_json_atomic(str(variant / MANIFEST), {"encoder": ENCODER, "preprocess_hash": PREPROCESS,
                                                     "dim": DIM, "degrade": "", "shards": shards, "rows": rows})
    return variant


def worker(args: argparse.Namespace) -> dict:
    """One timed run in this process; returns the flat result row."""
    import torch

    from gendet.eval.metrics import metrics_report
    from gendet.features.sources import ParquetSource, TensorSource, synthetic_clusters
    from gendet.method.gendet.config import preset
    from gendet.method.gendet.trainer import train_all

    torch.set_num_threads(args.threads)
    overrides = dict(methods=tuple(args.methods), batch_size=args.batch_size, precision=args.precision,
                     rotations=args.rotations, seed=0)
    cfg = preset(args.preset, **overrides)
    # Warm-up (not timed): kernels, allocator and autocast caches on a few in-memory batches.
    warm = TensorSource(*synthetic_clusters(2 * args.batch_size, DIM), batch_size=args.batch_size)
    train_all(preset(args.preset, **{**overrides, "rotations": 1}), warm, device=args.device)
    source = ParquetSource.from_store(args.store, batch_size=args.batch_size, seed=0)
    cpu_marks = [("start", time.process_time())]  # CPU seconds at the end of each stage (report)
    start = time.perf_counter()
    result = train_all(cfg, source, device=args.device,
                       report=lambda stage, _metrics, _ckpt: cpu_marks.append((stage, time.process_time())))
    wall = time.perf_counter() - start
    row = {"code": code_version(), "rows": sum(source.counts().values()), "wall_s": round(wall, 1)}
    row.update(stage_cpu_seconds(cpu_marks, args.rotations))
    per_stage = {h["stage"]: h["features_per_s"] for h in result.history}  # one rate per stage
    for stage_type in STAGE_TYPES:
        rates = [rate for stage, rate in per_stage.items() if stage.split(".")[-1] == stage_type]
        row[f"{stage_type}_features_per_s"] = round(float(np.mean(rates)), 1) if rates else ""
    row.update(stage_seconds(result.history, args.rotations))
    val = ParquetSource.from_store(args.store, splits=["val"], batch_size=4096)
    xs, ys = zip(*val.batches("all", 0))
    x, y = torch.cat(xs), torch.cat(ys).numpy()
    for method, det in result.detectors.items():
        report = metrics_report(det.score(x), y, np.array(["sdv14"] * len(y)), calibrated_threshold=None,
                                target_fpr=None, model=method, encoder=ENCODER)
        row[f"{method}_val_ap"] = round(report["mAP"], 4)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def stage_seconds(history: list[dict], rotations: int) -> dict:
    """Seconds of pretraining, of one rotation (mean) and of the classifier, and from them the wall
    time of the paper's 10 rotations (equal to the measured one up to overheads when rotations=10;
    a projection, labelled so, when a shorter run was timed)."""
    seconds = {h["stage"]: h["seconds"] for h in history}
    pretrain, classifier = seconds.get("pretrain", 0.0), seconds.get("classifier", 0.0)
    rotation = sum(v for k, v in seconds.items() if k.startswith("r")) / max(rotations, 1)
    return {"pretrain_s": round(pretrain, 1), "rotation_s": round(rotation, 1), "classifier_s": round(classifier, 1),
            "wall_s_10rot_from_stages": round(pretrain + 10 * rotation + classifier, 1)}


def code_version() -> str:
    """Short hash of the git tree ``gendet`` is imported from (``+dirty`` with uncommitted changes
    under ``gendet/``), or ``unknown`` outside git."""
    import gendet

    tree = Path(gendet.__file__).resolve().parent.parent
    try:
        run = lambda *cmd: subprocess.run(["git", "-C", str(tree), *cmd], check=True, capture_output=True,  # noqa: E731
                                          text=True).stdout.strip()
        return run("rev-parse", "--short", "HEAD") + ("+dirty" if run("status", "--porcelain", "--", "gendet") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stage_cpu_seconds(marks: list[tuple[str, float]], rotations: int) -> dict:
    """This process's CPU seconds (user + system) per stage type, from the marks taken after each
    stage. With ``--threads 1`` it is the work a stage costs whatever else runs on the machine
    (wall time on a shared box is not: a neighbour's job stretches it several-fold), so two code
    versions compare by it; with more threads it also counts the threads' spin-waits."""
    spent: dict[str, float] = {}
    for (_, before), (stage, after) in zip(marks, marks[1:]):
        kind = stage.split(".")[-1]
        spent[kind] = spent.get(kind, 0.0) + after - before
    per_rotation = sum(spent.get(k, 0.0) for k in ("a", "b", "c")) / max(rotations, 1)
    return {"cpu_s": round(marks[-1][1] - marks[0][1], 1), "pretrain_cpu_s": round(spent.get("pretrain", 0.0), 1),
            **{f"{k}_cpu_s": round(spent.get(k, 0.0) / max(rotations, 1), 1) for k in ("a", "b", "c")},
            "rotation_cpu_s": round(per_rotation, 1), "classifier_cpu_s": round(spent.get("classifier", 0.0), 1),
            "cpu_s_10rot_from_stages": round(spent.get("pretrain", 0.0) + 10 * per_rotation
                                             + spent.get("classifier", 0.0), 1)}


def conditions(args: argparse.Namespace) -> dict:
    import torch

    return {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
            "cpu_cores": os.cpu_count(), "threads": args.threads, "batch_size": args.batch_size,
            "precision": args.precision, "methods": "+".join(args.methods), "rotations": args.rotations,
            "preset": args.preset, "adamw": "fused", "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}


def result_tag(device: str = "cpu") -> str:
    """``cpu<cores>`` or ``cuda-<gpu model>``, then ``-pt<torch major><minor>``: how every committed
    result file is named (one naming for all benchmarks)."""
    import torch

    if device == "cpu":
        machine = f"cpu{os.cpu_count()}"
    else:
        words = torch.cuda.get_device_name(0).lower().replace("nvidia", "").split()
        machine = "cuda-" + (words[0] if words else "gpu")
    return f"{machine}-pt{''.join(torch.__version__.split('+')[0].split('.')[:2])}"


def result_name(args: argparse.Namespace) -> str:
    return f"train-{result_tag(args.device)}"


def write_results(rows: list[dict], name: str) -> Path:
    """Append rows to the CSV (columns = union) and rewrite the Markdown table from it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    old = list(csv.DictReader(path.open())) if path.exists() else []
    everything = old + rows
    columns = list(dict.fromkeys(k for r in everything for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(everything)
    text = markdown_table(columns, [[r.get(c, "") for c in columns] for r in everything])
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{text}\n")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[2000], help="store sizes (rows) to run")
    p.add_argument("--methods", nargs="+", default=["linear_probe", "teacher", "ts_real", "ts_fake", "gendet"])
    p.add_argument("--preset", default="genimage")
    p.add_argument("--rotations", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--store-dir", default="/tmp/gendet-bench", help="where the generated stores are cached")
    p.add_argument("--no-save", action="store_true", help="print rows only, write no result files")
    p.add_argument("--note", default="", help="free text kept in the row's note column (what the run compares)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    rows = []
    for n in args.rows:
        store = write_store(Path(args.store_dir) / f"rows{n}", n).parent
        # this file by its path, not -m: PYTHONPATH's gendet comes before the repo's there (module docstring)
        cmd = [sys.executable, __file__, "--worker", "--store", str(store), *sys.argv[1:]]
        load_start = round(os.getloadavg()[0], 2)  # other jobs on the machine slow the run down
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        result = json.loads(out.split("RESULT ", 1)[1])
        row = {"code": result.pop("code"), **conditions(args), "load_avg_1m_start": load_start, **result}
        if args.note:
            row["note"] = args.note
        print(json.dumps(row), flush=True)
        rows.append(row)
    if not args.no_save:
        print("wrote", write_results(rows, result_name(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
