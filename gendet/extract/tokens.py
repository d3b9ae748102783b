"""Token variants of the feature store (``gendet extract --tokens [--token-grid RxC]``, GAMMA).

A token variant keeps, beside each row's pooled ``feature``, the encoder's token grid (coarsened
to ``--token-grid`` when given), the share of each token's pixels that the sample's ``mask.png``
marks as manipulated (through the encoder's geometry: ``Encoder.token_mask``) and what the json
says of the manipulation (CONTRACTS.md). This module holds what the reader, mapper and writer
share: the grid's spelling and checks, the per-sample token fields and the extra Arrow columns.
The driver never loads a model: the encoder's native grid is read from its configuration.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from gendet import GendetError
from gendet.config import ConfigError

# The reader's per-row token fields (beside ``token_mask``, a [T] array), in the part files' order.
TOKEN_FIELDS = ("has_mask", "manipulation", "family", "generated_fraction")
_GRID = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_grid(text: str) -> tuple[int, int]:
    """``"8x8"`` -> (8, 8); a one-line ConfigError naming the flag otherwise."""
    m = _GRID.match(str(text))
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise ConfigError(f"--token-grid {text!r}: give ROWSxCOLS with positive integers, e.g. --token-grid 8x8 "
                          "(or leave it out for the encoder's native grid)")
    return int(m[1]), int(m[2])


def grid_text(grid: tuple[int, int] | list[int]) -> str:
    """(8, 8) -> ``"8x8"`` (the variant key's ``tokens`` field and the folder suffix's)."""
    return f"{int(grid[0])}x{int(grid[1])}" if grid and int(grid[0]) else ""


def native_token_grid(encoder: str) -> tuple[tuple[int, int], int]:
    """((rows, cols), token width) of encoder ``encoder``'s token grid, from its configuration
    alone (no weights loaded); ((0, 0), 0) for an encoder without one (an open_clip ResNet or timm
    tower). The same values the loaded encoder's ``token_grid``/``token_dim`` have."""
    from gendet.encoders.registry import parse_encoder_name

    spec = parse_encoder_name(encoder)
    if spec.family == "spectrum":
        from gendet.encoders.spectrum import _VERSIONS
        from gendet.encoders.tokens import TOKEN_DIM, TOKEN_PATCH

        side = _VERSIONS[spec.arch][0] // TOKEN_PATCH
        return (side, side), TOKEN_DIM
    import open_clip
    from open_clip.model import CLIPVisionCfg

    vision = CLIPVisionCfg(**open_clip.get_model_config(spec.arch)["vision_cfg"])
    if vision.timm_model_name or isinstance(vision.layers, (tuple, list)):
        return (0, 0), 0
    size = (vision.image_size,) * 2 if isinstance(vision.image_size, int) else tuple(vision.image_size)
    patch = (vision.patch_size,) * 2 if isinstance(vision.patch_size, int) else tuple(vision.patch_size)
    return (int(size[0] // patch[0]), int(size[1] // patch[1])), int(vision.width)


def resolve_token_grid(encoder: str, tokens: bool, token_grid: str) -> tuple[tuple[int, int], int]:
    """(the grid a run stores, token width), (0, 0) and 0 without ``--tokens``; a one-line error
    naming the flag and the fix for an encoder without tokens or a grid finer than its own."""
    if not tokens:
        return (0, 0), 0
    native, dim = native_token_grid(encoder)
    if native == (0, 0):
        raise GendetError(f"--tokens: encoder {encoder} has no token grid; use spectrum:v1, spectrum:v2 or an open_clip "
                          "ViT, or drop --tokens")
    grid = parse_grid(token_grid) if str(token_grid).strip() else native
    if grid[0] > native[0] or grid[1] > native[1]:
        raise GendetError(f"--token-grid {token_grid}: finer than {encoder}'s native {grid_text(native)} grid; pass "
                          f"--token-grid {grid_text(native)} or coarser (or leave it out)")
    return grid, dim


def mask_fractions(preprocess: Any, mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A pixel mask [H, W] {0, 1} -> float32 [rows*cols]: each token's manipulated share, through
    ``preprocess``'s geometry (what ``Encoder.token_mask`` computes, on the stored grid)."""
    from gendet.encoders.tokens import geometry_mask, grid_fractions

    return grid_fractions(geometry_mask(preprocess, mask), grid)[0].numpy().astype(np.float32)


def sample_token_fields(meta: dict[str, Any], has_mask: bool) -> dict[str, Any]:
    """The json's manipulation fields, with the contract's defaults (a fake without them: all
    generated; a real: none). Raises ValueError on a ``generated_fraction`` that is not a number."""
    fake = meta.get("label") == "fake"
    fraction = meta.get("generated_fraction")
    fraction = (1.0 if fake else 0.0) if fraction is None or fraction == "" else float(fraction)
    if not np.isfinite(fraction):
        raise ValueError(f"generated_fraction {fraction}")
    return {"has_mask": has_mask, "manipulation": str(meta.get("manipulation") or ""),
            "family": str(meta.get("family") or ""), "generated_fraction": fraction}


def token_columns(rows: list[dict[str, Any]], cells: int) -> dict[str, np.ndarray]:
    """The reader's token columns of a batch of rows (quarantined rows: zeros and blanks)."""
    return {"token_mask": np.stack([r.get("token_mask", np.zeros(cells, np.float32)) for r in rows]).astype(np.float32),
            "has_mask": np.array([bool(r.get("has_mask", False)) for r in rows], dtype=bool),
            "manipulation": np.array([r.get("manipulation", "") for r in rows], dtype=object),
            "family": np.array([r.get("family", "") for r in rows], dtype=object),
            "generated_fraction": np.array([r.get("generated_fraction", 0.0) for r in rows], dtype=np.float32)}
