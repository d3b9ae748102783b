"""A trained GAMMA model, the thing users load: the network + what makes and reads its tokens.

On disk (``save(dir_url)``; each file written atomically through ``gendet.io``)::

    DIR/model.safetensors   GammaNet's weights (tensors only: loading runs no pickled code)
    DIR/gamma.json          method "gamma", the network spec (token_dim, grid, num_sources,
                            GammaConfig), the source classes' names, the encoder's name, weights
                            reference and digest, preprocess_hash and precision, the token grid the
                            store kept, the calibrated threshold, target FPR and Platt scaling

A directory holds either ``detector.json`` (GenDet and its ladder, ``gendet.method.gendet.detector``) or
``gamma.json``; ``is_gamma_dir`` tells which. ``score`` gives P(fake) per token grid;
``localize`` adds the per-token P(manipulated) and the most likely source per token; ``masks``
turns token probabilities into pixel masks of any size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.eval.metrics import calibrated_threshold
from gendet.method.gamma.networks import GammaNet, pixel_masks
from gendet.method.saved import WEIGHTS, SavedModel, fit_platt

FORMAT_VERSION = 1
ARGS = "gamma.json"
CAMERA = "camera"
"""Source class 0 of head 2: pixels no generator made."""
# Far above the networks GAMMA trains, far below an allocation that would take a machine down.
SPEC_LIMITS = {"token_dim": 1 << 14, "tokens": 4096, "num_sources": 1024, "width": 4096, "layers": 64}


def is_gamma_dir(dir_url: str) -> bool:
    return gio.exists(gio.join(dir_url, ARGS))


@dataclass(kw_only=True)
class GammaDetector(SavedModel):
    """GAMMA's network and its source classes; the shared fields are ``SavedModel``'s."""

    ARGS: ClassVar[str] = ARGS
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    WRITER: ClassVar[str] = "GammaDetector.save or `gendet train-gamma`"

    net: GammaNet
    sources: tuple[str, ...]
    """Head 2's classes: ``("camera", family 1, ...)``."""
    method: str = "gamma"

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.net.grid)

    @property
    def token_dim(self) -> int:
        return self.net.token_dim

    @property
    def has_masks(self) -> bool:
        return self.net.cfg.seg_heads

    def _tokens(self, tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(tokens, np.ndarray) and not tokens.flags.writeable:
            tokens = tokens.copy()
        x = torch.as_tensor(tokens).float()
        t = self.grid[0] * self.grid[1]
        if x.ndim != 3 or x.shape[1:] != (t, self.token_dim):
            raise GendetError(f"GAMMA model ({self.encoder}): tokens must be [N, {t}, {self.token_dim}] "
                              f"(a {self.grid[0]}x{self.grid[1]} grid); got {tuple(x.shape)}; extract them with "
                              f"`gendet extract --tokens --token-grid {self.grid[0]}x{self.grid[1]}` and the model's encoder")
        return x

    @torch.no_grad()
    def _forward(self, tokens: np.ndarray | torch.Tensor, batch_size: int):
        x = self._tokens(tokens)
        self.net.eval()
        for i in range(0, x.shape[0], batch_size):
            yield self.net(x[i:i + batch_size])

    def probability(self, logit: torch.Tensor) -> torch.Tensor:
        return self.calibrated(logit)

    def logits(self, tokens: np.ndarray | torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
        """The image logit per row (what Platt scaling is fitted on), float64 [N]."""
        out = [o.cls_logit.double() for o in self._forward(tokens, batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0)

    def score(self, tokens: np.ndarray | torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
        """P(fake) per token grid [N, T, D] -> float64 [N]."""
        out = [self.probability(o.cls_logit) for o in self._forward(tokens, batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0)

    def localize(self, tokens: np.ndarray | torch.Tensor, *, batch_size: int = 512) -> dict[str, np.ndarray]:
        """``score`` [N]; with segmentation heads also ``token_probs`` [N, T] (P(manipulated) per
        token) and ``token_source`` [N, T] (index into ``sources`` of each token's likeliest source)."""
        parts: dict[str, list] = {"score": [], "token_probs": [], "token_source": []}
        for o in self._forward(tokens, batch_size):
            parts["score"].append(self.probability(o.cls_logit))
            if o.seg_logits is not None:
                parts["token_probs"].append(torch.sigmoid(o.seg_logits))
                parts["token_source"].append(o.source_logits.argmax(-1))
        return {k: torch.cat(v).numpy() for k, v in parts.items() if v}

    def masks(self, token_probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """bool [N, H, W] pixel masks of ``size`` (H, W) from ``token_probs`` [N, T] (bilinear, then
        the model's ``mask_threshold``)."""
        return pixel_masks(torch.as_tensor(np.asarray(token_probs)), self.grid, size, self.net.cfg.mask_threshold)

    def calibrate(self, tokens: np.ndarray, labels: np.ndarray, target_fpr: float, *, split: str | None = None,
                  platt: bool = True, subsets: Sequence[str] | None = None, target_miss: float | None = None) -> float:
        """Platt scaling on held-out rows of both classes, then the threshold that keeps the FPR of
        their reals at ``target_fpr`` and the band's lower edge from their fakes at ``target_miss``
        (as ``gendet.method.gendet.detector.calibrate`` does for GenDet)."""
        labels = np.asarray(labels).astype(np.int64)
        if platt and 0 < labels.sum() < len(labels):
            self.platt = fit_platt(self.logits(tokens), labels)
        reals = labels == 0
        if reals.any():
            self.threshold = calibrated_threshold(self.score(tokens[reals]), target_fpr)
            self.target_fpr, self.calibration_split = target_fpr, split
            self.calibration_subsets = tuple(sorted(set(subsets))) if subsets is not None else None
            self.calibration_rows = {"real": int(reals.sum()), "fake": int((~reals).sum())}
            if target_miss is not None:
                self.fit_band(self.score(tokens[~reals]) if (~reals).any() else np.zeros(0), target_miss)
        return self.threshold

    def args(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "method": self.method, "spec": self.net.spec(),
                "sources": list(self.sources), **self.shared_args()}

    def save(self, dir_url: str) -> str:
        return self.write(dir_url, self.net.state_dict())

    @classmethod
    def load(cls, dir_url: str) -> GammaDetector:
        args, args_url = cls.read_args(dir_url)
        spec = _checked_spec(args.get("spec"), args_url)
        sources = args.get("sources")
        if not (isinstance(sources, list) and len(sources) == spec["num_sources"] and all(isinstance(s, str) for s in sources)):
            raise GendetError(f"{args_url}: 'sources' must name the {spec['num_sources']} source classes; save it again")
        try:
            net = GammaNet.from_spec(spec)
        except Exception as exc:  # noqa: BLE001 - a config the checks refuse: the file is not one gendet wrote
            raise GendetError(f"{args_url}: not a GAMMA spec gendet wrote ({first_line(exc, 200)}); save it again") from None
        tensors = cls.read_weights(dir_url, args)
        try:
            net.load_state_dict(tensors)
        except (RuntimeError, ValueError) as exc:
            raise cls.weights_mismatch(gio.join(dir_url, WEIGHTS), exc) from None
        return cls(net=net.eval(), sources=tuple(sources), **cls.shared_fields(args, args_url))


def _checked_spec(raw: Any, args_url: str) -> dict:
    """Refuse, before anything is allocated, a spec gendet would not have written."""
    ok = isinstance(raw, dict) and isinstance(raw.get("config"), dict) and isinstance(raw.get("grid"), list)
    if ok:
        grid = raw["grid"]
        ok = len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)
        sizes = {"token_dim": raw.get("token_dim"), "num_sources": raw.get("num_sources"),
                 "tokens": grid[0] * grid[1] if ok else 0, "width": raw["config"].get("width", 1),
                 "layers": raw["config"].get("layers", 1)}
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= SPEC_LIMITS[k] for k, v in sizes.items())
    if not ok:
        raise GendetError(f"{args_url}: 'spec' is not a GAMMA network gendet wrote (token_dim, grid, num_sources, config "
                          "within limits); save the model again")
    return raw
