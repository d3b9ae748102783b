"""A trained detector, the thing users load: networks + everything needed to score features.

On disk (``save(dir_url)``; each file written atomically through ``gendet.io``)::

    DIR/model.safetensors   the networks' weights, keys prefixed by network (teacher., student., ...)
    DIR/detector.json       method, architecture, encoder name, weights reference and digest,
                            preprocess_hash, encoder precision, feature_dim, calibrated threshold, target FPR,
                            Platt scaling and the rows both were fitted on (calibration_split)

safetensors holds tensors only, so loading runs no pickled code; the networks are rebuilt from
``detector.json`` (like Ray's doggos ``args.json``). The linear probe is stored the same way (its
weight and bias), never as a pickle. ``score`` gives P(fake) per feature row; ``is_fake`` is
``score > threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from gendet import GendetError
from gendet import io as gio
from gendet.eval.metrics import calibrated_threshold
from gendet.method.gendet.networks import Arch, method_forward, scoring_net_types
from gendet.method.saved import WEIGHTS, SavedModel, fit_platt

FORMAT_VERSION = 1
ARGS = "detector.json"


def build_method_nets(method: str, arch: Arch) -> dict[str, nn.Module]:
    """Empty networks of the shape ``method`` scores with."""
    try:
        return {name: cls(arch) for name, cls in scoring_net_types(method).items()}
    except ValueError as exc:
        raise GendetError(f"detector: {exc}") from None


@dataclass(kw_only=True)
class Detector(SavedModel):
    """A GenDet rung (or a baseline of the ladder) on pooled features."""

    ARGS: ClassVar[str] = ARGS
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    WRITER: ClassVar[str] = "Detector.save or `gendet train`"

    method: str
    arch: Arch
    nets: dict[str, nn.Module]

    @property
    def feature_dim(self) -> int:
        return self.arch.feature_dim

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return method_forward(self.method, self.nets, x)[0]

    def _features(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(features, np.ndarray) and not features.flags.writeable:
            features = features.copy()  # Arrow's zero-copy arrays are read-only; torch wants to own them
        x = torch.as_tensor(features).float()
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise GendetError(f"detector ({self.encoder or self.method}): features must be [N, {self.feature_dim}]; "
                              f"got {tuple(x.shape)}; extract them with the detector's encoder")
        for net in self.nets.values():
            net.eval()
        return x

    @torch.no_grad()
    def score(self, features: np.ndarray | torch.Tensor, *, batch_size: int = 4096) -> np.ndarray:
        """P(fake) for each row of ``features`` [N, feature_dim], as float64 [N]."""
        return self.score_and_discrepancy(features, batch_size=batch_size)[0]

    @torch.no_grad()
    def score_and_discrepancy(self, features: np.ndarray | torch.Tensor, *,
                              batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray | None]:
        """P(fake) [N] and, for the teacher-student rungs, the mean discrepancy (Eq. 4) per row [N]
        (None for the others), from one forward pass."""
        scores, discs = [], []
        for logits, d in self._forward(features, batch_size):
            scores.append(self.probability(logits))
            if d is not None:
                discs.append(d.mean(dim=1).double())
        score = torch.cat(scores).numpy() if scores else np.zeros(0)
        has_discrepancy = "student" in self.nets
        disc = (torch.cat(discs).numpy() if discs else np.zeros(0)) if has_discrepancy else None
        return score, disc

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """P(fake) [N] (float64) from the networks' two logits: the Platt-scaled margin when
        calibrated, the softmax otherwise (a saturated softmax gives scores like 1e-8 whose
        thresholds transfer to nothing)."""
        return self.calibrated(_margin(logits))

    def _forward(self, features: np.ndarray | torch.Tensor, batch_size: int):
        """(logits, discrepancy or None) of each batch of ``features``: the one scoring loop."""
        x = self._features(features)
        for i in range(0, x.shape[0], batch_size):
            yield method_forward(self.method, self.nets, x[i:i + batch_size])

    @torch.no_grad()
    def margins(self, features: np.ndarray | torch.Tensor, *, batch_size: int = 4096) -> np.ndarray:
        """The logit margin (fake - real) per row: what Platt scaling is fitted on."""
        out = [_margin(logits) for logits, _ in self._forward(features, batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0)

    def args(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "method": self.method, "arch": asdict(self.arch),
                "feature_dim": self.feature_dim, **self.shared_args()}

    def save(self, dir_url: str) -> str:
        return self.write(dir_url, {f"{name}.{key}": t for name, net in self.nets.items()
                                    for key, t in net.state_dict().items()})

    @classmethod
    def load(cls, dir_url: str) -> Detector:
        args, args_url = cls.read_args(dir_url)
        arch = _checked_arch(args.get("arch"), args_url)  # before any allocation sized by it
        nets = build_method_nets(args["method"], arch)
        tensors = cls.read_weights(dir_url, args)
        try:
            for name, net in nets.items():
                prefix = name + "."
                net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
                net.eval()
        except (RuntimeError, ValueError) as exc:  # a state-dict mismatch
            raise cls.weights_mismatch(gio.join(dir_url, WEIGHTS), exc) from None
        return cls(method=args["method"], arch=arch, nets=nets, **cls.shared_fields(args, args_url))


# Far above any network the method uses (width 196, a few layers), far below an allocation that
# would take the machine down: a detector.json outside them is refused before anything is built.
ARCH_LIMITS = {"feature_dim": 1 << 16, "width": 4096, "layers": 64, "heads": 64, "mlp_ratio": 16}


def _checked_arch(raw: Any, args_url: str) -> Arch:
    if not isinstance(raw, dict) or not set(raw) <= {f for f in Arch.__dataclass_fields__}:
        raise GendetError(f"{args_url}: 'arch' must be an object with fields of gendet's Arch; save it again")
    for key, limit in ARCH_LIMITS.items():
        value = raw.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= limit:
            raise GendetError(f"{args_url}: arch {key}={value!r} is outside (0, {limit}]; this is not a detector "
                              "gendet wrote, save it again")
    arch = Arch(**raw)
    if arch.width % arch.heads:
        raise GendetError(f"{args_url}: arch heads={arch.heads} does not divide width={arch.width}; save it again")
    return arch


def _margin(logits: torch.Tensor) -> torch.Tensor:
    """logit(fake) - logit(real) in float64: sigmoid of it is the softmax's P(fake)."""
    return logits[:, 1].double() - logits[:, 0].double()


