"""A trained GAMMA model, the thing users load: the network + what makes and reads its tokens.

On disk (``save(dir_url)``; each file written atomically through ``gendet.io``)::

    DIR/model.safetensors   GammaNet's weights (tensors only: loading runs no pickled code)
    DIR/gamma.json          method "gamma", the network spec (token_dim, grid, num_sources,
                            GammaConfig), the source classes' names, the encoder's name, weights
                            reference and digest, preprocess_hash and precision, the token grid the
                            store kept, the calibrated threshold, target FPR and Platt scaling

A directory holds either ``detector.json`` (GenDet and its ladder, ``gendet.method.detector``) or
``gamma.json``; ``is_gamma_dir`` tells which. ``score`` gives P(fake) per token grid;
``localize`` adds the per-token P(manipulated) and the most likely source per token; ``masks``
turns token probabilities into pixel masks of any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.eval.metrics import calibrated_threshold
from gendet.method.detector import fit_platt
from gendet.method.gamma import GammaNet, pixel_masks

FORMAT_VERSION = 1
WEIGHTS, ARGS = "model.safetensors", "gamma.json"
CAMERA = "camera"
"""Source class 0 of head 2: pixels no generator made."""
# Far above the networks GAMMA trains, far below an allocation that would take a machine down.
SPEC_LIMITS = {"token_dim": 1 << 14, "tokens": 4096, "num_sources": 1024, "width": 4096, "layers": 64}


def is_gamma_dir(dir_url: str) -> bool:
    return gio.exists(gio.join(dir_url, ARGS))


@dataclass
class GammaDetector:
    net: GammaNet
    sources: tuple[str, ...]
    """Head 2's classes: ``("camera", family 1, ...)``."""
    encoder: str = ""
    encoder_weights: str = ""
    preprocess_hash: str = ""
    encoder_weights_digest: str = ""
    encoder_precision: str = ""
    threshold: float = 0.5
    target_fpr: float | None = None
    platt: tuple[float, float] | None = None
    """(a, b): P(fake) = sigmoid(a * logit + b), fitted on held-out rows; None: sigmoid(logit)."""
    calibration_split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
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
        logit = logit.double()
        if self.platt is None:
            return torch.sigmoid(logit)
        a, b = self.platt
        return torch.sigmoid(a * logit + b)

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
                  platt: bool = True) -> float:
        """Platt scaling on held-out rows of both classes, then the threshold that keeps the FPR of
        their reals at ``target_fpr`` (as ``gendet.method.detector.calibrate`` does for GenDet)."""
        labels = np.asarray(labels).astype(np.int64)
        if platt and 0 < labels.sum() < len(labels):
            self.platt = fit_platt(self.logits(tokens), labels)
        reals = labels == 0
        if reals.any():
            self.threshold = calibrated_threshold(self.score(tokens[reals]), target_fpr)
            self.target_fpr, self.calibration_split = target_fpr, split
        return self.threshold

    def args(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "method": self.method, "spec": self.net.spec(),
                "sources": list(self.sources), "encoder": self.encoder, "encoder_weights": self.encoder_weights,
                "preprocess_hash": self.preprocess_hash, "encoder_weights_digest": self.encoder_weights_digest,
                "encoder_precision": self.encoder_precision, "threshold": float(self.threshold),
                "target_fpr": self.target_fpr, "platt": list(self.platt) if self.platt else None,
                "calibration_split": self.calibration_split, "extra": self.extra}

    def save(self, dir_url: str) -> str:
        tensors = {k: t.detach().cpu().contiguous() for k, t in self.net.state_dict().items()}
        gio.write_bytes_atomic(gio.join(dir_url, WEIGHTS), save_safetensors(tensors))
        gio.write_json_atomic(gio.join(dir_url, ARGS), self.args())
        return dir_url

    @classmethod
    def load(cls, dir_url: str) -> GammaDetector:
        args_url = gio.join(dir_url, ARGS)
        if not gio.exists(args_url):
            raise GendetError(f"{dir_url}: no {ARGS} here; pass a directory written by GammaDetector.save or "
                              "`gendet train-gamma`")
        args = gio.read_json(args_url)
        if args.get("format_version") != FORMAT_VERSION:
            raise GendetError(f"{args_url}: GAMMA format {args.get('format_version')}, this gendet reads "
                              f"{FORMAT_VERSION}; upgrade gendet")
        spec = _checked_spec(args.get("spec"), args_url)
        sources = args.get("sources")
        if not (isinstance(sources, list) and len(sources) == spec["num_sources"] and all(isinstance(s, str) for s in sources)):
            raise GendetError(f"{args_url}: 'sources' must name the {spec['num_sources']} source classes; save it again")
        try:
            net = GammaNet.from_spec(spec)
        except Exception as exc:  # noqa: BLE001 - a config the checks refuse: the file is not one gendet wrote
            raise GendetError(f"{args_url}: not a GAMMA spec gendet wrote ({first_line(exc, 200)}); save it again") from None
        weights_url = gio.join(dir_url, WEIGHTS)
        try:
            net.load_state_dict(load_safetensors(gio.read_bytes(weights_url)))
        except FileNotFoundError:
            raise GendetError(f"{weights_url}: missing; a saved GAMMA model is {WEIGHTS} + {ARGS}, save it again") from None
        except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
            raise GendetError(f"{weights_url}: not the weights {ARGS} describes ({first_line(exc, 200)}); "
                              "save the model again") from None
        platt = args.get("platt")
        if platt is not None and not (isinstance(platt, list) and len(platt) == 2
                                      and all(isinstance(v, (int, float)) and np.isfinite(v) for v in platt)):
            raise GendetError(f"{args_url}: 'platt' must be [a, b], two finite numbers; save the model again")
        return cls(net=net.eval(), sources=tuple(sources), encoder=str(args.get("encoder") or ""),
                   encoder_weights=str(args.get("encoder_weights") or ""),
                   preprocess_hash=str(args.get("preprocess_hash") or ""),
                   encoder_weights_digest=str(args.get("encoder_weights_digest") or ""),
                   encoder_precision=str(args.get("encoder_precision") or ""),
                   threshold=float(args.get("threshold", 0.5)), target_fpr=args.get("target_fpr"),
                   platt=tuple(platt) if platt else None, calibration_split=args.get("calibration_split"),
                   extra=args.get("extra") or {})


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
