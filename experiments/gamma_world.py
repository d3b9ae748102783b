"""The world of ``experiments.gamma_ablation``: the demo's zoo shards (every family), manipulations of the
training family's train/val reals, and the arrays every arm reads (pooled features, tokens, head targets,
canvas masks of the partial fakes), encoded in-process once and cached under ``--cache``."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import torch

from gendet.data.decode import BadSample, decode_image
from gendet.data.manipulation_shards import ManipulateConfig, build_manipulated_shards
from gendet.data.manipulations import GENERATED_KINDS, MASK_MEMBER, decode_mask
from gendet.data.shards import list_shards, usable_sample_parts
from gendet.encoders.registry import load_encoder
from gendet.encoders.tokens import TOKEN_DIM, geometry_mask
from gendet.zoo.config import parse_families
from pipelines import demo

TRAIN_FAMILY = demo.TRAIN_FAMILY
KINDS = ("splice", "copy_move", "perturb", "inpaint")


def manip_folder(cache: str, per_image: int) -> str:
    return os.path.join(cache, "manip" if per_image == 1 else f"manip-x{per_image}")


def build_world(cache: str, per_image: int = 1) -> tuple[dict, dict]:
    zoo = demo.zoo_shards(os.path.join(cache, "shards"), list(parse_families("all")), False)
    from gendet.zoo.manipulate import inpaint_maker  # the zoo's generators

    train_shards = os.path.join(cache, "shards", f"{TRAIN_FAMILY}-*.tar")
    cfg = ManipulateConfig(kinds=KINDS, per_image=per_image, seed=0)
    summary = build_manipulated_shards(train_shards, manip_folder(cache, per_image), cfg, donors=train_shards, reuse=True,
                                       makers={"inpaint": inpaint_maker((TRAIN_FAMILY,), area=cfg.area)})
    return zoo, summary


def _wanted(meta: dict, manipulated: bool, extra_reals: set[str], key: str) -> bool:
    """Rows any arm reads: the training family (every split), the manipulations (train, val), every
    family's val reals (calibration) and test rows, and the drawn extra train reals."""
    split, family, real = meta.get("split"), meta["subset"], meta["label"] == "real"
    if manipulated:
        return split in ("train", "val")
    return family == TRAIN_FAMILY or split == "test" or (split == "val" and real) or (
        split == "train" and real and f"{family}/{key}" in extra_reals)


def _samples(urls: list[str]):
    for url in urls:
        for key, meta, image, parts in usable_sample_parts(url):
            mask = parts.get(MASK_MEMBER)
            yield key, meta, image, decode_mask(mask) if mask else None


def _extra_reals(cache: str, count: int) -> set[str]:
    import pyarrow.parquet as pq

    index = pq.read_table(os.path.join(cache, "shards", "zoo_index.parquet"), columns=["key", "family", "label", "split"])
    rows = index.to_pandas()
    rows = rows[(rows.family != TRAIN_FAMILY) & (rows.label == "real") & (rows.split == "train")].sort_values(["family", "key"])
    picked = rows.sample(n=min(count, len(rows)), random_state=0)
    return {f"{f}/{k}" for f, k in zip(picked.family, picked.key)}


def encode_world(cache: str, zoo: dict, manip: dict, per_image: int = 1, batch: int = 64) -> dict[str, np.ndarray]:
    """Pooled features, tokens, head targets and canvas masks of every row an arm reads (cached)."""
    shape = [zoo["config"], zoo["families"], manip["counts"], demo.ENCODER, TOKEN_DIM]
    stamp = hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:10]
    path = os.path.join(cache, f"encoded-{stamp}.npz")
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    encoder = load_encoder(demo.ENCODER)
    extra = _extra_reals(cache, int(zoo["families"][TRAIN_FAMILY]["fake"]))
    meta_cols = {k: [] for k in ("key", "subset", "family", "kind", "split")}
    y, pooled, tokens, tmask, gen, canvas, canvas_row = [], [], [], [], [], [], []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            f, t = encoder.features_and_tokens(torch.stack(pending))
            pooled.append(f.float().numpy())
            tokens.append(t.to(torch.float16).numpy())
            pending.clear()

    t0 = time.perf_counter()
    zoo_urls = list_shards(os.path.join(cache, "shards", "*.tar"))
    manip_urls = list_shards(os.path.join(manip_folder(cache, per_image), "*.tar"))
    for manipulated, urls in ((False, zoo_urls), (True, manip_urls)):
        for key, meta, image, mask in _samples(urls):
            if not _wanted(meta, manipulated, extra, key):
                continue
            try:
                pending.append(encoder.preprocess(decode_image(image)))
            except BadSample:
                continue
            fake = meta["label"] == "fake"
            kind = meta.get("manipulation") or ("whole" if fake else "real")
            family = meta.get("family", "") if manipulated else meta["subset"]
            for col, value in (("key", key), ("subset", meta["subset"]), ("family", family), ("kind", kind),
                               ("split", meta.get("split", ""))):
                meta_cols[col].append(value)
            y.append(int(fake))
            n = encoder.token_grid[0] * encoder.token_grid[1]
            if mask is not None and mask.any() and not mask.all():
                tm = encoder.token_mask(mask)
                canvas.append(geometry_mask(encoder.preprocessor, mask) > 0.5)
                canvas_row.append(len(y) - 1)
            else:
                tm = np.full(n, float(fake), np.float32)
            tmask.append(tm)
            generated = kind == "whole" or kind in GENERATED_KINDS
            gen.append(tm if generated else np.zeros(n, np.float32))
            if len(pending) == batch:
                flush()
    flush()
    out = {k: np.array(v) for k, v in meta_cols.items()}
    out |= {"y": np.array(y, np.int64), "pooled": np.concatenate(pooled), "tokens": np.concatenate(tokens),
            "token_mask": np.stack(tmask).astype(np.float32), "generated": np.stack(gen).astype(np.float32),
            "canvas": np.stack(canvas), "canvas_row": np.array(canvas_row, np.int64),
            "grid": np.array(encoder.token_grid), "encode_seconds": np.array(time.perf_counter() - t0)}
    np.savez(path, **out)
    return out