def calibrate(detector: Detector, source: Any, target_fpr: float, *, epoch: int = 0, platt: bool = True,
              target_miss: float | None = None) -> float:
    """Calibrate on ``source`` (a ``BatchSource`` of held-out rows, never the split scored later):
    with ``platt`` and rows of both classes, fit Platt scaling so scores are probabilities; then
    set ``detector.threshold`` from the (scaled) scores of its reals for ``target_fpr`` and, with
    ``target_miss`` and fakes, the uncertain band's lower edge from theirs. Returns the threshold;
    leaves it unchanged when there are no reals."""
    if platt:
        rows = [(detector.margins(x), np.asarray(y)) for x, y in source.batches("all", epoch)]
        if rows:
            m, y = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
            if 0 < y.sum() < len(y):
                detector.platt = fit_platt(m, y)
    scores = [detector.score(x) for x, _ in source.batches("real", epoch)]
    if scores and sum(len(s) for s in scores):
        detector.threshold = calibrated_threshold(np.concatenate(scores), target_fpr)
        detector.target_fpr = target_fpr
        if target_miss is not None:
            fakes = [detector.score(x) for x, _ in source.batches("fake", epoch)]
            detector.fit_band(np.concatenate(fakes) if fakes else np.zeros(0), target_miss)
    return detector.threshold
