"""Token grids: per-patch features on a grid, [B, T, D] (T = rows x cols, row-major), beside the
pooled feature, for models that look at *where* an image is fake (``gendet.method.gamma``).

* ``open_clip`` ViTs: the patch tokens of the last layer after ``ln_post`` (open_clip's
  ``VisionTransformer`` with ``output_tokens``), before pooling and projection: grid =
  image_size / patch_size (16 x 16 for ViT-L-14 at 224 px), D = the tower's width (1024).
* ``spectrum:v1`` / ``spectrum:v2``: the spectrum's measurements per 16 x 16 px patch of the
  encoder's input canvas (``TOKEN_PATCH``): the patch's Hann-windowed high-pass residual (the same
  residual the pooled feature uses: inside 64 px blocks for v2) as an azimuthal spectrum of 8
  radial bins and the folded 9 x 9 grid of (|ky|, |kx|) (each standardised per token), plus the
  seven residual statistics of the patch: 96 values (``PATCH_DIM``, all that gendet 0.5 stored).
  Then the same 96 measurements averaged over the four 16 px patches centred on the midpoints of
  the token's edges, and over the four centred on its corners (the canvas reflect-padded by 8 px):
  D = 3 x 96 = 288 (``TOKEN_DIM``), and a token reads 8 px past its own patch. Why: the Hann
  window all but ignores a patch's border, so a blob that meets a token mostly near its edges was
  barely measured; the shifted patches measure there and give every token nine looks instead of
  one (inpaint_f8 mask IoU 0.50 -> 0.545, every seed over 0.5; unseen whole-image accuracy +2 points:
  experiments/results/gamma-ablation-cpu2-tok288.md). Grid 16 x 16 for v2 (256 px canvas), 8 x 8 for
  v1 (128 px). v2 tiles crops under 256 px across its canvas, so their tokens repeat once per
  tile, as do their masks (``token_mask`` puts a mask through the same geometry). A GAMMA model
  trained on 0.5's 96-wide tokens reads their first ``PATCH_DIM`` columns (``model_tokens``), and a
  store of them keeps growing in them (``gendet.extract.manifest.stored_token_layout``).

Masks on the grid: ``Encoder.token_mask(mask)`` takes an image's pixel mask through the encoder's
preprocessing geometry (resize, crop, tiling) and gives each token the fraction of its pixels that
are manipulated (``grid_fractions``): the per-token targets of the segmentation heads.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

TOKEN_PATCH = 16
TOKEN_BINS = 8
PATCH_DIM = TOKEN_BINS + (TOKEN_PATCH // 2 + 1) ** 2 + 7
TOKEN_DIM = 3 * PATCH_DIM


def grid_fractions(masks: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel masks [N, H, W] (or [H, W]) in [0, 1] -> the mean over each grid cell, [N, rows*cols]
    float32 (area pooling; H, W need not divide evenly: adaptive pooling's cells then overlap by a
    pixel)."""
    m = torch.as_tensor(np.asarray(masks) if isinstance(masks, np.ndarray) else masks).float()
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise ValueError(f"masks must be [N, H, W] or [H, W], got {tuple(m.shape)}")
    return F.adaptive_avg_pool2d(m[:, None], grid).flatten(1)


def coarsen(tokens: torch.Tensor, grid: tuple[int, int], to: tuple[int, int]) -> torch.Tensor:
    """[B, rows*cols, D] on ``grid`` -> [B, to[0]*to[1], D], each new token the mean of the tokens
    it covers (area pooling, as ``grid_fractions`` pools masks): what a store keeps when the full
    grid is too large (ViT-L-14: 256 x 1024 values an image; 8 x 8 keeps a quarter)."""
    b, t, d = tokens.shape
    if t != grid[0] * grid[1]:
        raise ValueError(f"tokens [B, {t}, D] do not fill the grid {grid}")
    maps = tokens.transpose(1, 2).reshape(b, d, *grid)
    return F.adaptive_avg_pool2d(maps, to).flatten(2).transpose(1, 2)


def geometry_mask(preprocessor, mask: np.ndarray) -> np.ndarray:
    """A pixel mask [H, W] ({0, 1} or [0, 1]) taken through ``preprocessor``'s geometry exactly as
    its image is (resampling included): float32 [H', W'] in [0, 1], the input canvas's mask."""
    grey = Image.fromarray(np.clip(np.rint(np.asarray(mask, dtype=np.float32) * 255), 0, 255).astype(np.uint8), mode="L")
    canvas = preprocessor.pixels(grey.convert("RGB"))  # uint8 [3, H', W']
    return canvas[0].astype(np.float32) / 255.0


def _hann(p: int, device: torch.device) -> torch.Tensor:
    w = torch.hann_window(p, periodic=True, dtype=torch.float64)
    return (w[:, None] * w[None, :]).float().to(device)


FLAT_STD = 1e-4  # a row whose spread is under this share of its level is flat (``standardise``)


def standardise(v: torch.Tensor) -> torch.Tensor:
    """Each row (last dim) to mean 0, std 1; a flat row to zeros. A flat row is a spectrum with no
    shape (a single-colour image or patch: every frequency at the floor): its only spread is float
    rounding, ~1e-6 of its level, which differs with the batch it was computed in (gemv for one row,
    gemm for many) and which dividing by that spread would turn into O(1) values: an image's score
    would depend on its neighbours in the batch."""
    mean = v.mean(-1, keepdim=True)
    std = v.std(-1, keepdim=True, unbiased=False)
    flat = std <= FLAT_STD * (mean.abs() + 1.0)
    return torch.where(flat, torch.zeros_like(v), (v - mean) / (std + 1e-6))


