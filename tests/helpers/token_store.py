"""A small token variant (CONTRACTS.md, "Token variants") written straight with pyarrow, for GAMMA's
training and evaluation tests that must not depend on extraction.

Tokens are Gaussian noise; a generated token adds ``SHIFT`` x a direction: whole-image fakes of
``sd`` everywhere (``token_mask`` 1, no mask.png), partial fakes of ``inpaint-inpaint_f8`` inside a
random rectangle of tokens (``has_mask``, ``manipulation`` inpaint, ``family`` inpaint_f8), reals
nowhere. So the classifier, the manipulation head and the source head all have something to learn.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gendet import io as gio
from gendet.features.store import MANIFEST, feature_schema, variant_key, variant_name
from helpers.synthetic_store import write_done_marker

ENCODER = "synthetic-tokens:v1"
PHASH = hashlib.sha256(b"synthetic-tokens").hexdigest()
SHIFT = 1.5


def token_rows(n: int, subset: str, split: str, grid: tuple[int, int], dim: int, rng: np.random.Generator,
               directions: dict[str, np.ndarray]) -> list[dict]:
    t = grid[0] * grid[1]
    out = []
    for i in range(n):
        label = "fake" if i % 2 else "real"
        tokens = rng.normal(size=(t, dim)).astype(np.float32)
        mask = np.zeros(grid, np.float32)
        extra = {"has_mask": False, "manipulation": "", "family": "", "generated_fraction": 0.0}
        if label == "fake" and subset.startswith("inpaint"):
            top, left = int(rng.integers(0, grid[0] // 2)), int(rng.integers(0, grid[1] // 2))
            mask[top:top + grid[0] // 2, left:left + grid[1] // 2] = 1.0
            extra = {"has_mask": True, "manipulation": "inpaint", "family": "inpaint_f8",
                     "generated_fraction": float(mask.mean())}
        elif label == "fake":
            mask[:] = 1.0
            extra["generated_fraction"] = 1.0
        elif subset.startswith("inpaint"):  # the reals of the inpainting set come with an all-zero mask
            extra["has_mask"] = True
        family = "inpaint" if subset.startswith("inpaint") else "whole"
        tokens += SHIFT * mask.reshape(t, 1) * directions[family]
        out.append({"key": f"{subset}-{split}-{i:05d}", "label": label, "subset": subset, "split": split,
                    "content_id": f"{subset}-{split}-{i // 2:05d}", "tokens": tokens.ravel().tolist(),
                    "token_mask": mask.ravel().tolist(), "feature": tokens.mean(0).tolist(), **extra})
    return out


def write_token_store(root: str, *, grid: tuple[int, int] = (8, 8), dim: int = 8, per_split: dict[str, int] | None = None,
                      subsets: tuple[str, ...] = ("sd", "inpaint-inpaint_f8"), seed: int = 0, shards: int = 2,
                      encoder: str = ENCODER) -> str:
    """Write ``root/<variant>__tok<R>x<C>/`` with ``shards`` files; returns the variant URL."""
    per_split = per_split or {"train": 24, "val": 8, "test": 12}
    rng = np.random.default_rng(seed)
    directions = {k: rng.normal(size=dim).astype(np.float32) for k in ("whole", "inpaint")}
    rows = [r for split, n in per_split.items() for subset in subsets
            for r in token_rows(n, subset, split, grid, dim, rng, directions)]
    tokens = f"{grid[0]}x{grid[1]}"
    variant = gio.join(str(root), variant_name(encoder, PHASH, "", tokens=tokens))
    gio.makedirs(variant)
    schema = feature_schema(dim, "float32", grid, dim)
    stems = []
    for s in range(shards):
        part = rows[s::shards]
        stem = f"tokens-{s:06d}"
        table = pa.Table.from_pylist([{**r, "shard": stem, "encoder": encoder, "preprocess_hash": PHASH, "degrade": ""}
                                      for r in part], schema=schema)
        pq.write_table(table, gio.join(variant, f"{stem}.parquet"))
        write_done_marker(variant, stem, rows=len(part), dim=dim, encoder=encoder, preprocess_hash=PHASH)
        stems.append(stem)
    fields = {"encoder": encoder, "preprocess_hash": PHASH, "degrade": "", "tokens": tokens}
    gio.write_json_atomic(gio.join(variant, MANIFEST), {**fields, "dim": dim, "dtype": "float32", "shards": stems,
                                                        "rows": len(rows), "quarantined": 0, "token_grid": list(grid),
                                                        "token_dim": dim, "variant_key": variant_key(fields)})
    return variant


def write_masked_shards(folder, *, n: int = 8, size: int = 64, splits: tuple[str, ...] = ("train", "test"),
                        seed: int = 0) -> None:
    """One shard of ``n`` noise PNGs for the real ``gendet extract --tokens``, in groups of four: a
    partial fake with a mask.png (the top-left quarter; manipulation inpaint) and a real of subset
    inpaint-inpaint_f8, a whole-image fake and a real of subset sd; the split advances every group."""
    import io

    from PIL import Image

    from gendet.data.manipulations import MASK_MEMBER, encode_mask
    from gendet.data.shards import Sample, ShardWriter

    rng = np.random.default_rng(seed)

    def png(pixels):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()

    with ShardWriter(str(folder), prefix="masked") as writer:
        for i in range(n):
            image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            split, kind = splits[(i // 4) % len(splits)], i % 4
            subset, label = ("inpaint-inpaint_f8", "sd")[kind // 2], ("fake", "real")[kind % 2]
            extra, files = {}, {}
            if kind == 0:
                mask = np.zeros((size, size), np.uint8)
                mask[: size // 2, : size // 2] = 1
                extra = {"manipulation": "inpaint", "family": "inpaint_f8", "generated_fraction": float(mask.mean())}
                files = {MASK_MEMBER: encode_mask(mask)}
            writer.write(Sample(key=f"m{i}", image=png(image), image_ext="png", label=label, split=split, subset=subset,
                                extra=extra, files=files))
