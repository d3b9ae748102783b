"""`gendet demo` over seeds of the world *and* the training: one number is one draw.

    python -m experiments.demo_worlds --seeds 0,1,2 --out out/demo-worlds

Each seed is a whole fresh demo (``python -m pipelines.demo --seed S --out OUT/seed-S``): another
photo split, other crops, masks, formats and manipulations, another initialisation, its own
MLflow store. A seed whose ``report.md`` exists is not rerun. Then one table: per method the
unseen-family accuracy at 0.5 and at the calibrated threshold and AP on test (mean ± sd over
seeds; ``inpaint_f8``, the training family's generator inside a mask, counted apart), the closed
loop per seed (did the new family slip, what the gate decided on val and why, the fix's numbers on
test), GAMMA beside GenDet, and the seconds. Writes ``experiments/results/demo-worlds-cpu2.md``
and the numbers behind it as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gendet.eval.tables import markdown_table, mean_over, mean_sd, pct

log = logging.getLogger("demo_worlds")
METHODS = ("linear_probe", "teacher", "ts_real", "ts_fake", "gendet")
TRAIN_FAMILY, NEW_FAMILY, SEEN_GENERATOR = "ae_nearest_f8", "sdedit", ("inpaint_f8",)
PARTIAL = ("inpaint_strokes_f4", "inpaint_f8")  # the held-out partial fakes, then the seen generator's
PARTIAL_KEYS = ("acc", "fake_acc_calibrated", "pixel_iou")


def run_seed(seed: int, out: Path) -> float:
    """One demo; returns its wall seconds (0 when its report was already there)."""
    if (out / "report.md").exists():
        log.info("seed %d: %s exists, not rerun", seed, out / "report.md")
        logged = out.parent / f"seed-{seed}.log"
        found = re.findall(r"\(total (\d+) s\)", logged.read_text()) if logged.exists() else []
        return float(found[-1]) if found else 0.0
    start = time.time()
    cmd = [sys.executable, "-m", "pipelines.demo", "--seed", str(seed), "--out", str(out)]
    log.info("seed %d: %s", seed, " ".join(cmd))
    with open(out.parent / f"seed-{seed}.log", "w") as logfile:
        subprocess.run(cmd, check=True, stdout=logfile, stderr=subprocess.STDOUT)
    return time.time() - start


def unseen(report: dict[str, Any], metric: str) -> float | None:
    return mean_over(report, [s for s in report["subsets"] if s != TRAIN_FAMILY and s not in SEEN_GENERATOR], metric)


def numbers(out: Path) -> dict[str, Any]:
    """What one seed's demo measured (its own files)."""
    read = lambda *p: json.loads(out.joinpath(*p).read_text())  # noqa: E731
    methods = {m: read("metrics", f"{m}.json") for m in METHODS}
    fresh = read("refresh.json")
    fix = fresh.get("fix") or {}
    gamma = read("gamma", "metrics.json") if (out / "gamma" / "metrics.json").exists() else None
    row: dict[str, Any] = {"methods": {}, "slipped": fresh["subsets"][NEW_FAMILY]["slipped"],
                           "caught_before": fresh["subsets"][NEW_FAMILY]["fake_acc_calibrated"],
                           "promoted": fix.get("promoted"), "reason": fix.get("reason"), "shots": fix.get("shots"),
                           "caught_after_test": ((fix.get("reported") or {}).get(NEW_FAMILY) or {}).get("fake_acc_calibrated"),
                           "families": fix.get("families") or {},
                           "calibration": {k: read("train_summary.json").get(k) for k in ("calibration_split",
                                           "calibration_subsets", "calibration_rows")}}
    for m, rep in {**methods, **({"gamma": gamma} if gamma else {})}.items():
        row["methods"][m] = {"acc": unseen(rep, "acc"), "acc_calibrated": unseen(rep, "acc_calibrated"),
                             "ap": unseen(rep, "ap"), **{f"{s}/{k}": rep["subsets"].get(s, {}).get(k)
                                                         for s in PARTIAL for k in PARTIAL_KEYS}}
    return row


