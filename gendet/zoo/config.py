"""The zoo's architectures as data: one frozen, validated ``FamilyConfig`` per generator family.

Families differ where real generators differ, so each leaves its own fingerprint:

| family | kind | decoder upsampling | latent downsampling | like |
| --- | --- | --- | --- | --- |
| ``ae_deconv_f4`` | autoencoder | transposed conv (checkerboard) | 4 | early LDM / DCGAN decoders |
| ``ae_nearest_f8`` | autoencoder | nearest + conv | 8 | Stable Diffusion's VAE decoder |
| ``ae_bilinear_f4`` | autoencoder | bilinear + conv | 4 | smooth-upsampling decoders |
| ``ae_shuffle_f8`` | autoencoder | pixel shuffle | 8 | sub-pixel (ESPCN-style) decoders |
| ``vq_f4`` | vector-quantised AE | nearest + conv | 4 | VQGAN / VQDM |
| ``gan_f8`` | AE + patch discriminator | transposed conv | 8 | GAN generators |
| ``sdedit`` | pixel diffusion denoiser | bilinear + conv (U-Net) | 4 (U-Net depth) | SDEdit on a DDPM |
| ``inpaint_f8`` | autoencoder, fakes masked | nearest + conv | 8 | SD inpainting (partial fakes) |
| ``inpaint_strokes_f4`` | autoencoder, fakes masked by brush strokes | pixel shuffle | 4 | LaMa-style inpainting |

Everything works at ``crop_size`` 64 px and trains on 32 px patches (CPU training in about a
minute per family on 2 cores);
the networks are fully convolutional, so they regenerate any multiple of 8. ``config_hash`` keys
the weights: any change to a field gives new weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from gendet import GendetError
from gendet.config import check, to_dict

Kind = Literal["autoencoder", "vq", "gan", "diffusion"]
Upsample = Literal["deconv", "nearest", "bilinear", "pixelshuffle"]
KINDS = ("autoencoder", "vq", "gan", "diffusion")
UPSAMPLES = ("deconv", "nearest", "bilinear", "pixelshuffle")


@dataclass(frozen=True, kw_only=True, slots=True)
class FamilyConfig:
    """One generator family: architecture and training recipe."""

    name: str
    """Family name; it is the ``subset`` of its samples."""
    kind: Kind
    """autoencoder, vq (vector-quantised), gan (adversarial decoder) or diffusion (SDEdit)."""
    upsample: Upsample
    """How the decoder grows resolution: its main fingerprint."""
    downsample: int = 4
    """Latent downsampling factor (4 or 8); the U-Net depth for diffusion."""
    width: int = 16
    """Channels of the first stage (doubled once deeper)."""
    latent_channels: int = 8
    """Channels of the latent; with ``downsample`` it sets how much detail survives."""
    codebook_size: int = 0
    """vq only: number of code vectors."""
    adv_weight: float = 0.0
    """gan only: weight of the hinge adversarial loss next to L1."""
    sdedit_strength: float = 0.0
    """diffusion only: how far (0..1 of the noise schedule) real images are noised before denoising."""
    sdedit_steps: int = 0
    """diffusion only: deterministic DDIM steps from ``sdedit_strength`` back to 0."""
    steps: int = 1000
    """Training steps (batches)."""
    batch_size: int = 16
    lr: float = 3e-3
    crop_size: int = 64
    """Size of the crops in the training pool, in pixels."""
    train_patch: int = 32
    """Training patches cut from the pool's crops: a fully convolutional net learns the same
    filters on 32 px patches at a quarter of the cost of 64 px crops."""
    seed: int = 0
    mask_fraction: float = 0.0
    """Share of this family's fakes regenerated only inside a random mask (inpainting
    generators); ``gendet zoo --masked-fraction`` applies to families where it is 0."""
    mask_shape: Literal["blob", "strokes"] = "blob"
    """The masks' shape process: one rectangle or ellipse (``region_masks``, GAMMA's manipulations
    draw the same) or free-form brush strokes (``stroke_masks``)."""

    def __post_init__(self) -> None:
        check(bool(self.name) and self.name.replace("_", "").isalnum(), f"family name {self.name!r}: use letters, digits and _")
        check(self.kind in KINDS, f"{self.name}: kind {self.kind!r} not in {KINDS}")
        check(self.upsample in UPSAMPLES, f"{self.name}: upsample {self.upsample!r} not in {UPSAMPLES}")
        check(self.downsample in (4, 8), f"{self.name}: downsample {self.downsample} must be 4 or 8")
        check(4 <= self.width <= 256, f"{self.name}: width {self.width} must be in 4..256")
        check(1 <= self.latent_channels <= 256, f"{self.name}: latent_channels {self.latent_channels} must be in 1..256")
        check((self.codebook_size >= 2) == (self.kind == "vq"), f"{self.name}: codebook_size >= 2 exactly when kind is vq")
        check((self.adv_weight > 0) == (self.kind == "gan"), f"{self.name}: adv_weight > 0 exactly when kind is gan")
        diffusion = self.kind == "diffusion"
        check((0 < self.sdedit_strength < 1) == diffusion,
              f"{self.name}: sdedit_strength in (0, 1) exactly when kind is diffusion")
        check((self.sdedit_steps >= 1) == diffusion, f"{self.name}: sdedit_steps >= 1 exactly when kind is diffusion")
        check(self.steps >= 1 and self.batch_size >= 1 and self.lr > 0, f"{self.name}: steps, batch_size and lr must be positive")
        check(self.train_patch % 8 == 0 and 16 <= self.train_patch <= self.crop_size,
              f"{self.name}: train_patch {self.train_patch} must be a multiple of 8 in 16..crop_size")
        check(self.crop_size % 8 == 0 and 16 <= self.crop_size <= 256,
              f"{self.name}: crop_size {self.crop_size} must be a multiple of 8 in 16..256")
        check(0.0 <= self.mask_fraction <= 1.0, f"{self.name}: mask_fraction {self.mask_fraction} must be in [0, 1]")
        check(self.mask_shape in ("blob", "strokes"), f"{self.name}: mask_shape {self.mask_shape!r}; use blob or strokes")


# Fields added after weights were first shipped: they enter the hash only when set, so adding
# one leaves every existing family's hash (and its shipped weights) valid.
_LATER_FIELDS = {"mask_fraction": 0.0, "mask_shape": "blob"}


def config_hash(cfg: FamilyConfig) -> str:
    """First 16 hex digits of the SHA-256 of the config's canonical JSON: the weights' key."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _families() -> dict[str, FamilyConfig]:
    table = [
        FamilyConfig(name="ae_deconv_f4", kind="autoencoder", upsample="deconv", downsample=4, latent_channels=8),
        FamilyConfig(name="ae_nearest_f8", kind="autoencoder", upsample="nearest", downsample=8, latent_channels=32),
        FamilyConfig(name="ae_bilinear_f4", kind="autoencoder", upsample="bilinear", downsample=4, latent_channels=16),
        FamilyConfig(name="ae_shuffle_f8", kind="autoencoder", upsample="pixelshuffle", downsample=8, latent_channels=32),
        FamilyConfig(name="vq_f4", kind="vq", upsample="nearest", downsample=4, latent_channels=16, codebook_size=512),
        FamilyConfig(name="gan_f8", kind="gan", upsample="deconv", downsample=8, latent_channels=32, adv_weight=0.02),
        FamilyConfig(name="sdedit", kind="diffusion", upsample="bilinear", downsample=4,
                     latent_channels=1, sdedit_strength=0.2, sdedit_steps=5),
        # SD-inpainting's decoder is SD's VAE: ae_nearest_f8's architecture, but every fake is
        # regenerated only inside one blob of 15-50 % of the crop. The rest is the real photo, so
        # the fingerprint is diluted: the zoo's hard family on purpose (experiments/results/zoo.md).
        FamilyConfig(name="inpaint_f8", kind="autoencoder", upsample="nearest", downsample=8, latent_channels=32,
                     mask_fraction=1.0),
        # A partial-fake family no training process of the zoo shares: another decoder (pixel shuffle
        # at f4, a pairing no other family has), its own seed, and brush-stroke masks instead of the one
        # blob GAMMA's inpaint manipulations and inpaint_f8 draw. GAMMA's held-out partial fakes (issue 24).
        FamilyConfig(name="inpaint_strokes_f4", kind="autoencoder", upsample="pixelshuffle", downsample=4,
                     latent_channels=16, seed=24, mask_fraction=1.0, mask_shape="strokes"),
    ]
    return {f.name: f for f in table}


FAMILIES: dict[str, FamilyConfig] = _families()


def same_generator(a: str, b: str) -> bool:
    """Whether two families regenerate with the same network (architecture, recipe and seed: the same
    weights), whatever they do with it (``inpaint_f8`` is ``ae_nearest_f8`` inside a mask): a
    detector trained on one has seen the other's generator."""
    def network(name: str) -> dict:
        return {k: v for k, v in to_dict(family_config(name)).items() if k not in ("name", "mask_fraction")}

    return a != b and network(a) == network(b)


def family_config(name: str) -> FamilyConfig:
    try:
        return FAMILIES[name]
    except KeyError:
        raise GendetError(f"unknown zoo family {name!r}; choose from {', '.join(FAMILIES)}") from None


def parse_families(text: str | None) -> tuple[str, ...]:
    """``"a,b"`` -> ("a", "b") checked against the zoo; None or "" or "all" -> every family."""
    if not text or text == "all":
        return tuple(FAMILIES)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for n in names:
        family_config(n)
    return names
