"""Detector-informed generative alignment (UniGenDet's idea, at the zoo's scale).

A zoo generator G is fine-tuned on real photos x with

    loss = fidelity_weight · (L1(G(x), x) [+ the VQ commitment loss for vq])
         + align_weight · mean(1 − cos(φ(G(x)), φ(x)))

where φ is the frozen champion's representation (``gendet.coevolve.representation``: the
encoder's features through the detector's networks up to its classifier's input, for GenDet the
teacher–student discrepancy). REPA-style: the target is the paired real photo that G regenerates,
so the alignment pulls each fake's detector representation to its own source's. L1 to the photo is
every autoencoder's own reconstruction objective; for ``sdedit`` it is applied to the output of the
whole DDIM trajectory (gradients flow through every step). GAN discriminators are not shipped, so
``gan_f8`` trains without its adversarial term.

Which parameters train (``AlignConfig.train``): ``decoder`` (autoencoders: the decoder only, the
latent code stays the base model's; sdedit: the U-Net's upsampling path), ``all``, or ``auto``
(decoder for autoencoders, all of the denoiser for sdedit).

``align_generator`` returns the tuned generator, the per-step history and metrics before and after
on held-out photos: PSNR and SSIM against the photo, mean φ cosine distance, and the champion's
catch rate (share of the regenerations scored fake at its calibrated threshold, on the real
extraction path).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from gendet.coevolve.representation import Representation, ssim
from gendet.config import check
from gendet.method.gendet.detector import Detector
from gendet.zoo.config import FAMILIES, FamilyConfig, family_config
from gendet.zoo.photos import collect_photos, random_crops
from gendet.zoo.regenerate import psnr, regenerate, sdedit_trajectory, to_tensor

log = logging.getLogger(__name__)

TRAINABLE = ("auto", "decoder", "all")


@dataclass(frozen=True, kw_only=True, slots=True)
class AlignConfig:
    """One alignment run of one generator against one frozen detector."""

    family: str = "sdedit"
    """The zoo family whose architecture G has (its weights may be a previous round's)."""
    steps: int = 60
    lr: float = 3e-4
    batch_size: int = 8
    crop_size: int = 64
    """Training and evaluation crops, pixels (multiple of 8)."""
    align_weight: float = 1.0
    """λ: weight of 1 − cos(φ(G(x)), φ(x))."""
    fidelity_weight: float = 1.0
    """Weight of L1(G(x), x)."""
    train: str = "auto"
    """Parameters that train: auto, decoder or all (module docstring)."""
    seed: int = 0
    crops_per_photo: int = 8
    """Training crops per train-split photo."""
    eval_crops_per_photo: int = 4
    """Held-out crops per photo of ``eval_splits`` (metrics before/after)."""
    eval_splits: tuple[str, ...] = ("test",)
    sources: tuple[str, ...] = ()
    """Photo sources (gendet.zoo.photos); empty = every installed one."""

    def __post_init__(self) -> None:
        check(self.family in FAMILIES, f"family {self.family!r}: choose one of {', '.join(FAMILIES)}")
        check(self.steps >= 1, f"steps {self.steps} must be >= 1")
        check(self.lr > 0, f"lr {self.lr} must be > 0")
        check(self.batch_size >= 1, f"batch_size {self.batch_size} must be >= 1")
        check(self.crop_size % 8 == 0 and 16 <= self.crop_size <= 256, f"crop_size {self.crop_size}: a multiple of 8 in 16..256")
        check(self.align_weight >= 0 and self.fidelity_weight >= 0, "align_weight and fidelity_weight must be >= 0")
        check(self.align_weight + self.fidelity_weight > 0, "align_weight and fidelity_weight are both 0: nothing to train")
        check(self.train in TRAINABLE, f"train {self.train!r}: choose one of {', '.join(TRAINABLE)}")
        check(self.crops_per_photo >= 1 and self.eval_crops_per_photo >= 1,
              "crops_per_photo and eval_crops_per_photo must be >= 1")
        check(bool(self.eval_splits) and set(self.eval_splits) <= {"train", "val", "test"},
              f"eval_splits {self.eval_splits}: a non-empty subset of train, val, test")
        check("train" not in self.eval_splits, "eval_splits must not contain train: the metrics are on held-out photos")


@dataclass
class AlignResult:
    model: torch.nn.Module
    family: FamilyConfig
    history: list[dict[str, float]] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def photo_crops(cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training crops of train-split photos, held-out crops of ``eval_splits`` photos), uint8."""
    photos, _ = collect_photos(tuple(cfg.sources) or None, min_side=cfg.crop_size, log=lambda _msg: None)
    rng = np.random.default_rng(cfg.seed)
    empty = np.zeros((0, cfg.crop_size, cfg.crop_size, 3), np.uint8)

    def crops(splits: tuple[str, ...], per_photo: int) -> np.ndarray:
        chosen = [random_crops(p, per_photo, cfg.crop_size, rng) for p in photos if p.split in splits]
        return np.concatenate(chosen) if chosen else empty

    return crops(("train",), cfg.crops_per_photo), crops(tuple(cfg.eval_splits), cfg.eval_crops_per_photo)


def trainable_parameters(model: torch.nn.Module, fcfg: FamilyConfig, train: str) -> list[torch.nn.Parameter]:
    if train == "all" or (train == "auto" and fcfg.kind == "diffusion"):
        return list(model.parameters())
    if fcfg.kind == "diffusion":  # the U-Net's upsampling path
        return [p for name, p in model.named_parameters() if name.split(".")[0] in ("up2", "merge2", "up1", "merge1", "out")]
    return list(model.decoder.parameters())


def generate(model: torch.nn.Module, fcfg: FamilyConfig, x: torch.Tensor,
             g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(G(x) with gradients, the family's extra loss: VQ commitment or 0)."""
    if fcfg.kind == "diffusion":
        return sdedit_trajectory(model, fcfg, x, g), x.new_zeros(())
    return model.forward_with_loss(x)


def evaluate_generator(model: torch.nn.Module, fcfg: FamilyConfig, phi: Representation, photos: np.ndarray,
                       seed: int) -> dict[str, float]:
    """Fidelity and evasion of G on held-out photos (uint8): PSNR, SSIM, φ distance, catch rate."""
    fakes = regenerate(model, fcfg, photos, seed=seed)
    with torch.no_grad():
        dist = torch.cat([phi.cosine_distance(to_tensor(fakes[i:i + 64]), to_tensor(photos[i:i + 64]))
                          for i in range(0, len(photos), 64)])
    return {"psnr": psnr(fakes, photos), "ssim": ssim(fakes, photos), "phi_distance": float(dist.mean()),
            "caught": float(phi.caught(fakes).mean()), "real_flagged": float(phi.caught(photos).mean()),
            "images": float(len(photos))}


def align_generator(cfg: AlignConfig, detector: Detector, *, model: torch.nn.Module | None = None,
                    crops: tuple[np.ndarray, np.ndarray] | None = None, log_every: int = 0) -> AlignResult:
    """Fine-tune G (``model``, default the zoo's weights of ``cfg.family``) against the frozen
    ``detector``; ``crops`` = (train, held-out) uint8 crops (default ``photo_crops(cfg)``)."""
    from gendet.zoo.train import load_or_train

    fcfg = family_config(cfg.family)
    phi = Representation(copy.deepcopy(detector))  # frozen here, the caller's detector untouched
    train_crops, eval_crops = crops if crops is not None else photo_crops(cfg)
    if not len(train_crops) or not len(eval_crops):
        from gendet import GendetError

        raise GendetError(f"no photos for alignment at {cfg.crop_size} px (train {len(train_crops)}, held-out "
                          f"{len(eval_crops)} crops); install the demo's photo packages or lower crop_size")
    model = copy.deepcopy(model) if model is not None else load_or_train(fcfg, progress=False)[0]
    torch.manual_seed(cfg.seed)
    result = AlignResult(model=model, family=fcfg)
    result.before = evaluate_generator(model, fcfg, phi, eval_crops, cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = trainable_parameters(model, fcfg, cfg.train)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    pool = to_tensor(train_crops)
    start = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(pool), (cfg.batch_size,), generator=g)
        x = pool[idx]
        x = torch.where((torch.rand(len(x), generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
        y, extra = generate(model, fcfg, x, g)
        fidelity = F.l1_loss(y, x) + extra
        align = phi.cosine_distance(y, x).mean() if cfg.align_weight > 0 else y.new_zeros(())
        loss = cfg.fidelity_weight * fidelity + cfg.align_weight * align
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        result.history.append({"step": step, "loss": loss.item(), "fidelity": fidelity.item(), "align": align.item()})
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            log.info("align %s step %d: %s", cfg.family, step,
                     " ".join(f"{k}={v:.4f}" for k, v in result.history[-1].items() if k != "step"))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    result.seconds = time.perf_counter() - start
    result.after = evaluate_generator(model, fcfg, phi, eval_crops, cfg.seed)
    return result


def summary(result: AlignResult) -> dict[str, Any]:
    """JSON-ready: metrics before/after, first and last losses, seconds."""
    h = result.history
    return {"family": result.family.name, "before": result.before, "after": result.after, "seconds": round(result.seconds, 2),
            "steps": len(h), "first": h[0] if h else None, "last": h[-1] if h else None}
