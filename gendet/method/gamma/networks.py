"""GAMMA (Yan et al. 2025, arXiv 2509.10250; issue 13): a classification head and two segmentation
heads over an image's token grid, with reverse cross-attention from the segmentation branch into
the classifier. Pure torch; in-memory training here (``GammaTrainer``, resumable), token-store rows in
``gendet.method.gamma.trainer``, Ray Train in ``pipelines/train_gamma.py``.

Input: a token grid [B, T, D] (``gendet.encoders.tokens``: open_clip patch tokens or spectrum
patch measurements), T = rows x cols, row-major.

What each head predicts (decided):
* **classification** (``cls_logit`` [B]): the image is fake, i.e. wholly generated *or*
  manipulated anywhere (label 1; BCE).
* **segmentation head 1, manipulation** (``seg_logits`` [B, T]): the share of a token's pixels that
  are manipulated, as ``gendet.data.manipulations`` defines it (spliced, inpainted, copy-moved or
  locally perturbed: not captured there by this image's camera). Target: the pixel mask averaged
  over each token's area (``gendet.encoders.tokens.grid_fractions``), so edge tokens get soft
  targets; per-token BCE plus a soft Dice term over the images with a manipulated token. Reals:
  all 0; wholly generated fakes (no mask stored): all 1. Its features pass through ``seg_context``
  3 x 3 convolutions over the grid (``GridContext``) before its output layer: regions are blobs.
* **segmentation head 2, source attribution** (``source_logits`` [B, T, K]): which source made the
  majority of a token's pixels: class 0 = a camera (authentic pixels, and copy-moved or perturbed
  ones, which no generator made), class k >= 1 = generator family k of the training families
  (``source_targets``); per-token cross-entropy.
* **reverse cross-attention**: the classification token (a learned query run through the shared
  trunk) attends over both heads' hidden features [B, 2T, W] and adds the result to itself before
  the classification head reads it, so what the segmentation branch found steers the image
  decision (the paper: the heads "guide and correct biased representations" of the classifier).

Ablations (``GammaConfig``): ``reverse_attention=False`` (the heads are trained but the classifier
never reads them), ``seg_heads=False`` (no segmentation heads, no reverse attention: a token
transformer with a classification head); "no manipulations" is a data choice, outside the model.

Output masks: ``pixel_masks`` upsamples head 1's token probabilities bilinearly to pixels and
thresholds them at 0.5; the fake-region fraction is the mask's mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gendet.config import check, from_dict, to_dict
from gendet.method.gamma.config import GammaConfig
from gendet.method.gendet.networks import Block


@dataclass(frozen=True, slots=True)
class GammaOutput:
    cls_logit: torch.Tensor
    """[B]: logit of the image being fake."""
    seg_logits: torch.Tensor | None
    """[B, T]: head 1, logit of each token being manipulated (None without seg heads)."""
    source_logits: torch.Tensor | None
    """[B, T, K]: head 2, logits over (camera, family 1..K-1) per token (None without seg heads)."""


def _head(width: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))


class GridContext(nn.Module):
    """``layers`` residual blocks over [B, T, W] tokens laid out on their grid: a per-token LayerNorm,
    a 3 x 3 convolution, GELU. Strictly local (each layer reaches one token further), so what it adds
    is the neighbourhood, not the image's statistics."""

    def __init__(self, width: int, grid: tuple[int, int], layers: int):
        super().__init__()
        self.grid = grid
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        for norm, conv in zip(self.norms, self.convs):
            maps = norm(x).transpose(1, 2).reshape(b, w, *self.grid)
            x = x + F.gelu(conv(maps)).flatten(2).transpose(1, 2)
        return x


