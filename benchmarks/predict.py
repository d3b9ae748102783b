"""``predict`` latency for one image, end to end, against the encoder alone on the same image.

    python -m benchmarks.predict --encoders spectrum:v1,open_clip:ViT-B-32/none --reps 30

For each encoder a random-init ``gendet`` detector of the encoder's width is saved as a local MLflow
model and loaded once through ``gendet.serve.predict.load_scorer`` (the path ``--model`` takes). Then,
alternating so both see the same machine load, each repetition times:

- ``predict_ms``: ``gendet.serve.predict.predict(scorer, [path])``: read the file, decode, preprocess,
  encode, score with the heads, build the JSON row;
- ``encoder_alone_ms``: the least work that gives the features: read, decode, preprocess, encode
  (same encoder object, same threads);
- ``encoder_forward_ms``: the encoder's forward on a ready tensor, for information.

``overhead_ratio`` = median predict / median encoder-alone (target <= 1.2). ``cli_process_s`` is
one ``gendet predict`` process, start to exit (Python start, imports, MLflow model load, one
image), for information. Warm-up repetitions are excluded. Rows are appended to
``benchmarks/results/predict-<machine>-pt<torch>.csv`` with the load average at the start.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image

from benchmarks.train import result_tag, write_results  # one results writer for every benchmark
from gendet.encoders.registry import load_encoder
from gendet.method.gendet.detector import Detector, build_method_nets
from gendet.method.gendet.networks import Arch
from gendet.serve import predict, pyfunc
from gendet.serve import scorer as scorer_mod


def make_model(encoder_name: str, folder: Path) -> str:
    """A random-init gendet detector for ``encoder_name``, saved as a local MLflow model."""
    torch.manual_seed(0)
    encoder = load_encoder(encoder_name)
    arch = Arch(feature_dim=encoder.dim)
    detector = Detector(method="gendet", arch=arch, nets=build_method_nets("gendet", arch),
                        encoder=encoder.name, encoder_weights=encoder.weights_ref,
                        preprocess_hash=encoder.preprocess_hash, threshold=0.5)
    return pyfunc.save_detector_model(detector, str(folder / "model"))


def make_image(folder: Path, size: int) -> str:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    path = folder / "image.jpg"
    path.write_bytes(buf.getvalue())
    return str(path)


def encoder_alone(scorer: predict.ImageScorer, path: str) -> np.ndarray:
    image = scorer_mod.decode_image(Path(path).read_bytes())
    return scorer.encoder(torch.stack([scorer.encoder.preprocess(image)])).numpy()


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def bench(encoder_name: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, image = make_model(encoder_name, folder), make_image(folder, args.size)
        start = time.perf_counter()
        scorer = predict.load_scorer(model)
        load_s = time.perf_counter() - start
        tensor = torch.stack([scorer.encoder.preprocess(scorer_mod.decode_image(Path(image).read_bytes()))])
        times: dict[str, list[float]] = {"predict": [], "alone": [], "forward": []}
        for rep in range(args.warmup + args.reps):
            sample = {"predict": timed_ms(lambda: predict.predict(scorer, [image])),
                      "alone": timed_ms(lambda: encoder_alone(scorer, image)),
                      "forward": timed_ms(lambda: scorer.encoder(tensor))}
            if rep >= args.warmup:
                for key, value in sample.items():
                    times[key].append(value)
        start = time.perf_counter()
        subprocess.run(["gendet", "predict", "--model", model, image], check=True, capture_output=True)
        cli_s = time.perf_counter() - start
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"encoder": encoder_name, "image_px": args.size, "batch_size": 1, "reps": args.reps,
            "predict_ms_median": round(med["predict"], 2),
            "predict_ms_p90": round(float(np.percentile(times["predict"], 90)), 2),
            "encoder_alone_ms_median": round(med["alone"], 2),
            "encoder_forward_ms_median": round(med["forward"], 2),
            "overhead_ratio": round(med["predict"] / med["alone"], 3),
            "model_load_s": round(load_s, 2), "cli_process_s": round(cli_s, 2)}


def conditions(args: argparse.Namespace) -> dict:
    return {"device": "cpu", "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__, "mlflow": mlflow.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="spectrum:v1,open_clip:ViT-B-32/none")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.encoders.split(","):
        at_start = conditions(args)
        row = {**bench(name, args), **at_start}
        print(row, flush=True)
        rows.append(row)
    print("wrote", write_results(rows, f"predict-{result_tag()}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
