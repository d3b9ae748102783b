"""``gendet score`` images/s against a bare loop of the same encoder and heads, same images, one run.

    python -m benchmarks.score --encoders spectrum:v1,open_clip:ViT-B-32/none --images 512 --repeats 2

For each encoder a random-init ``gendet`` detector of its width is saved; the images are ``--images``
JPEGs of 256 px in one folder. Arms, alternated ``--repeats`` times so each sees the same load:

- ``bare``: what a user writes: for each batch of ``--batch-size`` files, read, decode
  (``gendet.data.decode``), the encoder's pixels, encoder and heads; no output written;
- ``local``: ``gendet score --local`` into a fresh OUT (plan, read, decode, score, Parquet and markers);
- ``ray``: ``gendet score`` on a local Ray started before the arm is timed (Ray Data read tasks and a
  scoring actor pool, ``--cpus-per-actor`` = the machine's cores: its torch threads), into a fresh
  OUT; ``ray_start_s`` (the first ``ray.init``) is reported apart.

``ratio`` = the arm's images/s over ``bare``'s in the same repeat (goal: >= 0.8 on CPU); one
untimed round first (imports, the first Ray Data job's set-up). With
``--device cuda`` the ``bare`` and ``local`` arms run on the GPU and Ray is never imported (the GPU
box has no Ray): the rows a lent GPU gives. Rows go to ``results/score-<machine>-pt<torch>.csv|md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.train import result_tag, write_results


def make_images(folder: Path, n: int, size: int = 256) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ramps = np.meshgrid(np.linspace(0, 255, size), np.linspace(0, 255, size))
        pixels = np.stack([*ramps, rng.integers(0, 256, (size, size))], -1) * 0.5 + rng.normal(0, 20, (size, size, 3))
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def make_model(encoder_name: str, folder: Path) -> str:
    from gendet.encoders.registry import load_encoder
    from gendet.method.gendet.detector import Detector, build_method_nets
    from gendet.method.gendet.networks import Arch

    torch.manual_seed(0)
    encoder = load_encoder(encoder_name)
    arch = Arch(feature_dim=encoder.dim, layers=1, heads=2)
    det = Detector(method="gendet", arch=arch, nets=build_method_nets("gendet", arch), encoder=encoder.name,
                   encoder_weights=encoder.weights_ref, preprocess_hash=encoder.preprocess_hash, threshold=0.5)
    return det.save(str(folder / f"model-{encoder_name.replace('/', '_').replace(':', '_')}"))


def bare(model_dir: str, paths: list[Path], batch_size: int, device: str) -> float:
    """Seconds for the bare loop over ``paths`` (model and encoder loaded before the clock)."""
    from gendet.data.decode import decode_image
    from gendet.method.gendet.detector import Detector
    from gendet.serve.scorer import ImageScorer

    scorer = ImageScorer.from_detector(Detector.load(model_dir), device=device)
    pre = scorer.encoder.preprocessor
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            pixels = np.stack([pre.pixels(decode_image(p.read_bytes())) for p in paths[start:start + batch_size]])
            features = scorer.encoder(pre.finish(torch.from_numpy(pixels).to(scorer.encoder.device))).float().cpu().numpy()
            scorer.detector.score(features)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def gendet_score(model_dir: str, folder: Path, out: Path, batch_size: int, *, local: bool, device: str) -> float:
    from pipelines.score import ScoreJob, run

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    # the scoring actor gets this machine's cores as its torch threads, as the bare loop has (extract's benchmark does the same)
    summary = run(ScoreJob(source=str(folder), out=str(out), model=model_dir, batch_size=batch_size, local=local,
                           device=device, rows_per_part=256, cpus_per_actor=float(os.cpu_count() or 1)))
    seconds = time.perf_counter() - started
    assert summary["rows_written"] == len(list(folder.iterdir())), summary
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", default="spectrum:v1")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    rows, ray_start = [], None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_images(root / "images", args.images)
        if not on_gpu:
            from pipelines._ray import init_ray

            started = time.perf_counter()
            init_ray()
            ray_start = round(time.perf_counter() - started, 2)
        for name in args.encoders.split(","):
            model_dir = make_model(name, root)
            arms = ["bare", "local"] + ([] if on_gpu else ["ray"])
            for repeat in range(-1, args.repeats):  # -1: warm-up (imports, first Ray Data job), not written
                seconds = {}
                for arm in arms:
                    if arm == "bare":
                        seconds[arm] = bare(model_dir, paths, args.batch_size, args.device)
                    else:
                        seconds[arm] = gendet_score(model_dir, root / "images", root / f"out-{arm}", args.batch_size,
                                                    local=arm == "local", device=args.device)
                for arm, s in seconds.items() if repeat >= 0 else ():
                    rate = len(paths) / s
                    rows.append({"encoder": name, "arm": arm, "repeat": repeat, "images": len(paths), "image_px": 256,
                                 "batch_size": args.batch_size, "seconds": round(s, 2), "images_per_s": round(rate, 1),
                                 "ratio": round(rate / (len(paths) / seconds["bare"]), 3), "ray_start_s": ray_start,
                                 "device": args.device, "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
                                 "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
                                 "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")})
                    print(rows[-1])
    path = write_results(rows, f"score-{result_tag(args.device)}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
