"""Extraction throughput: the Ray pipeline and the plain runner against a bare
``for batch in loader: encoder(batch)`` loop over the same images and encoder, in the same run.

CPU mode (default; needs Ray):   python -m benchmarks.extract --encoders spectrum:v1,open_clip:ViT-B-32/none
GPU mode (never imports Ray):    python -m benchmarks.extract --device cuda --precision fp16 \
                                     --encoders open_clip:ViT-L-14/none --batch-size 256
GPU mode rows: the bare model on ready tensors, decode+preprocess alone on the machine's cores, the
bare loop, and the library's extraction loop without Ray (``gendet.extract.run_local``).
CPU mode adds ``ray_one_shard`` (a job over one 64-image shard: the start-up every job pays,
actor start and planning) beside ``ray_pipeline`` (all images): a ratio is steady state plus start-up.
Shards hold ``--per-shard`` images (default 1000, as ``gendet import`` writes them).

Two bare loops: ``bare_loop`` is what a user would write (the float preprocess in DataLoader
workers); ``bare_loop_uint8`` ships uint8 pixels and finishes them on the encoder's device, as the
library does (``Preprocessor.pixels``/``finish``, bit-identical features). Every ratio is taken
against the faster of the two.

Tokens arm (``--tokens-arm``, never imports Ray): the plain runner on the same shards without and
with ``--tokens`` (native grid, and each of ``--token-grids``), the arms alternated ``--repeats``
times so a shared machine's load drifts over all alike (best run kept, every run listed), with the
bytes per row of the Parquet it wrote; rows go to ``extract-tokens-<machine>.csv`` / ``.md``.

Images are random-noise JPEGs (``--size`` px) written as shards in a temp folder. Each row is
one flat record (units in column names) appended to ``benchmarks/results/extract-<tag>.csv`` and
rendered to the ``.md`` beside it, with the load average at the start of the run.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.train import result_tag, write_results  # one results writer for every benchmark
from gendet.data.decode import decode_image
from gendet.data.shards import Sample, ShardWriter
from gendet.encoders.registry import load_encoder, load_preprocess
from gendet.extract.config import ExtractConfig
from gendet.extract.runner import run_local


def make_shards(folder: str, n_images: int, per_shard: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    with ShardWriter(folder, "bench", max_count=per_shard) as writer:
        for i in range(n_images):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
            images.append(buf.getvalue())
            writer.write(Sample(key=f"b{i:06d}", image=images[-1], image_ext="jpg", label="real", subset="bench"))
    return images


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, images: list[bytes], preprocess):
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(decode_image(self.images[i]))


def loader(images, preprocess, batch_size, workers):
    return torch.utils.data.DataLoader(_Decoded(images, preprocess), batch_size=batch_size, num_workers=workers,
                                       prefetch_factor=4 if workers else None)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_loop(encoder, images, args, uint8: bool = False) -> float:
    """images/s of ``for batch in loader: encoder(batch)``, encoder loaded and warmed up first.
    ``uint8``: workers return uint8 pixels, finished on the encoder's device (the library's hand-off)."""
    pre = encoder.preprocessor
    to_batch = pre.pixels if uint8 else pre

    def step(batch):
        encoder(pre.finish(batch.to(args.device, non_blocking=True)) if uint8 else batch)

    step(next(iter(loader(images[: args.batch_size], to_batch, args.batch_size, 0))))
    batches = loader(images, to_batch, args.batch_size, args.workers)
    sync(args.device)
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    sync(args.device)
    return len(images) / (time.perf_counter() - started)


def bare_model(encoder, args, steps: int = 20) -> float:
    x = torch.randn(args.batch_size, 3, *encoder.preprocess_cfg["size"], device=args.device)
    for _ in range(3):
        encoder(x)
    sync(args.device)
    started = time.perf_counter()
    for _ in range(steps):
        encoder(x)
    sync(args.device)
    return steps * args.batch_size / (time.perf_counter() - started)


def decode_only(name, images, args) -> float:
    """Decode + the library's uint8 preprocessing alone, on ``--workers`` processes: the CPU bound."""
    started = time.perf_counter()
    for _ in loader(images, load_preprocess(name).pixels, args.batch_size, args.workers):
        pass
    return len(images) / (time.perf_counter() - started)