def _patch_stats(rgb: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The seven residual statistics of ``spectrum`` per patch: [B, T, 3, p, p], [B, T, p, p] -> [B, T, 7]."""
    energy = residual.square()
    var = energy.mean((-1, -2))
    kurt = energy.square().mean((-1, -2)) / (var.square() + 1e-20)
    grad = torch.diff(rgb, dim=-1).flatten(-2)  # [B, T, 3, p*(p-1)]
    gram = grad @ grad.transpose(-1, -2)
    norm = gram.diagonal(dim1=-2, dim2=-1).sqrt() + 1e-12
    corr = [gram[..., i, j] / (norm[..., i] * norm[..., j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    rows = energy[..., 0::2, :].sum((-1, -2)), energy[..., 1::2, :].sum((-1, -2))
    cols = energy[..., 0::2].sum((-1, -2)), energy[..., 1::2].sum((-1, -2))
    contrast = [(a - b) / (a + b + 1e-20) for a, b in (rows, cols)]
    return torch.stack([torch.log10(var + 1e-10) / 5, torch.log10(kurt + 1e-6), *corr, *contrast], -1)


def _log_power(power: torch.Tensor) -> torch.Tensor:
    """``spectrum._log_power`` per token: log10 of power plus a floor relative to its mean."""
    floor = 1e-4 * power.flatten(1).mean(1) + 1e-20
    return torch.log10(power + floor.view(-1, *([1] * (power.dim() - 1))))


def _fold(power: torch.Tensor) -> torch.Tensor:
    """``spectrum._fold_grid``: [N, p, p/2+1] -> [N, (p/2+1)^2], ky averaged with -ky."""
    half = power.shape[1] // 2
    mirrored = torch.cat([power[:, :1], power.flip(1)[:, :half]], 1)
    return ((power[:, : half + 1] + mirrored) / 2).flatten(1)


def _spectra(res: torch.Tensor, azimuthal: torch.Tensor) -> torch.Tensor:
    """Residual patches [B, T, p, p] -> their azimuthal spectrum and folded (|ky|, |kx|) grid, each
    standardised per patch: [B, T, 8 + (p/2+1)^2]."""
    b, t, patch = res.shape[0], res.shape[1], res.shape[-1]
    spectrum = torch.fft.rfft2(res * _hann(patch, res.device))
    power = spectrum.real.square() + spectrum.imag.square()  # [B, T, p, p/2+1]
    flat = power.reshape(b * t, patch, patch // 2 + 1)
    spectra = standardise(_log_power(flat).flatten(1) @ azimuthal)
    grid = standardise(_log_power(_fold(flat)))
    return torch.cat([spectra.view(b, t, -1), grid.view(b, t, -1)], -1)


def spectrum_patch_tokens(rgb: torch.Tensor, residual: torch.Tensor, azimuthal: torch.Tensor,
                          patch: int = TOKEN_PATCH) -> torch.Tensor:
    """Per-patch spectrum measurements (module docstring): rgb [B, 3, H, W] in [0, 1], its
    high-pass residual [B, H, W] and the [patch*(patch/2+1), 8] azimuthal averaging matrix
    (``spectrum._azimuthal_matrix(patch, 8)``) -> [B, (H/patch)*(W/patch), 3 * PATCH_DIM] float32:
    each token's own patch, the mean of the four patches centred on its edges' midpoints, the
    mean of the four centred on its corners. One map of patches at a stride of half a patch over
    the canvas reflect-padded by half a patch: entry (k, l) is centred on pixel (k, l) x patch/2."""
    b, _, h, w = rgb.shape
    half = patch // 2
    rgb = F.pad(rgb, (half,) * 4, mode="reflect")
    residual = F.pad(residual[:, None], (half,) * 4, mode="reflect")[:, 0]
    rows, cols = 2 * (h // patch) + 1, 2 * (w // patch) + 1
    res = residual.unfold(1, patch, half).unfold(2, patch, half).reshape(b, rows * cols, patch, patch)
    pix = rgb.unfold(2, patch, half).unfold(3, patch, half).permute(0, 2, 3, 1, 4, 5).reshape(b, rows * cols, 3, patch, patch)
    m = torch.cat([_spectra(res, azimuthal), _patch_stats(pix, res)], -1).view(b, rows, cols, -1)
    own = m[:, 1::2, 1::2]
    edges = (m[:, 1::2, 0:-1:2] + m[:, 1::2, 2::2] + m[:, 0:-1:2, 1::2] + m[:, 2::2, 1::2]) / 4
    corners = (m[:, 0:-1:2, 0:-1:2] + m[:, 0:-1:2, 2::2] + m[:, 2::2, 0:-1:2] + m[:, 2::2, 2::2]) / 4
    return torch.cat([own, edges, corners], -1).reshape(b, own.shape[1] * own.shape[2], -1)


def model_tokens(tokens: torch.Tensor | np.ndarray, encoder: str, model_dim: int):
    """Tokens as a model of width ``model_dim`` reads them: a GAMMA model trained on gendet 0.5's
    96-wide spectrum tokens reads the first ``PATCH_DIM`` columns of today's (the same numbers);
    any other width is returned as it is (the caller checks it)."""
    width = tokens.shape[-1]
    return tokens[..., :model_dim] if width != model_dim and reads_tokens(encoder, width, model_dim) else tokens


def reads_tokens(encoder: str, token_dim: int, model_dim: int) -> bool:
    """A model of width ``model_dim`` can read ``encoder``'s tokens of ``token_dim`` (``model_tokens``)."""
    return token_dim == model_dim or (encoder.startswith("spectrum") and model_dim == PATCH_DIM and token_dim == TOKEN_DIM)
