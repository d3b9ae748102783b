"""GAMMA (Yan et al. 2025, arXiv 2509.10250; issue 13): a classification head and two segmentation
heads over an image's token grid, with reverse cross-attention from the segmentation branch into
the classifier. Pure torch; in-memory training here (``GammaTrainer``, resumable), token-store rows in
``gendet.method.gamma_train``, Ray Train in ``pipelines/train_gamma.py``.

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

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gendet.config import check, from_dict, to_dict
from gendet.encoders.tokens import grid_fractions
from gendet.method.networks import Block


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
    accuracy alike (benchmarks/results/gamma-ablation-cpu2.md, 3 seeds); weight 2 with ``seg_context``
    (benchmarks/results/gamma-ablation-cpu2-x5.md)."""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    mask_threshold: float = 0.5
    """Threshold on the upsampled token probabilities that makes a pixel mask."""
    seg_context: int = 4
    """3 x 3 convolutions over the token grid in segmentation head 1 (``GridContext``; 0 = none):
    manipulated regions are contiguous, so a token's neighbours vote on it (4 layers: 9 x 9 tokens;
    benchmarks/results/gamma-ablation-cpu2-x5.md)."""

    def __post_init__(self) -> None:
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


class GammaTrainer:
    """GAMMA's epoch loop with a resumable state: the network (``wrap``: DDP, e.g. Ray Train's
    ``prepare_model``), AdamW, the one-cycle schedule, the epoch count and the shuffling RNG, all in
    ``state_dict`` (plain tensors and numbers: a checkpoint loads with ``weights_only=True``).
    ``rows`` is the number of training rows this process steps through per epoch (its shard's)."""

    def __init__(self, cfg: GammaConfig, *, token_dim: int, grid: tuple[int, int], num_sources: int, rows: int,
                 device: str = "cpu", wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        check(rows >= 1, "no training rows")
        torch.manual_seed(cfg.seed)
        self.cfg, self.rows, self.device = cfg, rows, torch.device(device)
        self.net = GammaNet(token_dim, tuple(grid), num_sources, cfg).to(self.device)
        self.model = wrap(self.net) if wrap else self.net
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(rows / cfg.batch_size)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
        self.order = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def run_epoch(self, tokens: torch.Tensor, targets: GammaTargets) -> dict[str, float]:
        """One pass over ``tokens`` [rows, T, D] in a fresh random order; returns the epoch's mean losses."""
        n, cfg = tokens.shape[0], self.cfg
        check(n == self.rows, f"the trainer was built for {self.rows} rows per epoch, got {n}")
        seg = cfg.seg_heads
        sums: dict[str, float] = {}
        self.model.train()
        perm = torch.randperm(n, generator=self.order)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            out = self.model(tokens[idx].to(self.device).float())
            masks = targets.token_masks[idx].to(self.device) if seg else None
            sources = targets.token_sources[idx].to(self.device) if seg else None
            loss, parts = gamma_loss(out, targets.labels[idx].to(self.device), masks, sources, cfg)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx) / n
        row = {"epoch": self.epoch, **sums}
        self.history.append(row)
        self.epoch += 1
        return row

    def state_dict(self) -> dict:
        return {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "epoch": self.epoch, "order_rng": self.order.get_state(),
                "torch_rng": torch.get_rng_state(), "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.order.set_state(state["order_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.history = [dict(r) for r in state.get("history", [])]


def train_gamma(tokens: torch.Tensor, labels: torch.Tensor, *, grid: tuple[int, int], cfg: GammaConfig,
                token_masks: torch.Tensor | None = None, token_sources: torch.Tensor | None = None,
                num_sources: int = 2, log=None) -> tuple[GammaNet, list[dict[str, float]]]:
    """Train GAMMA on in-memory tensors: ``tokens`` [N, T, D], ``labels`` [N] (1 = fake),
    ``token_masks`` [N, T] (head 1's targets in [0, 1]; needed with ``seg_heads``),
    ``token_sources`` [N, T] (head 2's classes in 0..num_sources-1; all-camera for reals and
    all-zero-generated when None). Deterministic for a seed on CPU. Returns (net in eval mode,
    one dict of mean losses per epoch). (``GammaTrainer``; ``gendet.method.gamma_train`` trains
    on a token store's rows, resumably.)"""
    n, t, d = tokens.shape
    check(labels.shape == (n,), f"labels must be [{n}], got {tuple(labels.shape)}")
    if cfg.seg_heads:
        check(token_masks is not None and token_masks.shape == (n, t),
              f"seg_heads needs token_masks [{n}, {t}]; pass them or set seg_heads=False")
        if token_sources is None:
            token_sources = torch.zeros(n, t, dtype=torch.long)
        check(token_sources.shape == (n, t) and int(token_sources.max()) < num_sources and int(token_sources.min()) >= 0,
              f"token_sources must be [{n}, {t}] with classes in 0..{num_sources - 1}")
    trainer = GammaTrainer(cfg, token_dim=d, grid=grid, num_sources=num_sources, rows=n)
    targets = GammaTargets(labels, token_masks, token_sources)
    while not trainer.done:
        row = trainer.run_epoch(tokens, targets)
        if log:
            log(row)
    return trainer.net.eval(), trainer.history


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


def token_targets(pixel_masks_: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Head 1's targets from pixel masks [N, H, W] already on the token canvas: area fractions
    [N, T] (``grid_fractions``; ``Encoder.token_mask`` does it from an image's own mask)."""
    return grid_fractions(pixel_masks_, grid)