def extraction(cfg: ExtractConfig, use_ray: bool) -> tuple[float, int]:
    """(images/s, images) of one extraction job, timed by the job itself (plan to summary)."""
    if use_ray:
        from pipelines.extract import extract

        summary = extract(cfg)
    else:
        summary = run_local(cfg)
    return summary["images"] / summary["seconds"], summary["images"]


def run_encoder(name: str, folder: str, images: list[bytes], args, tmp: str) -> list[dict]:
    n = len(images)
    encoder = load_encoder(name, device=args.device, precision=args.precision)
    rows = {"bare_loop": (bare_loop(encoder, images, args), n),
            "bare_loop_uint8": (bare_loop(encoder, images, args, uint8=True), n)}
    if args.device != "cpu":
        rows["bare_model"] = (bare_model(encoder, args), args.batch_size * 20)
        rows["decode_only"] = (decode_only(name, images, args), n)
    del encoder
    base = dict(shards=folder, encoder=name, batch_size=args.batch_size, precision=args.precision)
    rows["runner_no_ray"] = extraction(ExtractConfig(**base, features=f"{tmp}/local-{len(rows)}", device=args.device,
                                                     decode_workers=args.workers), use_ray=False)
    if args.device == "cpu" and not args.no_ray:
        ray_base = dict(base, cpus_per_actor=args.actor_cpus, concurrency=1, read_tasks=args.read_tasks)
        one_shard = {**ray_base, "shards": f"{tmp}/small/bench-000000.tar"}
        # Warm-up (not timed): Ray's start and the first import of torch in its workers.
        extraction(ExtractConfig(**one_shard, features=f"{tmp}/warm"), use_ray=True)
        # One small shard: what every job pays before its first image (actor start, planning).
        rows["ray_one_shard"] = extraction(ExtractConfig(**one_shard, features=f"{tmp}/one"), use_ray=True)
        rows["ray_pipeline"] = extraction(ExtractConfig(**ray_base, features=f"{tmp}/ray"), use_ray=True)
    best_bare = max(rows["bare_loop"][0], rows["bare_loop_uint8"][0])  # ratios against the faster bare loop
    return [{"mode": mode, "images_per_s": round(ips, 2), "ratio_to_bare_loop": round(ips / best_bare, 3),
             "job_images": count, "job_s": round(count / ips, 2), "encoder": name} for mode, (ips, count) in rows.items()]


def parquet_bytes_per_row(summary: dict) -> float:
    """Bytes of a run's feature Parquet files (quarantine tables aside) per stored row."""
    folder = Path(summary["output"])
    size = sum(p.stat().st_size for p in folder.glob("*.parquet") if not p.name.endswith(".quarantine.parquet"))
    return size / max(1, summary["store_rows"])


def coarser(grid: str, native: tuple[int, int]) -> bool:
    rows, cols = (int(x) for x in grid.lower().split("x"))
    return rows <= native[0] and cols <= native[1] and (rows, cols) != tuple(native)


def run_token_arms(name: str, folder: str, args, tmp: str) -> list[dict]:
    """The plain runner without and with ``--tokens`` (and each ``--token-grids``) on one encoder,
    alternated ``--repeats`` times; one row per arm: best images/s, all runs, bytes per row."""
    from gendet.extract.tokens import native_token_grid

    native, dim = native_token_grid(name)
    arms = {"pooled": {}, "tokens": {"tokens": True},
            **{f"tokens_{g}": {"tokens": True, "token_grid": g} for g in args.token_grids.split(",")
               if g and coarser(g, native)}}
    base = dict(shards=folder, encoder=name, batch_size=args.batch_size, precision=args.precision, device=args.device,
                decode_workers=args.workers)
    slug = name.replace(":", "-").replace("/", "-")
    run_local(ExtractConfig(**{**base, "shards": f"{tmp}/small/bench-000000.tar"}, tokens=True, features=f"{tmp}/warm-{slug}"))
    runs: dict[str, list[float]] = {arm: [] for arm in arms}
    sizes: dict[str, float] = {}
    for repeat in range(args.repeats):
        for arm, extra in arms.items():
            summary = run_local(ExtractConfig(**base, **extra, features=f"{tmp}/{slug}-{arm}-{repeat}"))
            runs[arm].append(summary["images"] / summary["seconds"])
            sizes[arm] = parquet_bytes_per_row(summary)
    pooled = max(runs["pooled"])
    rows = []
    for arm, extra in arms.items():
        grid = extra.get("token_grid") or (f"{native[0]}x{native[1]}" if extra else "")
        rows.append({"mode": f"runner_no_ray_{arm}", "encoder": name, "token_grid": grid, "token_dim": dim if extra else 0,
                     "images_per_s": round(max(runs[arm]), 2), "ratio_to_pooled": round(max(runs[arm]) / pooled, 3),
                     "runs_images_per_s": " ".join(f"{r:.1f}" for r in runs[arm]),
                     "bytes_per_row": round(sizes[arm], 1), "bytes_ratio_to_pooled": round(sizes[arm] / sizes["pooled"], 2),
                     "job_images": args.images})
    return rows


