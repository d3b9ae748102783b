"""Regenerating real photos with a zoo generator, whole or inside a mask, and the measurements
that show what changed (fingerprint) and what did not (content).

A regeneration keeps the photo's content and adds the family's fingerprint, as latent-diffusion
decoders do to every image they output. Masked regeneration is inpainting-style: the family
regenerates the whole crop and only the pixels inside the mask are taken from it, so outside the
mask the result is exactly the source (byte for byte, as inpainting pipelines paste it back).
"""

from __future__ import annotations

import numpy as np
import torch

from gendet.data.manipulations import region_masks
from gendet.zoo.config import FamilyConfig
from gendet.zoo.models import alpha_bar


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3], rounded and clipped."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def sdedit(model: torch.nn.Module, cfg: FamilyConfig, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise ``x`` to ``cfg.sdedit_strength`` of the schedule, then denoise back with DDIM steps."""
    return sdedit_trajectory(model, cfg, x, generator)


def sdedit_trajectory(model: torch.nn.Module, cfg: FamilyConfig, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``sdedit`` with gradients: fine-tuning a denoiser through its whole DDIM trajectory
    (``gendet.coevolve.align``)."""
    times = torch.linspace(cfg.sdedit_strength, 0.0, cfg.sdedit_steps + 1)
    a = alpha_bar(times[0])
    x_t = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=generator)
    x0 = x
    for t_now, t_next in zip(times[:-1], times[1:]):
        x0 = model(x_t, t_now.expand(x.shape[0])).clamp(-1, 1)
        a_now, a_next = alpha_bar(t_now), alpha_bar(t_next)
        eps = (x_t - a_now.sqrt() * x0) / (1 - a_now).sqrt()
        x_t = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x0


@torch.no_grad()
def regenerate(model: torch.nn.Module, cfg: FamilyConfig, images: np.ndarray, *,
               masks: np.ndarray | None = None, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """Regenerations of ``images`` (uint8 [N, H, W, 3], H and W multiples of 8), same shape.

    ``masks`` (bool [N, H, W]) limits the change to the pixels where it is True. ``seed`` fixes
    the SDEdit noise, so the same call gives the same bytes.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % 8 or images.shape[2] % 8:
        raise ValueError(f"images must be uint8 [N, H, W, 3] with H, W multiples of 8, got {images.shape}")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    out = np.empty_like(images)
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size])
        y = sdedit(model, cfg, x, generator) if cfg.kind == "diffusion" else model(x)
        out[start:start + batch_size] = to_uint8(y)
    if masks is not None:
        out = np.where(masks[..., None], out, images)
    return out


def random_masks(count: int, size: int, rng: np.random.Generator,
                 area: tuple[float, float] = (0.15, 0.5)) -> np.ndarray:
    """bool [count, size, size]: one axis-aligned rectangle or ellipse each, covering a fraction
    of the image drawn from ``area`` (inpainting masks are usually one blob); the data layer's
    ``region_masks``, which the generator-agnostic manipulations share."""
    return region_masks(count, size, size, rng, area)


def stroke_masks(count: int, size: int, rng: np.random.Generator,
                 area: tuple[float, float] = (0.1, 0.35)) -> np.ndarray:
    """bool [count, size, size]: free-form brush strokes (a random walk of discs of random width, as
    LaMa's and DeepFill's irregular training masks are drawn) until a share of the image drawn from
    ``area`` is covered. Another shape process than ``region_masks``' one rectangle or ellipse, so a
    detector that learned the blob's outline (GAMMA trains on those) has not seen it."""
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((count, size, size), dtype=bool)
    for i in range(count):
        target = rng.uniform(*area)
        y, x = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        while masks[i].mean() < target:
            radius = rng.uniform(0.03, 0.08) * size
            for _ in range(int(rng.integers(4, 12))):  # one stroke: a few steps in a wandering direction
                angle += rng.normal(0, 0.6)
                y = float(np.clip(y + np.sin(angle) * radius, 0, size - 1))
                x = float(np.clip(x + np.cos(angle) * radius, 0, size - 1))
                masks[i] |= (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2
            if rng.random() < 0.3:  # lift the brush: the next stroke starts elsewhere
                y, x = rng.uniform(0, size, 2)
    return masks


def family_masks(cfg: FamilyConfig, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The masks a family draws its partial fakes with: ``stroke_masks`` or ``random_masks``."""
    return stroke_masks(count, size, rng) if cfg.mask_shape == "strokes" else random_masks(count, size, rng)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 image stacks (infinite when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def high_frequency_ratio(images: np.ndarray, cutoff: float = 0.25) -> float:
    """Share of spectral power (mean-removed grayscale) at radial frequency above ``cutoff``
    cycles/pixel (Nyquist is 0.5): decoders change it, by blurring or by adding upsampling peaks."""
    gray = images.astype(np.float64).mean(axis=-1)
    gray -= gray.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(gray)) ** 2
    fy = np.fft.fftfreq(gray.shape[1])[:, None]
    fx = np.fft.fftfreq(gray.shape[2])[None, :]
    high = np.sqrt(fy ** 2 + fx ** 2) > cutoff
    return float(power[:, high].sum() / max(power.sum(), 1e-12))