class GammaNet(nn.Module):
    """Token grid [B, T, D] -> ``GammaOutput`` (module docstring); ``num_sources`` = K."""

    def __init__(self, token_dim: int, grid: tuple[int, int], num_sources: int, cfg: GammaConfig):
        super().__init__()
        check(token_dim >= 1 and min(grid) >= 1, f"token_dim {token_dim} and grid {grid} must be positive")
        check(num_sources >= 2, f"num_sources {num_sources} must be >= 2 (camera + at least one family)")
        self.token_dim, self.grid, self.num_sources, self.cfg = token_dim, tuple(grid), num_sources, cfg
        w, t = cfg.width, grid[0] * grid[1]
        self.embed = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, w))
        self.pos = nn.Parameter(torch.randn(1, t, w) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.trunk = nn.Sequential(*[Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)])
        if cfg.seg_heads:
            self.seg_features, self.source_features = _head(w), _head(w)
            self.seg_context = GridContext(w, self.grid, cfg.seg_context)
            self.seg_out, self.source_out = nn.Linear(w, 1), nn.Linear(w, num_sources)
        if cfg.reverse_attention:
            self.query_norm, self.memory_norm = nn.LayerNorm(w), nn.LayerNorm(w)
            self.reverse = nn.MultiheadAttention(w, cfg.heads, batch_first=True)
        self.cls_out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1))

    def spec(self) -> dict:
        """What rebuilds this network (saved beside its weights, like ``detector.json``'s arch)."""
        return {"token_dim": self.token_dim, "grid": list(self.grid), "num_sources": self.num_sources,
                "config": to_dict(self.cfg)}

    @classmethod
    def from_spec(cls, spec: dict) -> GammaNet:
        # Models saved before seg_context existed have no grid convolutions: rebuild them so.
        config = {"seg_context": 0, **spec["config"]}
        return cls(spec["token_dim"], tuple(spec["grid"]), spec["num_sources"], from_dict(GammaConfig, config))

    def forward(self, tokens: torch.Tensor) -> GammaOutput:
        b, t, d = tokens.shape
        if (t, d) != (self.grid[0] * self.grid[1], self.token_dim):
            want = f"[B, {self.grid[0] * self.grid[1]}, {self.token_dim}]"
            raise ValueError(f"GAMMA expects {want} tokens, got {tuple(tokens.shape)}")
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.embed(tokens) + self.pos], 1)
        x = self.trunk(x)
        cls, patches = x[:, :1], x[:, 1:]
        seg = source = None
        if self.cfg.seg_heads:
            seg_h, source_h = self.seg_context(self.seg_features(patches)), self.source_features(patches)
            seg, source = self.seg_out(seg_h).squeeze(-1), self.source_out(source_h)
            if self.cfg.reverse_attention:
                memory = self.memory_norm(torch.cat([seg_h, source_h], 1))
                cls = cls + self.reverse(self.query_norm(cls), memory, memory, need_weights=False)[0]
        return GammaOutput(cls_logit=self.cls_out(cls[:, 0]).squeeze(-1), seg_logits=seg, source_logits=source)


@torch.no_grad()
def predict_gamma(net: GammaNet, tokens: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``score`` [N] P(fake); with seg heads ``token_probs`` [N, T] (P(manipulated) per token) and
    ``source_probs`` [N, T, K]."""
    net.eval()
    parts: dict[str, list[torch.Tensor]] = {"score": [], "token_probs": [], "source_probs": []}
    for start in range(0, len(tokens), batch_size):
        out = net(tokens[start:start + batch_size].float())
        parts["score"].append(torch.sigmoid(out.cls_logit))
        if out.seg_logits is not None:
            parts["token_probs"].append(torch.sigmoid(out.seg_logits))
            parts["source_probs"].append(out.source_logits.softmax(-1))
    return {k: torch.cat(v) for k, v in parts.items() if v}


def pixel_masks(token_probs: torch.Tensor, grid: tuple[int, int], size: tuple[int, int],
                threshold: float = 0.5) -> np.ndarray:
    """Token probabilities [N, T] -> bool masks [N, H, W]: bilinear upsampling of the
    [rows, cols] map to ``size`` (align_corners=False), then ``> threshold``."""
    maps = token_probs.float().reshape(-1, 1, *grid)
    up = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return (up[:, 0] > threshold).numpy()