def environment(args) -> dict:
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else ""
    return {"device": args.device, "gpu": gpu, "precision": args.precision, "batch_size": args.batch_size,
            "image_px": args.size, "images_per_shard": args.per_shard, "decode_workers": args.workers,
            "ray_read_tasks": args.read_tasks or "", "ray_actor_cpus": args.actor_cpus, "cpu_cores": os.cpu_count(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "torch": torch.__version__,
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="spectrum:v1,open_clip:ViT-B-32/none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--per-shard", type=int, default=1000, help="images per shard (default: gendet import's)")
    parser.add_argument("--size", type=int, default=256, help="image side in px")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="decode workers")
    parser.add_argument("--actor-cpus", type=float, default=float(os.cpu_count() or 1), help="torch threads of the Ray "
                                                                                             "encoder actor")
    parser.add_argument("--read-tasks", type=int, default=None, help="Ray decode tasks at once (default: the pipeline's)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray row (implied by --device cuda)")
    parser.add_argument("--tag", default="", help="result file tag (default: device, precision, torch version)")
    parser.add_argument("--tokens-arm", action="store_true", help="compare the plain runner without and with --tokens "
                                                                  "(no Ray; writes extract-tokens-<machine>)")
    parser.add_argument("--token-grids", default="", help="with --tokens-arm: coarser grids to run too, e.g. 8x8 "
                                                          "(a grid not coarser than an encoder's own is skipped for it)")
    parser.add_argument("--repeats", type=int, default=2, help="with --tokens-arm: runs of each arm, alternated")
    parser.add_argument("--note", default="", help="free text kept in every row (the machine's sharing, the purpose)")
    args = parser.parse_args(argv)
    env = {**environment(args), **({"note": args.note} if args.note else {})}
    rows = []
    with tempfile.TemporaryDirectory(prefix="gendet-bench-") as tmp:
        images = make_shards(f"{tmp}/shards", args.images, args.per_shard, args.size)
        make_shards(f"{tmp}/small", min(64, args.images), 64, args.size)
        if args.tokens_arm:
            for name in args.encoders.split(","):
                rows += [{**row, **env} for row in run_token_arms(name, f"{tmp}/shards", args, tmp)]
                print(*(f"{r['encoder']:14s} {r['mode']:28s} {r['images_per_s']:8.1f} img/s  x{r['ratio_to_pooled']}  "
                        f"{r['bytes_per_row']:9.0f} B/row" for r in rows if r["encoder"] == name), sep="\n", flush=True)
            print("wrote", write_results(rows, args.tag or f"extract-tokens-{result_tag(args.device).rsplit('-pt', 1)[0]}"))
            return 0
        for name in args.encoders.split(","):
            rows += [{**row, **env} for row in run_encoder(name, f"{tmp}/shards", images, args, tmp)]
            print(*(f"{r['encoder']:32s} {r['mode']:14s} {r['images_per_s']:9.1f} img/s  x{r['ratio_to_bare_loop']}"
                    for r in rows if r["encoder"] == name), sep="\n", flush=True)
    machine, torch_version = result_tag(args.device).rsplit("-pt", 1)
    tag = args.tag or f"{machine}-{args.precision}-pt{torch_version}"
    print("wrote", write_results(rows, f"extract-{tag}"))
    assert "ray" not in sys.modules or args.device == "cpu", "GPU mode must not import Ray"
    return 0


if __name__ == "__main__":
    sys.exit(main())
