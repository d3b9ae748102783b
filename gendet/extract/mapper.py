"""Mapper: column batches of uint8 pixels -> column batches of features.

``FeatureMapper`` is a plain callable class (clip-retrieval's mapper, Ray's doggos ``embed.py``):
it loads the encoder once in ``__init__`` and is built where it runs, so Ray Data's
``map_batches(FeatureMapper, fn_constructor_kwargs=...)`` never pickles a model. Quarantined and
end-of-shard rows pass through with a zero feature and are never encoded.

With ``token_grid`` (a token variant), one forward gives both the pooled feature and the token grid
(``Encoder.features_and_tokens``), coarsened to ``token_grid`` when it is coarser than the
encoder's own (``gendet.encoders.tokens.coarsen``); ``tokens`` is [B, rows*cols*dim] in the
stored dtype (row-major tokens, then dims).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch


class FeatureMapper:
    def __init__(self, encoder: str, *, weights: str | None = None, device: str = "cpu",
                 precision: str = "fp32", feature_dtype: str = "float16", threads: int | None = None,
                 token_grid: tuple[int, int] | list[int] | None = None, token_dim: int | None = None):
        from gendet.encoders.registry import load_encoder
        from gendet.encoders.tokens import reads_tokens

        if threads and device == "cpu":
            torch.set_num_threads(max(1, int(threads)))  # Ray sets OMP_NUM_THREADS=1 in workers
        self.encoder = load_encoder(encoder, weights=weights, device=device, precision=precision)
        self.device = device
        self.feature_dtype = np.dtype(feature_dtype)
        self.token_grid = tuple(int(x) for x in token_grid) if token_grid and token_grid[0] else None
        if self.token_grid and (self.encoder.token_grid == (0, 0) or self.token_grid[0] > self.encoder.token_grid[0]
                                or self.token_grid[1] > self.encoder.token_grid[1]):
            raise ValueError(f"encoder {encoder}: token grid {self.encoder.token_grid}, cannot store {self.token_grid}")
        # a store keeps the token width it was made with (gendet 0.5's spectrum tokens: 96)
        self.token_dim = int(token_dim or self.encoder.token_dim)
        if self.token_grid and not reads_tokens(self.encoder.name, self.encoder.token_dim, self.token_dim):
            raise ValueError(f"encoder {encoder}: tokens of {self.encoder.token_dim}, cannot store {self.token_dim}")

    @property
    def token_width(self) -> int:
        return self.token_grid[0] * self.token_grid[1] * self.token_dim if self.token_grid else 0

    def _on_device(self, images: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        if self.device != "cpu":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def encode(self, images: np.ndarray) -> np.ndarray:
        """[B,3,H,W] uint8 pixels (``Preprocessor.pixels``) -> [B,dim] features in the stored dtype.
        The pixels travel as uint8 and become float on the encoder's device (``finish``)."""
        with torch.inference_mode():
            features = self.encoder(self.encoder.preprocessor.finish(self._on_device(images)))
        return features.float().cpu().numpy().astype(self.feature_dtype)

    def encode_with_tokens(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``encode``, plus the token grid [B, rows*cols*dim] on the stored grid, from one forward."""
        from gendet.encoders.tokens import coarsen, model_tokens

        with torch.inference_mode():
            features, tokens = self.encoder.features_and_tokens(self.encoder.preprocessor.finish(self._on_device(images)))
            tokens = model_tokens(tokens, self.encoder.name, self.token_dim)
            if self.token_grid != tuple(self.encoder.token_grid):
                tokens = coarsen(tokens.float(), tuple(self.encoder.token_grid), self.token_grid)
        as_stored = (features.float().cpu().numpy().astype(self.feature_dtype),
                     tokens.float().cpu().numpy().astype(self.feature_dtype))
        return as_stored[0], as_stored[1].reshape(len(images), -1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        images = batch.pop("image")
        good = np.asarray(batch["reason"] == "", dtype=bool)
        features = np.zeros((len(images), self.encoder.dim), dtype=self.feature_dtype)
        if self.token_grid:
            tokens = np.zeros((len(images), self.token_width), dtype=self.feature_dtype)
            if good.any():
                features[good], tokens[good] = self.encode_with_tokens(images[good])
            batch["tokens"] = tokens
        elif good.any():
            features[good] = self.encode(images[good])
        batch["feature"] = features
        # Each row carries its share of the batch time, so per-shard sums add up to encode time.
        batch["encode_seconds"] = np.full(len(images), (time.perf_counter() - started) / max(1, len(images)))
        return batch


class PartWritingMapper(FeatureMapper):
    """``FeatureMapper`` that writes its output where it runs (``gendet.extract.parts``) and
    returns only a few bytes per row to the driver."""

    def __init__(self, encoder: str, *, variant_url: str, **kwargs: Any):
        super().__init__(encoder, **kwargs)
        self.variant_url = variant_url

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from gendet.extract.parts import write_parts

        return write_parts(super().__call__(batch), self.variant_url)
