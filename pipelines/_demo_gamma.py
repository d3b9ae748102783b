"""The demo's GAMMA step: a second method, with masks, on the demo's own world.

1. Manipulations of the training family's real images (``gendet.data.manipulation_shards``): splice
   with the training family's fakes as donors (same split) and inpaint by the training family's own
   generator (``gendet.zoo.manipulate.inpaint_maker``; never ``inpaint_f8``, an unseen test family).
   Every split is manipulated: train rows train, val rows calibrate, test rows are scored. Written
   to ``OUT/manipulated/`` beside the world's shards (not in them: GenDet's pooled store stays as it was).
2. ``extract --tokens`` of the world's shards (every family, reals and fakes; the zoo's inpaint_f8
   fakes carry mask.png) and of the manipulated shards, into the demo's store: a token variant
   beside the pooled one.
3. ``train-gamma`` on the same Ray, logging to the demo's MLflow store (``OUT/mlflow.db``) and
   registering the model as ``gendet-gamma`` (GenDet's is ``gendet``), scored on the test split.
4. An overlay grid of a few inpaint_f8 test fakes: the image, its true mask and the mask the
   registered model predicts (``gendet.serve.predict`` with a mask folder, at the image's size),
   saved for the report and logged to the GAMMA run.

Every call is the verb's own code (``pipelines.extract``, ``pipelines.train_gamma``, ``predict``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from typing import Any

from gendet import io as gio
from gendet.data.manipulations import GENERATED_KINDS

log = logging.getLogger(__name__)

MODEL_NAME = "gendet-gamma"       # its own registered model: refresh and fix promote `gendet`
# The generated kinds only: copy-move and perturb, which the spectrum tokens barely see, cost the
# whole-image families and inpaint_f8 (gamma +gen against gamma: experiments/results/gamma-ablation-cpu2.md).
KINDS = GENERATED_KINDS
# Five draws per real: more partial fakes to learn where from (with GammaConfig's grid convolutions,
# mask IoU 0.35 -> 0.50 against one draw: experiments/results/gamma-ablation-cpu2-x5.md; README).
PER_IMAGE = 5
MASKED_FAMILY = "inpaint_f8"       # the zoo family whose fakes carry their masks: the overlays' images
OVERLAYS = 4
TOKEN_GRID = "8x8"                 # spectrum:v2's 16x16 averaged 2x2 (measured against 16x16: README)
GAMMA_SETTINGS = {"width": 64, "epochs": 20}  # GammaConfig fields: experiments/gamma_ablation.py's


def manipulated_shards(shards: str, out: str, train_family: str, seed: int = 0) -> dict[str, Any]:
    """Write ``out``'s manipulated shards of ``train_family``'s reals unless its summary matches."""
    from gendet.data.manipulation_shards import ManipulateConfig, build_manipulated_shards
    from gendet.zoo.manipulate import inpaint_maker

    cfg = ManipulateConfig(kinds=KINDS, per_image=PER_IMAGE, seed=seed)
    inputs = gio.join(shards, f"{train_family}-*.tar")  # the maker's family is the inputs' (in their names)
    return build_manipulated_shards(inputs, out, cfg, donors=inputs, reuse=True,
                                    makers={"inpaint": inpaint_maker((train_family,), area=cfg.area)})


def extract_tokens(shard_dirs: list[str], features: str, encoder: str, grid: str) -> dict[str, dict]:
    from gendet.extract.config import ExtractConfig
    from gendet.extract.runner import format_summary
    from pipelines.extract import extract

    out = {}
    for shards in shard_dirs:
        out[shards] = extract(ExtractConfig(shards=shards, features=features, encoder=encoder, tokens=True,
                                            token_grid=grid, batch_size=256))
        log.info("    %s", format_summary(out[shards]).replace("\n", "\n    "))
    return out


def train_subsets(features: str, encoder: str, train_family: str) -> list[str]:
    """The training family and every manipulation subset with training rows in the token variant
    (a small world may draw no train image of some kind)."""
    from gendet.data.manipulation_shards import subset_name
    from gendet.features.contents import row_counts
    from gendet.features.tokens import resolve_token_variant

    counts = row_counts(resolve_token_variant(features, encoder=encoder).url)
    wanted = [train_family, *(subset_name(k, train_family if k in GENERATED_KINDS else "") for k in KINDS)]
    return [s for s in wanted if counts.get(("train", s))]


def train_gamma_job(features: str, out: str, subsets: list[str], encoder: str, num_workers: int, seed: int = 0):
    from gendet.method.gamma.config import GammaConfig
    from pipelines._common import Workers
    from pipelines.train_gamma import GammaTrainJob

    return GammaTrainJob(features=features, train_subsets=tuple(subsets), gamma=GammaConfig(**{**GAMMA_SETTINGS, "seed": seed}),
                         out=out,
                         encoder=encoder, eval_splits=("test",), workers=Workers(num_workers=num_workers, cpus_per_worker=1.0),
                         name=f"demo-gamma-{int(time.time())}", register=MODEL_NAME)


def masked_test_fakes(shards: str, limit: int) -> list[tuple[str, bytes, str, Any]]:
    """Up to ``limit`` (key, image bytes, extension, true mask) of MASKED_FAMILY's test fakes, of
    as many crop sizes as there are (the first of each size, then the next ones)."""
    import numpy as np

    from gendet.data.manipulations import MASK_MEMBER, decode_mask
    from gendet.data.shards import IMAGE_EXTS, usable_sample_parts

    found = []
    for url in sorted(gio.glob(shards, f"{MASKED_FAMILY}-*.tar")):
        for key, meta, image, parts in usable_sample_parts(url):
            if parts.get(MASK_MEMBER) and meta["label"] == "fake" and meta.get("split") == "test":
                ext = next(e for e in IMAGE_EXTS if e in parts)
                found.append((key, image, ext, decode_mask(parts[MASK_MEMBER]).astype(bool)))
    by_size: dict[int, list] = {}
    for row in found:
        by_size.setdefault(int(np.prod(row[3].shape)), []).append(row)
    picked, queues = [], [by_size[s] for s in sorted(by_size)]
    while len(picked) < limit and any(queues):
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return picked


def overlays(shards: str, out: str, model: str, run_id: str, tracking_uri: str) -> tuple[str, str]:
    """The overlay grid PNG of a few masked test fakes scored by ``model``, logged to ``run_id``;
    returns (png path, note). Nothing to show: ("", why)."""
    import numpy as np
    from mlflow import MlflowClient
    from PIL import Image

    from gendet.eval.overlays import overlay_grid
    from gendet.eval.plots import save_png
    from gendet.serve.predict import predict

    picked = masked_test_fakes(shards, OVERLAYS)
    if not picked:
        return "", f"no {MASKED_FAMILY} test fake with a mask.png in {shards}"
    folder = gio.join(out, "overlays")
    paths = []
    for key, image, ext, _ in picked:
        paths.append(gio.join(folder, "images", f"{key}.{ext}"))
        gio.write_bytes_atomic(paths[-1], image)
    rows = predict(model, paths, mask_dir=gio.join(folder, "masks"))
    images = [Image.open(io.BytesIO(image)).convert("RGB") for _, image, _, _ in picked]
    pred = [np.asarray(Image.open(gio.join(folder, "masks", os.path.basename(r["mask"])))) > 127 for r in rows]
    titles = [f"{MASKED_FAMILY} {im.size[0]} px, score {r['score']:.2f}" for im, r in zip(images, rows)]
    fig = overlay_grid(images, [m for *_, m in picked], pred, titles)
    png = save_png(fig, gio.join(out, "plots", "gamma_demo_overlays.png"))
    MlflowClient(tracking_uri).log_figure(run_id, fig, "plots/gamma_demo_overlays.png")
    note = (f"{len(picked)} `{MASKED_FAMILY}` test fakes (a family GAMMA never trained on: one blob of 15-50 % "
            f"regenerated), scored with `{model}` as `gendet predict --mask-dir` does: the image, its true mask "
            "(green) and the predicted one (red), at the image's size.")
    return png, note


def run_gamma(out: str, shards: str, features: str, train_family: str, encoder: str, num_workers: int,
              seed: int = 0) -> dict[str, Any]:
    """The whole step (module docstring); returns what the report shows."""
    t0 = time.perf_counter()
    manipulated = gio.join(out, "manipulated")
    manip = manipulated_shards(shards, manipulated, train_family, seed)
    log.info("    manipulations of %s's reals: %s", train_family, json.dumps(manip["counts"]))
    t_manip = time.perf_counter()
    extracted = extract_tokens([shards, manipulated], features, encoder, TOKEN_GRID)
    t_extract = time.perf_counter()
    subsets = train_subsets(features, encoder, train_family)
    gamma_out = gio.join(out, "gamma")
    from gendet.mlops.tracking import local_store, use_experiment

    # The demo's store: train-gamma's own default is under its --out. The experiment is made first, so
    # its artifacts go to OUT/mlartifacts as GenDet's do (not ./mlruns) even when GAMMA logs first.
    tracking_uri = local_store(out)[0]
    use_experiment(out)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        from pipelines import train_gamma

        summary = train_gamma.run(train_gamma_job(features, gamma_out, subsets, encoder, num_workers, seed))
        t_train = time.perf_counter()
        model = f"models:/{MODEL_NAME}/{summary['gate']['version']}"
        png, note = overlays(shards, out, model, summary["run_id"], tracking_uri)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    metrics = gio.read_json(gio.join(gamma_out, "metrics.json"))
    seconds = {"manipulate": t_manip - t0, "extract_tokens": t_extract - t_manip, "train_gamma": t_train - t_extract,
               "overlays": time.perf_counter() - t_train}
    return {"metrics": metrics, "summary": summary, "train_subsets": subsets, "manipulated": manip["counts"],
            "token_grid": TOKEN_GRID, "token_rows": list(extracted.values())[-1]["store_rows"],
            "overlays": png, "overlays_note": note, "seconds": {k: round(v, 1) for k, v in seconds.items()}}
