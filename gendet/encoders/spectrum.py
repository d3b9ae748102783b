"""``spectrum:v1``: weight-free forensic features, the offline default encoder.

Generators leave fingerprints in the high frequencies: upsampling layers (nearest, bilinear,
transposed convolution, pixel shuffle) replicate the spectrum and put periodic peaks at N/2, N/4,
N/8 (Durall et al. 2020, Frank et al. 2020, Corvi et al. 2023), while camera photos carry demosaicing
correlations between colour channels. This encoder measures exactly that, with no learned weights:

1. Preprocess: the shorter side is upscaled (bicubic) to 128 px only when smaller -- never
   downscaled, since resampling would wash out the traces -- then a 128x128 center crop, RGB in [0, 1].
2. High-pass residual: the BT.601 luma convolved with the 4-neighbour Laplacian (zero at DC only, so
   no frequency direction is suppressed, unlike separable SRM kernels; reflect padding).
3. Power spectra of Hann-windowed residual patches at three scales, averaged over patches, log10:
   128x128 (one patch) and 64x64 (4 patches) reduced to azimuthal averages of 64 and 32 radial bins;
   32x32 (16 patches) kept as the folded 17x17 grid of frequencies (|ky|, |kx|) in 0..16, so the
   peaks at N/2, N/4, N/8 (indices 16, 8, 4) sit in their own cells.
4. Each of the three blocks is standardised per image (zero mean, unit variance): the spectral
   *shape* is kept, overall contrast is removed, values are O(1) without fitted statistics.
5. Seven residual statistics: log10 variance / 5, log10 kurtosis, the three correlations between
   the colour channels' horizontal gradients (demosaicing ties them in camera photos), and the
   even/odd row and column residual-energy contrasts (2x2 grids).

Width: 64 + 32 + 289 + 7 = 392 = 2 x 196, float32, not L2-normalised. Deterministic (fixed
filters, no randomness); ``precision`` is accepted for interface parity but FFTs always run in
float32.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from PIL import Image

from gendet import GendetError
from gendet.encoders.base import Encoder, Preprocessor, check_device

SIZE = 128
AZIMUTHAL_SCALES = ((128, 64), (64, 32))  # (patch size, radial bins)
GRID_PATCH = 32  # folded to (GRID_PATCH/2 + 1)^2 = 289 cells
N_STATS = 7
DIM = sum(bins for _, bins in AZIMUTHAL_SCALES) + (GRID_PATCH // 2 + 1) ** 2 + N_STATS
LUMA = (0.299, 0.587, 0.114)
# log10(power + REL_EPS * mean power): bounds how far empty frequencies (e.g. DC) fall below the rest.
REL_EPS = 1e-4

PREPROCESS_CFG = {
    "family": "spectrum", "size": [SIZE, SIZE], "crop": "center", "resize_mode": "upscale_shorter_only",
    "interpolation": "bicubic", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "mode": "RGB",
}


def _center_crop(image: Image.Image, size: int = SIZE) -> Image.Image:
    w, h = image.size
    if min(w, h) < size:  # upscale only: never resample away the traces of larger images
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def spectrum_preprocessor() -> Preprocessor:
    """Geometry ``_center_crop``; ``Preprocessor.finish`` scales to [0, 1] (mean 0, std 1)."""
    return Preprocessor(PREPROCESS_CFG, functools.partial(_center_crop, size=SIZE))


def _hann2d(p: int) -> torch.Tensor:
    w = torch.hann_window(p, periodic=True, dtype=torch.float64)
    return (w[:, None] * w[None, :]).float()


def _azimuthal_matrix(p: int, bins: int) -> torch.Tensor:
    """[p*(p//2+1), bins] averaging matrix over the rfft2 half-plane, by radial frequency."""
    ky = torch.arange(p, dtype=torch.float64)
    ky = torch.minimum(ky, p - ky)
    kx = torch.arange(p // 2 + 1, dtype=torch.float64)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).flatten()
    index = torch.clamp((radius / (p / 2 * math.sqrt(2)) * bins).long(), max=bins - 1)
    m = F.one_hot(index, bins).double()
    return (m / m.sum(0, keepdim=True)).float()


def _patch_power(residual: torch.Tensor, p: int, window: torch.Tensor) -> torch.Tensor:
    """Mean rfft2 power over non-overlapping p x p patches: [B, S, S] -> [B, p, p//2+1]."""
    b = residual.shape[0]
    patches = residual.unfold(1, p, p).unfold(2, p, p).reshape(b, -1, p, p)
    spectrum = torch.fft.rfft2(patches * window)
    return (spectrum.real.square() + spectrum.imag.square()).mean(1)


def _log_power(power: torch.Tensor) -> torch.Tensor:
    floor = REL_EPS * power.flatten(1).mean(1) + 1e-20
    return torch.log10(power + floor.view(-1, *([1] * (power.dim() - 1))))


def _standardise(block: torch.Tensor) -> torch.Tensor:
    mean = block.mean(1, keepdim=True)
    std = block.std(1, keepdim=True, unbiased=False)
    return (block - mean) / (std + 1e-6)


def _fold_grid(power: torch.Tensor) -> torch.Tensor:
    """[B, p, p//2+1] -> [B, (p//2+1)^2]: average each ky with -ky so cells index |ky|, |kx|."""
    p = power.shape[1]
    half = p // 2
    top = power[:, : half + 1]
    mirrored = torch.cat([power[:, :1], power.flip(1)[:, :half]], 1)  # row -ky for ky = 0..half
    return ((top + mirrored) / 2).flatten(1)


def _laplacian(grey: torch.Tensor) -> torch.Tensor:
    """4-neighbour Laplacian with reflect padding, by shifted subtractions (a grouped conv2d is
    ~10x slower on CPU)."""
    r = 4 * grey
    r[:, 1:] -= grey[:, :-1]
    r[:, :-1] -= grey[:, 1:]
    r[:, :, 1:] -= grey[:, :, :-1]
    r[:, :, :-1] -= grey[:, :, 1:]
    r[:, 0] -= grey[:, 1]  # reflect padding: the missing neighbour mirrors the inner one
    r[:, -1] -= grey[:, -2]
    r[:, :, 0] -= grey[:, :, 1]
    r[:, :, -1] -= grey[:, :, -2]
    return r


def _residual_stats(rgb: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Seven statistics: residual log-variance and log-kurtosis, colour-channel correlations of
    horizontal gradients (demosaicing ties the channels of camera photos), 2x2 parity contrasts."""
    energy = residual.square()
    var = energy.mean((1, 2))
    kurt = energy.square().mean((1, 2)) / (var.square() + 1e-20)
    grad = torch.diff(rgb[:, :, ::4], dim=-1).flatten(2)  # every 4th row: same statistic, 4x cheaper
    gram = grad @ grad.transpose(1, 2)  # [B, 3, 3]; gradients have ~zero mean, so no centring
    norm = gram.diagonal(dim1=1, dim2=2).sqrt() + 1e-12
    corr = [gram[:, i, j] / (norm[:, i] * norm[:, j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    rows = energy[:, 0::2].sum((1, 2)), energy[:, 1::2].sum((1, 2))
    cols = energy[:, :, 0::2].sum((1, 2)), energy[:, :, 1::2].sum((1, 2))
    contrast = [(a - b) / (a + b + 1e-20) for a, b in (rows, cols)]
    return torch.stack([torch.log10(var + 1e-10) / 5, torch.log10(kurt + 1e-6), *corr, *contrast], 1)


class SpectrumEncoder(Encoder):
    """Multi-scale high-pass residual power spectra (see the module docstring)."""

    def __init__(self, name: str = "spectrum:v1", *, device: str = "cpu", precision: str = "fp32"):
        if name != "spectrum:v1":
            raise GendetError(f"encoder {name!r}: SpectrumEncoder implements spectrum:v1 only")
        check_device(device, precision)
        self.name, self.dim, self.precision, self.weights_ref = name, DIM, precision, "none"
        self.preprocessor = spectrum_preprocessor()
        self._buffers = {
            "luma": torch.tensor(LUMA),
            **{f"hann{p}": _hann2d(p) for p in {*(p for p, _ in AZIMUTHAL_SCALES), GRID_PATCH}},
            **{f"azimuthal{p}": _azimuthal_matrix(p, bins) for p, bins in AZIMUTHAL_SCALES},
        }
        self.to(device)

    def to(self, device: str) -> SpectrumEncoder:
        self._dev = check_device(device, self.precision)
        self._buffers = {k: v.to(self._dev) for k, v in self._buffers.items()}
        self.device = str(self._dev)
        return self

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
            raise ValueError(f"{self.name} expects [B, 3, {SIZE}, {SIZE}] from its preprocess, got {tuple(images.shape)}")
        buf = self._buffers
        x = images.to(self._dev, torch.float32, non_blocking=True)
        # the Laplacian is linear: take the luma first and filter one channel instead of three
        residual = _laplacian(torch.einsum("bchw,c->bhw", x, buf["luma"]))
        blocks = []
        for p, _ in AZIMUTHAL_SCALES:
            power = _log_power(_patch_power(residual, p, buf[f"hann{p}"]))
            blocks.append(_standardise(power.flatten(1) @ buf[f"azimuthal{p}"]))
        grid = _fold_grid(_patch_power(residual, GRID_PATCH, buf[f"hann{GRID_PATCH}"]))
        blocks.append(_standardise(_log_power(grid)))
        blocks.append(_residual_stats(x, residual))
        return torch.cat(blocks, 1)
