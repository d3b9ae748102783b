"""Peak memory of the served model on one request of large images: today's path against the old one.

    python -m benchmarks.serve_memory --images 8 --side 6000

A request of ``--images`` PNGs of ``--side``² pixels (smooth gradients: a few hundred KB each, as a
scan or a screenshot would be, ~1 MB for the request) goes through the served model's ``predict``
(``gendet.serve.pyfunc.GendetModel``, loaded with ``mlflow.pyfunc.load_model``), each mode in a
fresh process, alternating, ``--reps`` times:

- ``one_at_a_time`` (today): each image is decoded and reduced to the encoder's input before the
  next is decoded (``ImageScorer.score_bytes``);
- ``decode_all_first`` (before issue 15): every image decoded at full resolution, then all
  preprocessed (``ImageScorer.score_images`` on the decoded list).

``peak_mb`` is the process's peak RSS minus its RSS after loading the model (``VmHWM``), so
Python, torch and the model are left out. ``bound_mb`` is what one decoded image weighs (RGB,
3 bytes a pixel) plus the encoder inputs: the stated bound for ``one_at_a_time``. Rows are appended
to ``benchmarks/results/serve-memory-<machine>-pt<torch>.csv``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_request(n: int, side: int) -> list[str]:
    out = []
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for i in range(n):
        rgb = np.stack([np.add.outer(ramp, ramp * (i + 1) / n) / 2, np.tile(ramp, (side, 1)).T,
                        np.full((side, side), 20.0 * i)], axis=-1)
        buf = io.BytesIO()
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, "PNG", optimize=False)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc (``ru_maxrss`` would carry the
    parent's peak over the fork and exec)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def child(mode: str, model: str, request: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import mlflow
    import pandas as pd

    from gendet.serve.scorer import decode_image

    images = json.loads(Path(request).read_text())
    loaded = mlflow.pyfunc.load_model(model, model_config={"max_pixels": 10**9})
    inner = loaded.unwrap_python_model()
    frame = pd.DataFrame({"image": images})
    base = status_mb("VmRSS")
    if mode == "one_at_a_time":
        out = loaded.predict(frame)
        scores = list(out["score"])
    else:
        decoded = [decode_image(base64.b64decode(b)) for b in images]
        scores = list(inner.scorer.score_images(decoded))
    peak = status_mb("VmHWM")
    print(json.dumps({"mode": mode, "peak_mb": round(peak - base, 1), "scored": sum(s is not None for s in scores)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "MODEL", "REQUEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    from benchmarks.predict import make_model
    from benchmarks.train import result_tag, write_results

    with tempfile.TemporaryDirectory() as tmp:
        model = make_model("spectrum:v1", Path(tmp))
        request = Path(tmp, "request.json")
        images = make_request(args.images, args.side)
        request.write_text(json.dumps(images))
        request_kb = sum(len(b) * 3 // 4 for b in images) / 1024
        results: dict[str, list[dict]] = {"one_at_a_time": [], "decode_all_first": []}
        for _ in range(args.reps):
            for mode in results:
                # this file by its path: the child imports nothing of benchmarks/ (child())
                run = subprocess.run([sys.executable, __file__, "--child", mode, model, str(request)],
                                     capture_output=True, text=True, check=True)
                results[mode].append(json.loads(run.stdout.strip().splitlines()[-1]))
    bound = 3 * args.side**2 / 2**20 + args.images * 3 * 128 * 128 / 2**20
    rows = [{"mode": mode, "images": args.images, "side": args.side, "request_kb": round(request_kb),
             "peak_mb": statistics.median(r["peak_mb"] for r in runs), "bound_mb": round(bound, 1),
             "scored": runs[0]["scored"], "reps": args.reps, "machine": platform.machine(), "cpus": os.cpu_count(),
             "load_avg": round(os.getloadavg()[0], 2)} for mode, runs in results.items()]
    rows[1]["ratio_to_one_at_a_time"] = round(rows[1]["peak_mb"] / max(rows[0]["peak_mb"], 1e-9), 2)
    path = write_results(rows, f"serve-memory-{result_tag()}")
    for r in rows:
        print(r)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
