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

``spectrum:v2`` -- the same measurements on **native pixels only** (issue 11: v1 upsamples every
image under 128 px with one bicubic filter, so small training images all carry that filter's
spectrum and larger ones never do). Preprocess: a center crop of S x S native pixels, S the largest
of 64, 128, 256 that fits (an image under 64 px is the one case still upscaled, to 64), tiled to
a 256 x 256 canvas so batches keep one shape. The residual is taken inside each 64 x 64 block
(reflect padding at the block's edges), patches never cross a block, gradients and parity
contrasts stay inside blocks: every value comes from one native block and every distinct block
of the crop counts equally, so the tiling changes nothing (tested against the crop alone).
Blocks: azimuthal spectra of 64 px (32 bins) and 32 px patches (16 bins), the folded 17 x 17
grid of 32 px patches, the seven statistics: 32 + 16 + 289 + 7 = 344-d.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from PIL import Image

from gendet import GendetError
from gendet.encoders.base import Encoder, Preprocessor, check_device
from gendet.encoders.tokens import TOKEN_BINS, TOKEN_DIM, TOKEN_PATCH, spectrum_patch_tokens, standardise

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


V2_CANVAS = 256
V2_BLOCK = 64
V2_CROPS = (256, 128, 64)
V2_AZIMUTHAL = ((64, 32), (32, 16))
V2_DIM = sum(bins for _, bins in V2_AZIMUTHAL) + (GRID_PATCH // 2 + 1) ** 2 + N_STATS
V2_PREPROCESS_CFG = {
    "family": "spectrum", "size": [V2_CANVAS, V2_CANVAS], "crop": "center-native-tiled", "native_crops": list(V2_CROPS),
    "resize_mode": "upscale_below_64_only", "interpolation": "bicubic", "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0], "mode": "RGB", "version": "v2",
}


def _native_tiled(image: Image.Image) -> Image.Image:
    """v2: the largest native center crop of 256/128/64 px, tiled to the 256 px canvas."""
    w, h = image.size
    if min(w, h) < V2_CROPS[-1]:  # the one resampling left: images smaller than a block
        scale = V2_CROPS[-1] / min(w, h)
        w, h = max(V2_CROPS[-1], round(w * scale)), max(V2_CROPS[-1], round(h * scale))
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    size = next(s for s in V2_CROPS if s <= min(w, h))
    left, top = (w - size) // 2, (h - size) // 2
    crop = image.crop((left, top, left + size, top + size))
    if size == V2_CANVAS:
        return crop
    canvas = Image.new("RGB", (V2_CANVAS, V2_CANVAS))
    for y in range(0, V2_CANVAS, size):
        for x in range(0, V2_CANVAS, size):
            canvas.paste(crop, (x, y))
    return canvas


def spectrum_preprocessor(version: str = "v1") -> Preprocessor:
    """Geometry ``_center_crop`` (v1) or ``_native_tiled`` (v2); ``Preprocessor.finish`` scales to
    [0, 1] (mean 0, std 1)."""
    if version == "v2":
        return Preprocessor(V2_PREPROCESS_CFG, _native_tiled)
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


def _to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, W] -> [B*n, block, block] or [B, C, H, W] -> [B*n, C, block, block], n blocks per
    image in row-major order."""
    h, w = x.shape[-2:]
    if x.dim() == 3:
        x = x.reshape(x.shape[0], h // block, block, w // block, block).permute(0, 1, 3, 2, 4)
    else:
        x = x.reshape(*x.shape[:2], h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, *x.shape[3:])


def _from_blocks(blocks: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``_to_blocks`` for [B, H, W]."""
    block = blocks.shape[-1]
    x = blocks.reshape(b, h // block, w // block, block, block).permute(0, 1, 3, 2, 4)
    return x.reshape(b, h, w)


def _blockwise_stats(rgb: torch.Tensor, residual: torch.Tensor, block: int) -> torch.Tensor:
    """``_residual_stats`` with gradients taken inside each block: a canvas of tiled copies gives
    the statistics of one copy (the parity grids align since blocks have even size)."""
    b = rgb.shape[0]
    per_block = _to_blocks(rgb, block)  # [B*n, 3, block, block]
    grad = torch.diff(per_block[:, :, ::4], dim=-1)  # [B*n, 3, block/4, block-1]
    grad = grad.reshape(b, -1, *grad.shape[1:]).movedim(2, 1).flatten(2)  # [B, 3, n * ...]
    gram = grad @ grad.transpose(1, 2)
    norm = gram.diagonal(dim1=1, dim2=2).sqrt() + 1e-12
    corr = [gram[:, i, j] / (norm[:, i] * norm[:, j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    energy = residual.square()
    var = energy.mean((1, 2))
    kurt = energy.square().mean((1, 2)) / (var.square() + 1e-20)
    rows = energy[:, 0::2].sum((1, 2)), energy[:, 1::2].sum((1, 2))
    cols = energy[:, :, 0::2].sum((1, 2)), energy[:, :, 1::2].sum((1, 2))
    contrast = [(a - b_) / (a + b_ + 1e-20) for a, b_ in (rows, cols)]
    return torch.stack([torch.log10(var + 1e-10) / 5, torch.log10(kurt + 1e-6), *corr, *contrast], 1)


_VERSIONS = {  # version -> (input side, azimuthal scales, dim)
    "v1": (SIZE, AZIMUTHAL_SCALES, DIM),
    "v2": (V2_CANVAS, V2_AZIMUTHAL, V2_DIM),
}


class SpectrumEncoder(Encoder):
    """Multi-scale high-pass residual power spectra (see the module docstring)."""

    def __init__(self, name: str = "spectrum:v1", *, device: str = "cpu", precision: str = "fp32"):
        version = name.removeprefix("spectrum:")
        if not name.startswith("spectrum:") or version not in _VERSIONS:
            raise GendetError(f"encoder {name!r}: SpectrumEncoder implements {', '.join('spectrum:' + v for v in _VERSIONS)}")
        check_device(device, precision)
        self.version = version
        self.size, self.scales, dim = _VERSIONS[version]
        self.name, self.dim, self.precision, self.weights_ref = name, dim, precision, "none"
        self.preprocessor = spectrum_preprocessor(version)
        self._buffers = {
            "luma": torch.tensor(LUMA),
            **{f"hann{p}": _hann2d(p) for p in {*(p for p, _ in self.scales), GRID_PATCH}},
            **{f"azimuthal{p}": _azimuthal_matrix(p, bins) for p, bins in self.scales},
            "token_azimuthal": _azimuthal_matrix(TOKEN_PATCH, TOKEN_BINS),
        }
        # per-patch measurements on the input canvas (gendet.encoders.tokens): 8x8 (v1), 16x16 (v2)
        self.token_grid, self.token_dim = (self.size // TOKEN_PATCH,) * 2, TOKEN_DIM
        self.to(device)

    def to(self, device: str) -> SpectrumEncoder:
        self._dev = check_device(device, self.precision)
        self._buffers = {k: v.to(self._dev) for k, v in self._buffers.items()}
        self.device = str(self._dev)
        return self

    def _residual(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the batch as float32 on the device, its high-pass residual [B, S, S])."""
        size = self.size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"{self.name} expects [B, 3, {size}, {size}] from its preprocess, got {tuple(images.shape)}")
        x = images.to(self._dev, torch.float32, non_blocking=True)
        # the Laplacian is linear: take the luma first and filter one channel instead of three
        grey = torch.einsum("bchw,c->bhw", x, self._buffers["luma"])
        if self.version == "v1":
            return x, _laplacian(grey)
        # v2: inside each native block, so tiled copies never meet
        return x, _from_blocks(_laplacian(_to_blocks(grey, V2_BLOCK)), x.shape[0], size, size)

    @torch.inference_mode()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        return spectrum_patch_tokens(*self._residual(images), self._buffers["token_azimuthal"])

    @torch.inference_mode()
    def features_and_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self._residual(images)
        return self._pooled(x, residual), spectrum_patch_tokens(x, residual, self._buffers["token_azimuthal"])

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._pooled(*self._residual(images))

    def _pooled(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        buf = self._buffers
        blocks = []
        for p, _ in self.scales:
            power = _log_power(_patch_power(residual, p, buf[f"hann{p}"]))
            blocks.append(standardise(power.flatten(1) @ buf[f"azimuthal{p}"]))
        grid = _fold_grid(_patch_power(residual, GRID_PATCH, buf[f"hann{GRID_PATCH}"]))
        blocks.append(standardise(_log_power(grid)))
        blocks.append(_residual_stats(x, residual) if self.version == "v1" else _blockwise_stats(x, residual, V2_BLOCK))
        return torch.cat(blocks, 1)
