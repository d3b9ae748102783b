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

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.eval.metrics import calibrated_threshold
from gendet.method.networks import Arch, method_forward, scoring_net_types

FORMAT_VERSION = 1
WEIGHTS, ARGS = "model.safetensors", "detector.json"


def build_method_nets(method: str, arch: Arch) -> dict[str, nn.Module]:
    """Empty networks of the shape ``method`` scores with."""
    try:
        return {name: cls(arch) for name, cls in scoring_net_types(method).items()}
    except ValueError as exc:
        raise GendetError(f"detector: {exc}") from None


@dataclass
class Detector:
    method: str
    arch: Arch
    nets: dict[str, nn.Module]
    encoder: str = ""
    """Encoder name as in the feature store, e.g. ``open_clip:ViT-L-14/openai``."""
    encoder_weights: str = ""
    """Reference to the encoder's weights (tag, file or sha) so the same features can be made."""
    preprocess_hash: str = ""
    encoder_weights_digest: str = ""
    """Digest of the weights the training features were made with (the store's variant key,
    ``gendet.encoders.registry.weights_identity``); empty for detectors saved before 0.4.0."""
    encoder_precision: str = ""
    """The encoder precision of the training features (fp32/fp16/bf16); empty before 0.4.0."""
    threshold: float = 0.5
    """Decision threshold on P(fake); calibrated on held-out reals when ``target_fpr`` is set."""
    target_fpr: float | None = None
    platt: tuple[float, float] | None = None
    """(a, b) of Platt scaling fitted on held-out rows of both classes: P(fake) = sigmoid(a * m + b)
    with m the logit margin (fake - real); None = the raw softmax (``calibrate``)."""
    calibration_split: str | None = None
    """The rows threshold and Platt scaling were fitted on (``TrainConfig.calibration_split``:
    ``val`` or ``train_holdout``); None when not calibrated or not recorded (detectors saved before)."""
    extra: dict[str, Any] = field(default_factory=dict)

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
        margin = _margin(logits)
        if self.platt is None:
            return torch.sigmoid(margin)  # = softmax(logits)[:, 1]
        a, b = self.platt
        return torch.sigmoid(a * margin + b)

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
                "feature_dim": self.feature_dim, "encoder": self.encoder, "encoder_weights": self.encoder_weights,
                "preprocess_hash": self.preprocess_hash, "encoder_weights_digest": self.encoder_weights_digest,
                "encoder_precision": self.encoder_precision, "threshold": float(self.threshold),
                "target_fpr": self.target_fpr, "platt": list(self.platt) if self.platt else None,
                "calibration_split": self.calibration_split, "extra": self.extra}

    def save(self, dir_url: str) -> str:
        tensors = {f"{name}.{key}": t.detach().cpu().contiguous()
                   for name, net in self.nets.items() for key, t in net.state_dict().items()}
        gio.write_bytes_atomic(gio.join(dir_url, WEIGHTS), save_safetensors(tensors))
        gio.write_json_atomic(gio.join(dir_url, ARGS), self.args())
        return dir_url

    @classmethod
    def load(cls, dir_url: str) -> Detector:
        args_url = gio.join(dir_url, ARGS)
        if not gio.exists(args_url):
            raise GendetError(f"{dir_url}: no {ARGS} here; pass a directory written by Detector.save or `gendet train`")
        args = gio.read_json(args_url)
        if args.get("format_version") != FORMAT_VERSION:
            raise GendetError(f"{args_url}: detector format {args.get('format_version')}, this gendet reads {FORMAT_VERSION}; "
                              "upgrade gendet")
        arch = _checked_arch(args.get("arch"), args_url)  # before any allocation sized by it
        nets = build_method_nets(args["method"], arch)
        weights_url = gio.join(dir_url, WEIGHTS)
        try:
            tensors = load_safetensors(gio.read_bytes(weights_url))
            for name, net in nets.items():
                prefix = name + "."
                net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
                net.eval()
        except FileNotFoundError:
            raise GendetError(f"{weights_url}: missing; a saved detector is {WEIGHTS} + {ARGS}, save it again") from None
        except (SafetensorError, RuntimeError, ValueError, OSError) as exc:  # a cut file, a state-dict mismatch
            raise GendetError(f"{weights_url}: not the weights {ARGS} describes ({first_line(exc, 200)}); "
                              "save the detector again (Detector.save or `gendet train`)") from None
        return cls(method=args["method"], arch=arch, nets=nets, encoder=args["encoder"],
                   encoder_weights=args["encoder_weights"], preprocess_hash=args["preprocess_hash"],
                   encoder_weights_digest=str(args.get("encoder_weights_digest") or ""),
                   encoder_precision=str(args.get("encoder_precision") or ""),
                   threshold=float(args["threshold"]), target_fpr=args["target_fpr"],
                   platt=_checked_platt(args.get("platt"), args_url),
                   calibration_split=_checked_split(args.get("calibration_split"), args_url), extra=args.get("extra", {}))


# Far above any network the method uses (width 196, a few layers), far below an allocation that
# would take the machine down: a detector.json outside them is refused before anything is built.
ARCH_LIMITS = {"feature_dim": 1 << 16, "width": 4096, "layers": 64, "heads": 64, "mlp_ratio": 16}


def _checked_arch(raw: Any, args_url: str) -> Arch:
    if not isinstance(raw, dict) or not set(raw) <= {f for f in Arch.__dataclass_fields__}:
        raise GendetError(f"{args_url}: 'arch' must be an object with fields of gendet.method.networks.Arch; save it again")
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


def _checked_platt(raw: Any, args_url: str) -> tuple[float, float] | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in raw)):
        raise GendetError(f"{args_url}: 'platt' must be [a, b], two finite numbers; save the detector again")
    return float(raw[0]), float(raw[1])


def _checked_split(raw: Any, args_url: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise GendetError(f"{args_url}: 'calibration_split' must be a string or null; save the detector again")
    return raw


def fit_platt(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling (sklearn's logistic regression on the 1-D margin): (a, b)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e4, max_iter=1000).fit(np.asarray(margins, dtype=np.float64).reshape(-1, 1),
                                                        np.asarray(labels, dtype=np.int64))
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def calibrate(detector: Detector, source: Any, target_fpr: float, *, epoch: int = 0, platt: bool = True) -> float:
    """Calibrate on ``source`` (a ``BatchSource`` of held-out rows, never the split scored later):
    with ``platt`` and rows of both classes, fit Platt scaling so scores are probabilities; then
    set ``detector.threshold`` from the (scaled) scores of its reals for ``target_fpr``. Returns
    the threshold; leaves it unchanged when there are no reals."""
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
    return detector.threshold
