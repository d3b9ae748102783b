"""GAMMA's configuration: the network and its training, every field checked before any work."""

from __future__ import annotations

from dataclasses import dataclass

from gendet.config import check, check_finite


@dataclass(frozen=True, kw_only=True, slots=True)
class GammaConfig:
    """The GAMMA network and its training; every field checked before any work."""

    width: int = 128
    """Width of the trunk and heads (token features are projected to it)."""
    layers: int = 2
    """Transformer blocks in the shared trunk."""
    heads: int = 4
    """Attention heads (trunk and reverse cross-attention); must divide ``width``."""
    mlp_ratio: float = 2.0
    """MLP expansion ratio of each transformer block."""
    seg_heads: bool = True
    """The two segmentation heads (False: the ablation without them, and so without reverse attention)."""
    reverse_attention: bool = True
    """The classification token attends over the segmentation features (False: the ablation)."""
    seg_weight: float = 1.0
    """Weight of head 1's per-token BCE beside the classification BCE."""
    source_weight: float = 0.5
    """Weight of head 2's per-token cross-entropy."""
    dice_weight: float = 2.0
    """Weight of a soft Dice loss on head 1 over the images with a manipulated token (0: BCE alone).
    Per-token BCE on mostly-authentic grids pulls probabilities down (masks under-segment at 0.5);
    Dice scores the overlap itself: inpaint_f8 mask IoU 0.28 -> 0.35 at 0.5 with weight 1, image
    accuracy alike (experiments/results/gamma-ablation-cpu2.md, 3 seeds); weight 2 with ``seg_context``
    (experiments/results/gamma-ablation-cpu2-x5.md)."""
    epochs: int = 30
    """Passes over the training rows."""
    batch_size: int = 64
    """Rows per optimisation step, per worker."""
    lr: float = 1e-3
    """Peak learning rate of AdamW's one-cycle schedule."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Seeds the initial weights and every epoch's shuffle."""
    mask_threshold: float = 0.5
    """Threshold on the upsampled token probabilities that makes a pixel mask."""
    seg_context: int = 4
    """3 x 3 convolutions over the token grid in segmentation head 1 (``GridContext``; 0 = none):
    manipulated regions are contiguous, so a token's neighbours vote on it (4 layers: 9 x 9 tokens;
    experiments/results/gamma-ablation-cpu2-x5.md)."""

    def __post_init__(self) -> None:
        check_finite(self)
        check(self.width >= 8 and self.heads >= 1 and self.width % self.heads == 0,
              f"width {self.width} must be >= 8 and a multiple of heads {self.heads}")
        check(self.layers >= 1 and self.mlp_ratio > 0, f"layers {self.layers} must be >= 1 and mlp_ratio > 0")
        check(self.seg_heads or not self.reverse_attention,
              "reverse_attention needs seg_heads (it reads their features); set reverse_attention=False too")
        check(self.seg_weight >= 0 and self.source_weight >= 0 and self.dice_weight >= 0,
              "seg_weight, source_weight and dice_weight must be >= 0")
        check(self.epochs >= 1 and self.batch_size >= 1 and self.lr > 0 and self.weight_decay >= 0,
              "epochs, batch_size and lr must be positive, weight_decay >= 0")
        check(0.0 < self.mask_threshold < 1.0, f"mask_threshold {self.mask_threshold} must be in (0, 1)")
        check(self.seg_context >= 0, f"seg_context {self.seg_context} must be >= 0")
