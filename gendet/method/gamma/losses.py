"""GAMMA's targets and losses: the image BCE, head 1's per-token BCE and soft Dice, head 2's
per-token cross-entropy (``gamma_loss``), and the targets they are taken against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from gendet.encoders.tokens import grid_fractions
from gendet.method.gamma.config import GammaConfig
from gendet.method.gamma.networks import GammaOutput


def source_targets(generated: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
    """Head 2's targets [N, T] (long): ``family[n]`` (1..K-1; 0 for reals) where at least half of
    a token's pixels were generated (``generated`` [N, T], a generated-pixel share per token), else
    0 (camera)."""
    return torch.where(generated >= 0.5, family.long()[:, None].expand_as(generated), torch.zeros_like(family.long()[:, None]))


def gamma_loss(out: GammaOutput, labels: torch.Tensor, token_masks: torch.Tensor | None,
               token_sources: torch.Tensor | None, cfg: GammaConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE (image) + ``seg_weight`` x per-token BCE (head 1, soft targets) [+ ``dice_weight`` x soft
    Dice of head 1 on the images with a manipulated token] + ``source_weight`` x per-token CE
    (head 2); (total, the parts as floats)."""
    loss = F.binary_cross_entropy_with_logits(out.cls_logit, labels.float())
    parts = {"cls": float(loss.detach())}
    if out.seg_logits is not None and token_masks is not None:
        target = token_masks.float()
        seg = F.binary_cross_entropy_with_logits(out.seg_logits, target)
        loss = loss + cfg.seg_weight * seg
        parts["seg"] = float(seg.detach())
        touched = target.sum(1) > 0
        if cfg.dice_weight and bool(touched.any()):
            prob, target = torch.sigmoid(out.seg_logits[touched]), target[touched]
            dice = 1 - ((2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)).mean()
            loss = loss + cfg.dice_weight * dice
            parts["dice"] = float(dice.detach())
    if out.source_logits is not None and token_sources is not None:
        src = F.cross_entropy(out.source_logits.flatten(0, 1), token_sources.long().flatten())
        loss = loss + cfg.source_weight * src
        parts["source"] = float(src.detach())
    return loss, parts


@dataclass(frozen=True)
class GammaTargets:
    labels: torch.Tensor
    """[N] long, 1 = fake."""
    token_masks: torch.Tensor | None
    """[N, T] float, head 1 (None without seg heads)."""
    token_sources: torch.Tensor | None
    """[N, T] long, head 2's class per token (None without seg heads)."""


def token_targets(pixel_masks_: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Head 1's targets from pixel masks [N, H, W] already on the token canvas: area fractions
    [N, T] (``grid_fractions``; ``Encoder.token_mask`` does it from an image's own mask)."""
    return grid_fractions(pixel_masks_, grid)