def write(rows: dict[int, dict[str, Any]], seconds: dict[int, float], path: Path, command: str) -> None:
    seeds = sorted(rows)
    methods = list(rows[seeds[0]]["methods"])
    cols = ["acc", "acc_calibrated", "ap", *(f"{s}/{k}" for s in PARTIAL for k in PARTIAL_KEYS)]
    named = {"acc": "acc@0.5", "fake_acc_calibrated": "fakes caught, calibrated", "pixel_iou": "mask IoU"}
    table = markdown_table(["method", "unseen acc@0.5", "unseen acc calibrated", "unseen AP",
                            *(f"{s} {named[k]}" + (" (seen generator)" if s in SEEN_GENERATOR else " (held out)")
                              for s in PARTIAL for k in PARTIAL_KEYS)],
                           [[m, *(mean_sd([100 * v for s in seeds if m in rows[s]["methods"]
                                           for v in [rows[s]["methods"][m].get(c)] if v is not None]) for c in cols)]
                            for m in methods])
    loop = markdown_table(
        ["seed", f"{NEW_FAMILY} slipped", "caught before", "gate (on val)", f"{NEW_FAMILY} caught after, test",
         "worst old family on val: after - before [interval], points", "calibration subsets (rows)"],
        [[s, rows[s]["slipped"], pct(rows[s]["caught_before"]),
          "promoted" if rows[s]["promoted"] else "refused" if rows[s]["promoted"] is False else "no fix",
          pct(rows[s]["caught_after_test"]), _worst(rows[s]["families"]),
          f"{','.join(rows[s]['calibration'].get('calibration_subsets') or [])} "
          f"({json.dumps(rows[s]['calibration'].get('calibration_rows'))})"] for s in seeds])
    reasons = "\n".join(f"- seed {s}: {rows[s]['reason']}" for s in seeds if rows[s]["reason"])
    text = "\n\n".join([
        f"<!-- {command}; cpu{os.cpu_count()}; seconds per seed: {json.dumps({s: round(v) for s, v in seconds.items()})} -->",
        f"# The demo over {len(seeds)} seeds of world and training",
        f"Each seed is a fresh `gendet demo --seed S` (photo split, crops, masks, formats, manipulations, "
        f"initialisation). Trained on `{TRAIN_FAMILY}`; test split; mean ± sd over seeds {seeds}. Unseen = every "
        f"family but the training one and `{', '.join(SEEN_GENERATOR)}` (the training family's generator inside a "
        "mask, reported apart as a seen generator), %.", table,
        f"## The closed loop: `{NEW_FAMILY}` arrives, `refresh --fix` retrains with "
        f"{'/'.join(sorted({str(rows[s].get('shots') or 'all') for s in seeds}))} shots, the gate decides on val",
        loop, reasons])
    path.write_text(text + "\n")
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "rows": rows}, indent=1, default=str) + "\n")


def _worst(families: dict[str, Any]) -> str:
    paired = {s: row["paired"] for s, row in families.items() if row.get("paired") and s != NEW_FAMILY}
    if not paired:
        return ""
    s = min(paired, key=lambda f: paired[f]["diff"])
    p = paired[s]
    return f"{s} {p['diff'] * 100:+.1f} [{p['lo'] * 100:+.1f}, {p['hi'] * 100:+.1f}] on {p['n']}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="out/demo-worlds")
    parser.add_argument("--result", default="experiments/results/demo-worlds-cpu2.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    seconds = {s: run_seed(s, Path(args.out) / f"seed-{s}") for s in seeds}
    rows = {s: numbers(Path(args.out) / f"seed-{s}") for s in seeds}
    write(rows, seconds, Path(args.result), f"python -m experiments.demo_worlds --seeds {args.seeds} --out {args.out}")
    log.info("wrote %s", args.result)


if __name__ == "__main__":
    main()
