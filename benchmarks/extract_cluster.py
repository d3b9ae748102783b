"""Extraction on a real multi-node Ray: driver CPU per 10k rows before/after moving the writes off
the driver, and throughput with 1 vs 2 worker nodes (issue 12).

A cluster benchmark, CPU-only: unlike the GPU benchmarks it runs Ray, but never imports it; Ray
lives in subprocesses only (``ray start`` nodes from ``benchmarks.cluster_harness``, the harness the
cluster tests use too: a head with 0 CPUs plus worker nodes of ``--cpus`` logical CPUs, 127.0.0.1, token auth; and the driver,
``python -m pipelines.extract`` with ``RAY_ADDRESS`` set, as ``ray job submit`` would run it).

Per configuration ``CODE:NODES`` (``new``: this work tree; ``old``: the commit ``--old-rev`` checked
out in a detached worktree at ``--old-tree``, put first on ``PYTHONPATH`` of every node and of the
driver, so every Ray worker imports the old ``gendet``/``pipelines``): start the cluster, one
untimed warm-up job over one shard, then one job per ``--images`` size with ``--concurrency NODES``.
Each row: the driver process's CPU (user + system, ``os.wait4``: the driver and any children it
reaped; a driver joining a cluster starts none of its own), its wall time from start to exit, and
images/s from its summary line (the job's own clock, plan to summary). Driver CPU per 10k rows is
the slope between the smallest and largest size (removes the fixed start-up: imports, connecting,
planning). Random-noise JPEGs of ``--size`` px in shards of 1000, ``spectrum:v1``, batch 256.

On a machine with fewer cores than the nodes' logical CPUs, the nodes share the same cores: the
1-vs-2-node rows then measure overhead and scheduling, not speed-up (the table says so).

    python -m benchmarks.extract_cluster                              # new:2 old:2 new:1, 4000 and 16000 images
    python -m benchmarks.extract_cluster --configs new:1 new:2 --images 16000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cluster_harness import start_cluster  # the multi-node Ray the cluster tests start too
from benchmarks.extract import make_shards  # the same images as the extraction benchmark
from benchmarks.train import RESULTS, result_tag, write_results  # one results writer for every benchmark

REPO = Path(__file__).resolve().parent.parent

SUMMARY = re.compile(r"extracted (\d+) images from (\d+) shards .* in ([\d.]+) s: ([\d.]+) images/s")
SHARED_CORES = ("All worker nodes run on this one machine and share its {cores} physical cores: the 1-vs-2-node rows "
                "measure Ray's overhead and the pool's scaling logic, not a speed-up. `driver_cpu_s`: user+system CPU "
                "of the driver process (os.wait4); `driver_cpu_s_per_10k_rows_slope`: the slope between the two sizes "
                "of a configuration (start-up removed). `old` = {old} (the driver receives every row and writes all "
                "Parquet), `new` = the work tree (encoder actors write parts, finalizer actors write shards, the "
                "driver counts summaries).")


def tree_version(tree: Path) -> str:
    run = lambda *cmd: subprocess.run(["git", "-C", str(tree), *cmd], capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = run("status", "--porcelain", "--", "gendet", "pipelines")
    return (run("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if dirty else "")


def run_driver(code: str, tree: Path, cluster, shards: str, store: str, concurrency: int, args) -> dict:
    """One ``python -m pipelines.extract`` against the cluster; its CPU from ``os.wait4``."""
    cmd = ["nice", "-n", str(args.nice), sys.executable, "-m", "pipelines.extract", shards, store,
           "--encoder", args.encoder, "--batch-size", str(args.batch_size), "--concurrency", str(concurrency)]
    if code == "new":
        cmd.append("--shared-fs")  # the old code knows no such flag (it never refused local paths)
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read().decode(errors="replace")
    match = SUMMARY.search(out)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"{code} driver exited {proc.returncode}:\n{out[-3000:]}")
    return {"images": int(match[1]), "shards": int(match[2]), "job_s": float(match[3]), "images_per_s": float(match[4]),
            "driver_wall_s": round(wall, 2), "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "driver_user_s": round(usage.ru_utime, 2), "driver_sys_s": round(usage.ru_stime, 2),
            "driver_max_rss_mb": round(usage.ru_maxrss / 1024), "load_1m_start": round(load_start, 2),
            "load_1m_end": round(os.getloadavg()[0], 2)}


def imported_from(tree: Path, env: dict) -> str:
    """Where the driver's ``gendet`` and ``pipelines.extract`` come from under this env (the check
    that the old code really ran)."""
    probe = subprocess.run([sys.executable, "-c", "import gendet, pipelines.extract as p; print(gendet.__file__, p.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True)
    return probe.stdout.strip()


def run_config(code: str, nodes: int, folders: dict, tmp: str, args) -> list[dict]:
    tree = Path(args.old_tree) if code == "old" else REPO
    extra = {"PYTHONPATH": str(tree)} if code == "old" else {}
    workers = tuple(f"w{i + 1}" for i in range(nodes))
    cluster = start_cluster(workers=workers, cpus=args.cpus, extra_env=extra)
    rows = []
    try:
        where = imported_from(tree, cluster.env)
        assert where.startswith(str(tree)), f"{code}: imported {where}, expected {tree}"
        print(f"{code}:{nodes} imports {where}", flush=True)
        run_driver(code, tree, cluster, folders["warm"], f"{tmp}/{code}{nodes}-warm", nodes, args)  # untimed
        for n in args.images:
            for rep in range(args.repeats):
                row = run_driver(code, tree, cluster, folders[n], f"{tmp}/{code}{nodes}-{n}-{rep}", nodes, args)
                rows.append({"code": code, "code_version": tree_version(tree), "worker_nodes": nodes,
                             "cpus_per_node": args.cpus, "concurrency": nodes, **row})
                print({k: row[k] for k in ("images", "driver_cpu_s", "driver_wall_s", "images_per_s", "load_1m_start")},
                      flush=True)
    finally:
        cluster.stop()
    by_size = {n: sum(r["driver_cpu_s"] for r in rows if r["images"] == n) / args.repeats for n in args.images}
    small, large = min(args.images), max(args.images)
    if large > small:
        slope = (by_size[large] - by_size[small]) / (large - small) * 10_000
        for row in rows:
            row["driver_cpu_s_per_10k_rows_slope"] = round(slope, 3)
    for row in rows:
        row["driver_cpu_s_per_10k_rows_raw"] = round(row["driver_cpu_s"] / row["images"] * 10_000, 3)
    return rows


def wait_for_quiet(limit: float, patience_s: float) -> None:
    """Other agents share the machine: wait (up to ``patience_s``) for the load to drop under ``limit``."""
    deadline = time.monotonic() + patience_s
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        print(f"load {os.getloadavg()[0]:.1f} > {limit}: waiting", flush=True)
        time.sleep(20)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["new:2", "old:2", "new:1"], help="CODE:NODES (CODE: new or old)")
    p.add_argument("--images", type=int, nargs="+", default=[4000, 16000])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="image side in px")
    p.add_argument("--cpus", type=int, default=2, help="logical CPUs per worker node")
    p.add_argument("--encoder", default="spectrum:v1")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--old-tree", default="/tmp/gendet-old", help="a worktree of the old code: "
                   "git worktree add /tmp/gendet-old 23c395a")
    p.add_argument("--nice", type=int, default=5)
    p.add_argument("--max-load", type=float, default=8.0, help="wait before each configuration while the load is above")
    args = p.parse_args(argv)
    # The cluster helper calls the `ray` CLI: this interpreter's, as with its venv activated.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    configs = [(code, int(nodes)) for code, nodes in (c.split(":") for c in args.configs)]
    if any(code not in ("new", "old") for code, _ in configs):
        p.error(f"--configs {' '.join(args.configs)}: CODE must be new or old (e.g. new:2)")
    if any(code == "old" for code, _ in configs) and not (Path(args.old_tree) / "pipelines" / "extract.py").exists():
        p.error(f"--old-tree {args.old_tree} holds no checkout: git worktree add {args.old_tree} 23c395a")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gendet-cluster-bench-") as tmp:
        folders = {"warm": f"{tmp}/warm"}
        make_shards(folders["warm"], 1000, 1000, args.size)
        for n in args.images:
            folders[n] = f"{tmp}/shards-{n}"
            make_shards(folders[n], n, 1000, args.size)
        for code, nodes in configs:
            wait_for_quiet(args.max_load, patience_s=300)
            rows += run_config(code, nodes, folders, tmp, args)
    name = f"extract-cluster-{result_tag()}"
    write_results(rows, name)
    md = RESULTS / f"{name}.md"
    title, table = md.read_text().split("\n\n", 1)
    note = SHARED_CORES.format(cores=os.cpu_count(), old=tree_version(Path(args.old_tree)))
    md.write_text(f"{title}\n\n{note}\n\n{table}")
    print("wrote", md)
    assert "ray" not in sys.modules, "the benchmark runs Ray in subprocesses only"
    return 0


if __name__ == "__main__":
    sys.exit(main())
