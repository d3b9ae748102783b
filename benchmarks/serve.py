"""``gendet serve`` latency and throughput at 1, 8 and 32 concurrent clients, batching on and off,
against the bare model in one process, same images, one run.

    python -m benchmarks.serve --encoders spectrum:v1 --requests 96

For each encoder a random-init ``gendet`` detector of its width is saved, and 256 px JPEGs made.
Arms:

- ``bare``: the model in this process (``ImageScorer.score_bytes`` of one image per call, one
  caller): the floor a server adds to;
- ``serve-batchN``: ``python -m pipelines.serve`` in its own process (a private Ray, one CPU replica,
  ``--max-batch-size N``: 32 batches across clients, 1 turns batching off), each client a thread
  sending ``--requests / clients`` requests of one image as MLflow's JSON (base64), one after another.

Per arm and client count: p50 and p99 latency of a request (ms) and images/s over the whole level.
Rows go to ``results/serve-<machine>-pt<torch>.csv|md``. CPU only (Ray is not on the GPU box).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.cluster_harness import _free_port as free_port
from benchmarks.score import make_images, make_model
from benchmarks.train import result_tag, write_results

CLIENTS = (1, 8, 32)


def post(url: str, body: bytes) -> float:
    """Seconds for one request (fails on anything but 200)."""
    started = time.perf_counter()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as resp:
        assert resp.status == 200
        resp.read()
    return time.perf_counter() - started


def level(url: str, bodies: list[bytes], clients: int, requests: int) -> tuple[list[float], float]:
    """(latencies, wall seconds) of ``requests`` requests from ``clients`` threads."""
    per = max(1, requests // clients)

    def client(i: int) -> list[float]:
        return [post(url, bodies[(i * per + k) % len(bodies)]) for k in range(per)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for chunk in pool.map(client, range(clients)) for t in chunk]
    return latencies, time.perf_counter() - started


def start_server(model_dir: str, batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "local", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.serve", "--model", model_dir, "--port", str(port),
                                 "--max-batch-size", str(batch), "--max-ongoing-requests", "64"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    empty = json.dumps({"inputs": {"image": []}}).encode()
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            post(url, empty)
            return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    raise RuntimeError("the server did not answer in 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def row(encoder: str, arm: str, clients: int, latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"encoder": encoder, "arm": arm, "clients": clients, "requests": len(latencies),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "images_per_s": round(len(latencies) / wall, 1), "cpu_cores": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", default="spectrum:v1")
    p.add_argument("--requests", type=int, default=96, help="requests per client level")
    p.add_argument("--batches", default="32,1", help="--max-batch-size of each served arm")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = [path.read_bytes() for path in make_images(root / "images", 16)]
        bodies = [json.dumps({"inputs": {"image": [base64.b64encode(b).decode()]}}).encode() for b in images]
        for name in args.encoders.split(","):
            model_dir = make_model(name, root)
            from gendet.method.gendet.detector import Detector
            from gendet.serve.scorer import ImageScorer

            scorer = ImageScorer.from_detector(Detector.load(model_dir))
            scorer.score_bytes(images[:1])  # warm-up
            latencies = []
            started = time.perf_counter()
            for k in range(args.requests):
                t = time.perf_counter()
                scorer.score_bytes([images[k % len(images)]])
                latencies.append(time.perf_counter() - t)
            rows.append(row(name, "bare", 1, latencies, time.perf_counter() - started))
            print(rows[-1])
            del scorer
            for batch in (int(b) for b in args.batches.split(",")):
                proc, url = start_server(model_dir, batch, root / f"serve-{batch}.log")
                try:
                    level(url, bodies, 8, 16)  # warm-up
                    for clients in CLIENTS:
                        rows.append(row(name, f"serve-batch{batch}", clients, *level(url, bodies, clients, args.requests)))
                        print(rows[-1])
                finally:
                    stop_server(proc)
    print(f"wrote {write_results(rows, f'serve-{result_tag()}')}")


if __name__ == "__main__":
    main()
