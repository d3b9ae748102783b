"""A GAMMA model with its image encoder: image bytes in; score, fake-region fraction and mask out.

Images are decoded and preprocessed exactly as for GenDet (``ImageScorer.decoded``: the extraction
job's path), then the encoder's token grid (``Encoder.tokens``: the same tokens
``features_and_tokens`` gives, without the pooled feature nobody reads here) is coarsened to the
model's grid (``gendet.encoders.tokens.coarsen``, area pooling: what ``gendet extract --tokens
--token-grid RxC`` stored) when the encoder's native grid is finer. ``GammaDetector.localize``
gives P(fake) and head 1's per-token P(generated/manipulated); ``GammaDetector.masks`` makes the
bool mask on the encoder's input canvas, which ``gendet.serve.masks.image_mask`` takes back to the
image's own pixels (the inverse of the preprocessing geometry; approximations there).

Each scored item's dict: the reply (``gendet.serve.scorer``, as GenDet) and ``fake_fraction``
(the share of the pixels the encoder saw, its crop of the image, that the mask covers; the mask
marks nothing outside that crop: ``gendet.serve.masks``); with ``masks=True`` also ``mask_png`` (8-bit greyscale PNG
bytes of the image's size, 255 = predicted generated). A GAMMA model trained without segmentation
heads has no masks: no ``fake_fraction``, and ``masks=True`` is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gendet import GendetError
from gendet.encoders.tokens import coarsen, model_tokens, reads_tokens
from gendet.serve.masks import image_mask, mask_png, seen_box, seen_fraction
from gendet.serve.scorer import SMALL_BATCH, ImageScorer, one_thread_if


class GammaScorer(ImageScorer):
    """``ImageScorer`` for a ``GammaDetector`` (module docstring)."""

    def __init__(self, detector: Any, encoder: Any, threshold: float | None = None, max_pixels: int | None = None,
                 model: str = ""):
        super().__init__(detector, encoder, threshold, max_pixels, model)
        native, grid = tuple(encoder.token_grid), tuple(detector.grid)
        if (native == (0, 0) or not reads_tokens(encoder.name, encoder.token_dim, detector.token_dim)
                or grid[0] > native[0] or grid[1] > native[1]):
            raise GendetError(f"GAMMA model: tokens {grid[0]}x{grid[1]}x{detector.token_dim}, but encoder {encoder.name} "
                              f"gives {native[0]}x{native[1]}x{encoder.token_dim}; load the encoder the model was trained on")
        self.native_grid = native

    @property
    def has_masks(self) -> bool:
        return bool(self.detector.has_masks)

    def tokens(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """Encoder pixels [N] -> the model's tokens [N, T, D] float32 (coarsened when the grid is finer)."""
        pre = self.encoder.preprocessor
        x = pre.finish(torch.from_numpy(np.stack(pixels)).to(self.encoder.device))
        tokens = model_tokens(self.encoder.tokens(x).float().cpu(), self.encoder.name, self.detector.token_dim)
        if self.native_grid != tuple(self.detector.grid):
            tokens = coarsen(tokens, self.native_grid, tuple(self.detector.grid))
        return tokens

    @torch.inference_mode()
    def localize(self, pixels: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """``score`` [N] and, with segmentation heads, ``token_probs`` [N, T] (``GammaDetector.localize``)."""
        tokens = self.tokens(pixels)
        with one_thread_if(len(tokens) <= SMALL_BATCH):
            return self.detector.localize(tokens)

    def score_images(self, images: Sequence[Any]) -> np.ndarray:
        pixels = [im if isinstance(im, np.ndarray) else self.pixels(im) for im in images]
        return np.asarray(self.localize(pixels)["score"], dtype=np.float64).reshape(-1)

    def image_mask(self, token_probs: np.ndarray, canvas: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
        """bool [H, W] on the image from one image's ``token_probs`` [T]; ``canvas`` = (H', W') of its pixels."""
        on_canvas = self.detector.masks(np.asarray(token_probs)[None], canvas)[0]
        return image_mask(on_canvas, self.encoder.preprocess_cfg, image_size)

    def score_pixels(self, pixels: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], *,
                     masks: bool = False) -> list[dict[str, Any]]:
        """One reply per image's encoder pixels (module docstring); ``sizes``: each image's (w, h)."""
        if masks and not self.has_masks:
            raise GendetError("masks need a GAMMA model with segmentation heads; this one was trained with "
                              "seg_heads=False (`gendet train-gamma` without that ablation)")
        if not len(pixels):
            return []
        out = self.localize(pixels)
        replies = []
        for j in range(len(pixels)):
            reply = self.result(float(out["score"][j]))
            if "token_probs" in out and reply["verdict"] != "error":
                canvas = pixels[j].shape[1:]
                mask = self.image_mask(out["token_probs"][j], canvas, tuple(sizes[j]))
                box = seen_box(self.encoder.preprocess_cfg, tuple(sizes[j]), canvas[::-1])
                reply["fake_fraction"] = seen_fraction(mask, box)
                if masks:
                    reply["mask_png"] = mask_png(mask)
            replies.append(reply)
        return replies
