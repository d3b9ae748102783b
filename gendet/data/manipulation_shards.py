"""The manipulation step: the real images of any shards -> shards of manipulated partial fakes,
each with its pixel mask, in the sample format of every other source (CONTRACTS.md).

For every real sample of the input shards (GenImage, UFD, folder imports, the zoo), ``per_image``
manipulations are written, each of a kind drawn from ``kinds``; ``splice`` takes its donors from
the **fake** samples of the same split (of the input shards, or of ``donors``), so no test-split
generated pixel lands in a training image. One output shard set per input shard,
``OUT/manip-<input stem>-NNNNNN.tar``, so a rerun replaces rather than duplicates. A sample:

* ``<key>.png`` (lossless: the mask's edge survives) and ``<key>.mask.png`` (8-bit greyscale,
  255 = manipulated, same size as the image);
* ``<key>.json``: ``label`` ``fake``, ``subset`` the kind, with the generator after a dash when one
  made the region (``splice-<donor subset>``, ``inpaint-<family>``), ``content_id``, ``split``
  and ``source`` of the real image, and ``manipulation`` (kind), ``fake_fraction`` (the mask's
  mean), ``generated_fraction`` (pixels a generator made), ``family`` (the donor's subset or the
  zoo family; empty for copy_move and perturb), ``original_key``, ``donor_key`` and
  ``manipulation_detail`` (what was drawn).

Deterministic: each image's draws come from a hash of (seed, input stem, key, copy), and the donor
pool is a seeded reservoir over the inputs in sorted order, so the same inputs give the same bytes.
Extra kinds (``inpaint``) are passed in as ``makers`` by the layer that owns the generator.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from gendet import GendetError
from gendet import io as gio
from gendet.config import check, to_dict
from gendet.data.decode import BadSample, decode_image
from gendet.data.manipulations import (
    KINDS,
    MASK_AREA,
    MASK_MEMBER,
    Manipulated,
    decode_mask,
    encode_mask,
    global_perturbation,
    manipulate,
)
from gendet.data.shards import (
    Sample,
    ShardWriter,
    group_samples,
    iter_tar_members,
    list_shards,
    sanitize_key,
    shard_stem,
    usable_samples,
)

Maker = Callable[[np.ndarray, np.random.Generator], Manipulated]
"""An extra kind: (real image uint8 [H, W, 3], rng) -> Manipulated, ``detail['family']`` naming
the generator (``gendet.zoo.manipulate.inpaint_maker``)."""


SUMMARY = "manipulated_summary.json"  # beside the shards: what made them (build_manipulated_shards)


@dataclass(frozen=True, kw_only=True, slots=True)
class ManipulateConfig:
    """What ``build_manipulated_shards`` writes."""

    kinds: tuple[str, ...] = KINDS
    """Kinds drawn per image, uniformly: copy_move, splice, perturb (+ the makers' kinds)."""
    per_image: int = 1
    """Manipulated copies written per real image (each its own draw)."""
    area: tuple[float, float] = MASK_AREA
    """Range of the manipulated region's share of the image (one blob: rectangle or ellipse)."""
    feather: float = 0.0
    """Splice edge blending, Gaussian sigma in pixels (0 = a hard edge)."""
    global_perturb: float = 0.0
    """Probability of perturbing the whole image after compositing (JPEG, blur or resample)."""
    donor_pool: int = 256
    """Generated images kept per split as splice donors (a seeded reservoir)."""
    include_reals: bool = False
    """Also write each real image unchanged (label real, an all-zero mask), so the output's subsets
    hold both sides; off by default, since the input shards already hold the reals."""
    max_reals: int = 0
    """At most this many real images per input shard (0 = all)."""
    seed: int = 0
    shard_size: int = 1000

    def __post_init__(self) -> None:
        check(len(self.kinds) >= 1, "kinds: give at least one manipulation kind")
        check(self.per_image >= 1, f"per_image {self.per_image} must be >= 1")
        check(len(self.area) == 2 and 0 < self.area[0] <= self.area[1] <= 0.9,
              f"area {self.area}: need 0 < low <= high <= 0.9")
        check(self.feather >= 0, f"feather {self.feather} must be >= 0")
        check(0.0 <= self.global_perturb <= 1.0, f"global_perturb {self.global_perturb} must be in [0, 1]")
        check(self.donor_pool >= 1, f"donor_pool {self.donor_pool} must be >= 1")
        check(self.max_reals >= 0 and self.shard_size >= 1, "max_reals must be >= 0 and shard_size >= 1")


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def _samples(url: str) -> Iterator[tuple[str, dict[str, Any], bytes]]:
    for key, meta, image, _ in usable_samples(url):
        yield key, meta, image


def donor_pools(urls: list[str], size: int, seed: int) -> dict[str, list[tuple[str, str, bytes]]]:
    """Per split, up to ``size`` fake samples (key, subset, image bytes) by reservoir sampling."""
    rng = np.random.default_rng(_seed(seed, "donors"))
    pools: dict[str, list[tuple[str, str, bytes]]] = {}
    seen: dict[str, int] = {}
    for url in urls:
        for key, meta, image in _samples(url):
            if meta["label"] != "fake":
                continue
            split = meta.get("split") or ""
            pool, n = pools.setdefault(split, []), seen.get(split, 0)
            seen[split] = n + 1
            if len(pool) < size:
                pool.append((key, meta["subset"], image))
            elif (j := int(rng.integers(n + 1))) < size:
                pool[j] = (key, meta["subset"], image)
    return pools


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def subset_name(kind: str, family: str = "") -> str:
    """A manipulated sample's subset: the kind, with the generator after a dash when one made the
    region (``splice-<donor subset>``, ``inpaint-<family>``)."""
    return f"{kind}-{family}" if family else kind


def build_manipulated_shards(shards: str, out_url: str, cfg: ManipulateConfig, *, donors: str | None = None,
                             makers: dict[str, Maker] | None = None, reuse: bool = False) -> dict[str, Any]:
    """Write the manipulated shards of ``shards``' real images under ``out_url``; returns (and writes,
    as ``SUMMARY``) a summary: counts per kind, shards written, and the stamp of what made them (the
    config, the kinds ``makers`` add, the input and donor shards by name and size). ``donors``: other
    shards whose fakes are the splice donors. With ``reuse``, a summary of the same stamp is returned
    and nothing is written (as ``build_zoo_shards`` does)."""
    makers = dict(makers or {})
    unknown = sorted(set(cfg.kinds) - set(KINDS) - set(makers))
    if unknown:
        raise GendetError(f"manipulation kinds {unknown} unknown; choose from {sorted({*KINDS, *makers})}")
    urls = list_shards(shards)
    stamp = json.loads(json.dumps({"config": to_dict(cfg), "makers": sorted(makers), "inputs": _sizes(urls),
                                   "donors": _sizes(list_shards(donors)) if donors else None}))
    summary_url = gio.join(out_url, SUMMARY)
    if reuse and gio.exists(summary_url) and (old := gio.read_json(summary_url)).get("stamp") == stamp:
        return old
    pools = donor_pools(list_shards(donors) if donors else urls, cfg.donor_pool, cfg.seed) if "splice" in cfg.kinds else {}
    counts: dict[str, int] = {"real": 0, "fake": 0, "skipped": 0, **{k: 0 for k in cfg.kinds}}
    written: list[str] = []
    for url in urls:
        stem = shard_stem(url)
        with ShardWriter(out_url, prefix=f"manip-{stem}", max_count=cfg.shard_size) as writer:
            taken = 0
            for key, meta, data in _samples(url):
                if meta["label"] != "real" or (cfg.max_reals and taken >= cfg.max_reals):
                    continue
                taken += 1
                try:
                    image = np.asarray(decode_image(data))
                except BadSample:
                    counts["skipped"] += 1
                    continue
                if min(image.shape[:2]) < 8:
                    counts["skipped"] += 1
                    continue
                base = {"content_id": meta.get("content_id") or key, "split": meta.get("split") or "",
                        "source": meta.get("source") or ""}
                if cfg.include_reals:
                    writer.write(Sample(key=sanitize_key(f"{key}-real"), image=encode_png(image), image_ext="png",
                                        label="real", subset=meta["subset"], **base,
                                        extra={"manipulation": "", "fake_fraction": 0.0, "generated_fraction": 0.0,
                                               "original_key": key},
                                        files={MASK_MEMBER: encode_mask(np.zeros(image.shape[:2], np.uint8))}))
                    counts["real"] += 1
                for copy in range(cfg.per_image):
                    sample = _manipulated_sample(key, image, base, cfg, pools, makers, _seed(cfg.seed, stem, key, copy),
                                                 copy)
                    if sample is None:
                        counts["skipped"] += 1
                        continue
                    writer.write(sample)
                    counts["fake"] += 1
                    counts[sample.extra["manipulation"]] += 1
        written += writer.written
    if not counts["fake"] and not counts["real"]:
        raise GendetError(f"{shards}: no real images to manipulate in {len(urls)} shard(s); the manipulations start from "
                          "samples labelled real")
    summary = {"counts": counts, "shards": [gio.basename(u) for u in written], "inputs": len(urls), "stamp": stamp}
    gio.write_json_atomic(summary_url, gio.redacted(summary))
    return summary


def _sizes(urls: list[str]) -> dict[str, int]:
    return {gio.basename(u): f["size"] for u, f in gio.fingerprints(urls).items()}


def _manipulated_sample(key: str, image: np.ndarray, base: dict[str, str], cfg: ManipulateConfig,
                        pools: dict[str, list[tuple[str, str, bytes]]], makers: dict[str, Maker], seed: int,
                        copy: int) -> Sample | None:
    rng = np.random.default_rng(seed)
    kind = cfg.kinds[int(rng.integers(len(cfg.kinds)))]
    donor_key, family = "", ""
    try:
        if kind in makers:
            result = makers[kind](image, rng)
            family = str(result.detail.get("family", ""))
        elif kind == "splice":
            pool = pools.get(base["split"]) or []
            if not pool:
                return None  # no generated image of this split to take a region from
            donor_key, family, donor_bytes = pool[int(rng.integers(len(pool)))]
            donor = np.asarray(decode_image(donor_bytes))
            result = manipulate(image, kind, rng, donor=donor, area=cfg.area, feather=cfg.feather)
        else:
            result = manipulate(image, kind, rng, area=cfg.area)
    except (BadSample, ValueError):
        return None
    if cfg.global_perturb and rng.random() < cfg.global_perturb:
        result = global_perturbation(result, rng)
    extra = {"manipulation": kind, "fake_fraction": result.fraction, "generated_fraction": result.generated_fraction,
             "family": family, "original_key": key, "donor_key": donor_key, "manipulation_detail": result.detail}
    return Sample(key=sanitize_key(f"{key}-{kind}-{copy}"), image=encode_png(result.image), image_ext="png", label="fake",
                  subset=subset_name(result.kind, family), **base, extra=extra, files={MASK_MEMBER: encode_mask(result.mask)})


def read_masks(url: str) -> dict[str, np.ndarray]:
    """key -> mask (uint8 [H, W] {0, 1}) of every sample of one shard that has a ``mask.png``."""
    out = {}
    for key, parts in group_samples(iter_tar_members(gio.read_bytes(url))):
        if parts.get(MASK_MEMBER):
            out[key] = decode_mask(parts[MASK_MEMBER])
    return out
