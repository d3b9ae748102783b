"""The zoo's networks, built from a ``FamilyConfig``: small convolutional autoencoders (four
upsampling styles), a vector quantiser, a patch discriminator and a small diffusion U-Net.

Images enter and leave as float tensors in [-1, 1], shape [B, 3, H, W], H and W multiples of 8.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gendet.zoo.config import FamilyConfig


def upsample_block(cin: int, cout: int, mode: str) -> nn.Module:
    """A 2x upsampling step in the family's style: its spectral fingerprint."""
    if mode == "deconv":  # kernel 3, stride 2: uneven overlap, the classic checkerboard
        return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    if mode == "pixelshuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    if mode in ("nearest", "bilinear"):
        up = nn.Upsample(scale_factor=2, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
        return nn.Sequential(up, nn.Conv2d(cin, cout, 3, padding=1))
    raise ValueError(f"unknown upsampling {mode!r}")


def _stage_channels(cfg: FamilyConfig) -> list[int]:
    """Channels after each downsampling stage: width, 2*width, 2*width, ..."""
    stages = int(math.log2(cfg.downsample))
    return [cfg.width * min(2, 2 ** i) for i in range(1, stages + 1)]


class Encoder(nn.Module):
    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.width, 3, padding=1), nn.SiLU()]
        cin = cfg.width
        for cout in _stage_channels(cfg):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.SiLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU()]
            cin = cout
        layers.append(nn.Conv2d(cin, cfg.latent_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        chans = list(reversed(_stage_channels(cfg))) + [cfg.width]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1), nn.SiLU()]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [upsample_block(cin, cout, cfg.upsample), nn.SiLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(chans[-1], 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient (VQ-VAE / VQGAN)."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, dim)
        self.beta = beta

    def init_from(self, z: torch.Tensor, generator: torch.Generator) -> None:
        """Start the codebook at latent vectors of real data (no dead codes at step 0)."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = torch.randint(flat.shape[0], (self.codebook.num_embeddings,), generator=generator)
        self.codebook.weight.data.copy_(flat[idx])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        codes = torch.cdist(flat, self.codebook.weight).argmin(dim=1)
        q = self.codebook(codes).view(b, h, w, c).permute(0, 3, 1, 2)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), loss


class Autoencoder(nn.Module):
    """Encoder -> (optional quantiser) -> decoder; ``forward`` returns the regeneration."""

    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.latent_channels) if cfg.kind == "vq" else None

    def forward_with_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        vq_loss = x.new_zeros(())
        if self.quantizer is not None:
            z, vq_loss = self.quantizer(z)
        return self.decoder(z), vq_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_loss(x)[0]


class PatchDiscriminator(nn.Module):
    """Scores overlapping patches real (high) or regenerated (low), as PatchGAN / VQGAN do."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width * 2, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width * 2, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cosine noise schedule (Nichol & Dhariwal): signal fraction at time t in [0, 1]."""
    s = 0.008
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(torch.arange(dim // 2, dtype=torch.float32) * (-math.log(1000.0) / (dim // 2)))
    angles = t[:, None] * 1000.0 * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class DenoiserUNet(nn.Module):
    """A two-level U-Net with skip connections that predicts the clean image x0 from (x_t, t)."""

    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        w, w2 = cfg.width, cfg.width * 2
        self.temb = nn.Sequential(nn.Linear(32, w2), nn.SiLU(), nn.Linear(w2, w2))
        self.inp = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.SiLU())
        self.down1 = nn.Sequential(nn.Conv2d(w, w2, 4, stride=2, padding=1), nn.SiLU())
        self.down2 = nn.Sequential(nn.Conv2d(w2, w2, 4, stride=2, padding=1), nn.SiLU())
        self.mid = nn.Sequential(nn.Conv2d(w2, w2, 3, padding=1), nn.SiLU(), nn.Conv2d(w2, w2, 3, padding=1))
        self.up2 = upsample_block(w2, w2, cfg.upsample)
        self.merge2 = nn.Sequential(nn.SiLU(), nn.Conv2d(w2 * 2, w2, 3, padding=1), nn.SiLU())
        self.up1 = upsample_block(w2, w, cfg.upsample)
        self.merge1 = nn.Sequential(nn.SiLU(), nn.Conv2d(w * 2, w, 3, padding=1), nn.SiLU())
        self.out = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h0 = self.inp(x_t)
        h1 = self.down1(h0)
        h2 = self.down2(h1) + self.temb(_time_embedding(t, 32))[:, :, None, None]
        h = self.mid(h2) + h2
        h = self.merge2(torch.cat([self.up2(h), h1], dim=1))
        h = self.merge1(torch.cat([self.up1(h), h0], dim=1))
        return self.out(h)


def build_model(cfg: FamilyConfig) -> nn.Module:
    """The family's generator (discriminators are training-only and built in ``train``)."""
    return DenoiserUNet(cfg) if cfg.kind == "diffusion" else Autoencoder(cfg)
