"""How many shots of a new generator `gendet fix` needs, chosen on val over demo worlds.

    python -m experiments.fix_shots --worlds out/demo-worlds --seeds 0,1,2 --shots 32,64,128,0

Each world is a finished ``gendet demo --seed S`` (``experiments.demo_worlds`` makes them): its
feature store holds ``sdedit``, the family that slipped, and its registry the champion the loop
started from (version 1). Per world and shot count the registry is copied, ``champion`` is set back
to version 1, and ``python -m pipelines.fix WORLD/features --subsets sdedit --model models:/gendet/1
--shots N`` retrains, gates on val and promotes or refuses, as ``refresh --fix`` does in the demo.

The choice reads val only: the smallest shot count whose fix is promoted in every world and catches
at least ``--bar`` of sdedit's val fakes at its calibrated threshold in every world (else the one
promoted in most worlds, then the highest worst-world catch). Test is reported beside it, read by
nothing. Writes ``experiments/results/fix-shots-cpu2.md`` and the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gendet.eval.tables import markdown_table, mean_sd, pct

log = logging.getLogger("fix_shots")
NEW_FAMILY, MODEL, FIRST_CHAMPION = "sdedit", "gendet", "1"


def run_fix(world: Path, shots: int, out: Path) -> dict[str, Any]:
    """One fix of ``world``'s first champion with ``shots`` (0: all); its ``fix.json``."""
    done = out / "fix.json"
    if done.exists():
        return json.loads(done.read_text())
    from mlflow import MlflowClient

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(world / "mlflow.db", out / "mlflow.db")  # the world's own registry stays as the demo left it
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    MlflowClient(uri).set_registered_model_alias(MODEL, "champion", FIRST_CHAMPION)
    cmd = [sys.executable, "-m", "pipelines.fix", str(world / "features"), "--subsets", NEW_FAMILY,
           "--model", f"models:/{MODEL}/{FIRST_CHAMPION}", "--shots", str(shots), "--out", str(out),
           "--tracking-uri", uri]
    log.info("%s", " ".join(cmd))
    with open(out / "fix.log", "w") as logfile:
        subprocess.run(cmd, check=True, stdout=logfile, stderr=subprocess.STDOUT, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    return json.loads(done.read_text())


def row(fix: dict[str, Any]) -> dict[str, Any]:
    """What one fix measured: the gate's decision and sdedit on val (what chooses), worst old family's
    paired interval on val, and sdedit and the old families on test (what is reported)."""
    fam = fix["families"]
    old = {s: r["paired"] for s, r in fam.items() if s != NEW_FAMILY and r.get("paired")}
    worst = min(old, key=lambda s: old[s]["diff"])
    test = fix["reported"]
    return {"promoted": fix["promoted"], "reason": fix["reason"], "seconds": fix["seconds"],
            "val_caught": fam[NEW_FAMILY]["after"]["fake_acc_calibrated"],
            "val_caught_before": (fam[NEW_FAMILY]["before"] or {}).get("fake_acc_calibrated"),
            "worst": worst, "worst_paired": old[worst],
            "worst_real_fake": [fam[worst]["after"][k] - fam[worst]["before"][k]
                                for k in ("real_acc_calibrated", "fake_acc_calibrated")],
            "test_caught": test[NEW_FAMILY]["fake_acc_calibrated"], "test_n_fake": test[NEW_FAMILY]["n_fake"],
            "test_old_change": {s: test[s]["acc_calibrated"] - (fam[s]["before"] or {}).get("acc_calibrated", 0.0)
                                for s in old if s in test}}


def choose(rows: dict[int, dict[int, dict[str, Any]]], bar: float) -> int:
    """The shot count val chooses (module docstring); never reads a test number."""
    def key(shots: int) -> tuple:
        worlds = rows[shots].values()
        promoted = sum(r["promoted"] for r in worlds)
        worst_catch = min(r["val_caught"] for r in worlds)
        size = shots if shots else 10**9  # 0: all of its training rows, more than any count
        if promoted == len(worlds) and worst_catch >= bar:
            return (0, size, 0.0)  # meets the bar: the smallest such count
        return (1, -promoted, -worst_catch, size)
    return min(rows, key=key)


def write(rows: dict[int, dict[int, dict[str, Any]]], chosen: int, bar: float, path: Path, command: str) -> None:
    label = lambda n: str(n) if n else "all"  # noqa: E731
    seeds = sorted(next(iter(rows.values())))
    refit = any(r["worst_paired"].get("refit") for n in rows for r in rows[n].values())
    per_world = markdown_table(
        ["shots", "world", "gate (val)", f"{NEW_FAMILY} caught on val", "worst old family on val: after - before "
         "[interval], points", "its reals, fakes: after - before, points", f"{NEW_FAMILY} caught on test", "seconds"],
        [[label(n), s, "promoted" if r["promoted"] else "refused", pct(r["val_caught"]),
          f"{r['worst']} {100 * r['worst_paired']['diff']:+.1f} [{100 * r['worst_paired']['lo']:+.1f}, "
          f"{100 * r['worst_paired']['hi']:+.1f}]", ", ".join(f"{100 * d:+.1f}" for d in r["worst_real_fake"]),
          f"{pct(r['test_caught'])} of {r['test_n_fake']}", round(r["seconds"])]
         for n in rows for s, r in sorted(rows[n].items())])
    summary = markdown_table(
        ["shots", "promoted (worlds)", f"{NEW_FAMILY} caught on val, worst world", f"{NEW_FAMILY} caught on val",
         f"{NEW_FAMILY} caught on test", "old families' acc change on test, points (mean over families and worlds)"],
        [[label(n) + (" (chosen)" if n == chosen else ""), f"{sum(r['promoted'] for r in rows[n].values())} of {len(seeds)}",
          pct(min(r["val_caught"] for r in rows[n].values())),
          mean_sd([100 * r["val_caught"] for r in rows[n].values()]),
          mean_sd([100 * r["test_caught"] for r in rows[n].values()]),
          mean_sd([100 * v for r in rows[n].values() for v in r["test_old_change"].values()])] for n in rows])
    text = "\n\n".join([
        f"<!-- {command}; cpu{os.cpu_count()} -->",
        f"# How many shots `gendet fix` needs: chosen on val over {len(seeds)} demo worlds (seeds {seeds})",
        f"Each world's first champion (version 1) is fixed with N shots of `{NEW_FAMILY}` (N fakes and as many reals; "
        "all: every training row), retrained with its own training job, gated on val against it and promoted or "
        f"refused. **The gate:** paired intervals per family, each model's threshold "
        f"{'refitted on every resample' if refit else 'fixed (0.8.0)'}. **Chosen on val:** the smallest N "
        f"promoted in every world with at least {pct(bar)} % of "
        f"`{NEW_FAMILY}`'s val fakes caught at the calibrated threshold in every world. Test is reported, never read "
        "by the choice.", summary, "## Per world", per_world,
        "## The gate's reasons\n\n" + "\n".join(f"- {label(n)} shots, world {s}: {r['reason']}"
                                                 for n in rows for s, r in sorted(rows[n].items()))])
    path.write_text(text + "\n")
    path.with_suffix(".json").write_text(json.dumps({"chosen": chosen, "bar": bar, "rows": rows}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", default="out/demo-worlds", help="folder of seed-S demo worlds")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--shots", default="32,64,128,0", help="shot counts to try (0: all training rows)")
    parser.add_argument("--bar", type=float, default=0.9, help="share of the new family's val fakes to catch")
    parser.add_argument("--out", default="out/fix-shots")
    parser.add_argument("--result", default="experiments/results/fix-shots-cpu2.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds, shot_counts = [int(s) for s in args.seeds.split(",")], [int(n) for n in args.shots.split(",")]
    rows = {}
    for n in shot_counts:
        rows[n] = {s: row(run_fix(Path(args.worlds) / f"seed-{s}", n, Path(args.out) / f"seed-{s}" / f"shots-{n}"))
                   for s in seeds}
    chosen = choose(rows, args.bar)
    write(rows, chosen, args.bar, Path(args.result), f"python -m experiments.fix_shots --worlds {args.worlds} "
          f"--seeds {args.seeds} --shots {args.shots} --bar {args.bar} --out {args.out} --result {args.result}; fixes "
          f"{sum(r['seconds'] for n in rows for r in rows[n].values()):.0f} s")
    log.info("chosen: %s shots; wrote %s", chosen or "all", args.result)


if __name__ == "__main__":
    main()
