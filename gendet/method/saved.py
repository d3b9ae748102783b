"""What every saved detector shares, whatever its method: the encoder it reads, its calibration,
and how it is written to and read from a directory.

On disk a saved model is two files, each written atomically through ``gendet.io``::

    DIR/model.safetensors   the weights: tensors only, so loading runs no pickled code
    DIR/<method>.json       ``detector.json`` (GenDet and its ladder) or ``gamma.json`` (GAMMA): the
                            method's own fields (``method_args``) beside the shared ones below

The shared fields name the encoder (name, weights reference and digest, preprocess hash,
precision) so the same features can be made again, and the calibration: the threshold on P(fake),
its target FPR, Platt scaling and the rows both were fitted on. Every field read back is checked
before anything is built from it: a file gendet did not write is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from gendet import GendetError, first_line
from gendet import io as gio

WEIGHTS = "model.safetensors"


@dataclass(kw_only=True)
class SavedModel:
    """The fields and file handling both detectors share (``gendet.method.gendet.detector.Detector``,
    ``gendet.method.gamma.detector.GammaDetector``)."""

    ARGS: ClassVar[str]
    """The method's JSON file name in the model directory."""
    FORMAT_VERSION: ClassVar[int] = 1
    WRITER: ClassVar[str] = "Detector.save or `gendet train`"
    """What writes this kind of model: named in the errors of a directory that is not one."""

    encoder: str = ""
    """Encoder name as in the feature store, e.g. ``open_clip:ViT-L-14/openai``."""
    encoder_weights: str = ""
    """Reference to the encoder's weights (tag, file or sha) so the same features can be made."""
    preprocess_hash: str = ""
    encoder_weights_digest: str = ""
    """Digest of the weights the training features were made with (the store's variant key,
    ``gendet.encoders.registry.weights_identity``); empty for models saved before 0.4.0."""
    encoder_precision: str = ""
    """The encoder precision of the training features (fp32/fp16/bf16); empty before 0.4.0."""
    threshold: float = 0.5
    """Decision threshold on P(fake); calibrated on held-out reals when ``target_fpr`` is set."""
    target_fpr: float | None = None
    platt: tuple[float, float] | None = None
    """(a, b) of Platt scaling fitted on held-out rows of both classes: P(fake) = sigmoid(a * m + b)
    with m the model's logit margin (fake - real); None = sigmoid(m), the raw softmax."""
    calibration_split: str | None = None
    """The rows threshold and Platt scaling were fitted on (``val`` or ``train_holdout``); None
    when not calibrated or not recorded (models saved before)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def calibrated(self, margin: torch.Tensor) -> torch.Tensor:
        """P(fake) [N] (float64) from the logit margin [N]: Platt-scaled when calibrated."""
        margin = margin.double()
        if self.platt is None:
            return torch.sigmoid(margin)
        a, b = self.platt
        return torch.sigmoid(a * margin + b)

    # -- files ------------------------------------------------------------------------------------
    def shared_args(self) -> dict[str, Any]:
        return {"format_version": self.FORMAT_VERSION, "encoder": self.encoder, "encoder_weights": self.encoder_weights,
                "preprocess_hash": self.preprocess_hash, "encoder_weights_digest": self.encoder_weights_digest,
                "encoder_precision": self.encoder_precision, "threshold": float(self.threshold),
                "target_fpr": self.target_fpr, "platt": list(self.platt) if self.platt else None,
                "calibration_split": self.calibration_split, "extra": self.extra}

    def args(self) -> dict[str, Any]:
        """The JSON file's content: the method's fields, then the shared ones."""
        raise NotImplementedError

    def write(self, dir_url: str, tensors: dict[str, torch.Tensor]) -> str:
        """Write the weights, then the JSON file that describes them; returns ``dir_url``."""
        tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
        gio.write_bytes_atomic(gio.join(dir_url, WEIGHTS), save_safetensors(tensors))
        gio.write_json_atomic(gio.join(dir_url, self.ARGS), self.args())
        return dir_url

    @classmethod
    def read_args(cls, dir_url: str) -> tuple[dict[str, Any], str]:
        """(the JSON file of a saved model of this kind, its URL), its format version checked."""
        args_url = gio.join(dir_url, cls.ARGS)
        if not gio.exists(args_url):
            raise GendetError(f"{dir_url}: no {cls.ARGS} here; pass a directory written by {cls.WRITER}")
        args = gio.read_json(args_url)
        if not isinstance(args, dict) or args.get("format_version") != cls.FORMAT_VERSION:
            version = args.get("format_version") if isinstance(args, dict) else None
            raise GendetError(f"{args_url}: format {version}, this gendet reads {cls.FORMAT_VERSION}; upgrade gendet")
        return args, args_url

    @classmethod
    def read_weights(cls, dir_url: str) -> dict[str, torch.Tensor]:
        weights_url = gio.join(dir_url, WEIGHTS)
        try:
            return load_safetensors(gio.read_bytes(weights_url))
        except FileNotFoundError:
            raise GendetError(f"{weights_url}: missing; a saved model is {WEIGHTS} + {cls.ARGS}, save it again") from None
        except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
            raise cls.weights_mismatch(weights_url, exc) from None

    @classmethod
    def weights_mismatch(cls, weights_url: str, exc: BaseException) -> GendetError:
        """The one-line error of weights that are not what the JSON file describes (a cut file, a
        state-dict mismatch)."""
        return GendetError(f"{weights_url}: not the weights {cls.ARGS} describes ({first_line(exc, 200)}); "
                           f"save the model again ({cls.WRITER})")

    @staticmethod
    def shared_fields(args: dict[str, Any], args_url: str) -> dict[str, Any]:
        """The shared fields of a JSON file, each checked: keyword arguments of the constructor."""
        return {"encoder": str(args.get("encoder") or ""), "encoder_weights": str(args.get("encoder_weights") or ""),
                "preprocess_hash": str(args.get("preprocess_hash") or ""),
                "encoder_weights_digest": str(args.get("encoder_weights_digest") or ""),
                "encoder_precision": str(args.get("encoder_precision") or ""),
                "threshold": float(args.get("threshold", 0.5)), "target_fpr": args.get("target_fpr"),
                "platt": _checked_platt(args.get("platt"), args_url),
                "calibration_split": _checked_split(args.get("calibration_split"), args_url),
                "extra": args.get("extra") or {}}


def _checked_platt(raw: Any, args_url: str) -> tuple[float, float] | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in raw)):
        raise GendetError(f"{args_url}: 'platt' must be [a, b], two finite numbers; save the model again")
    return float(raw[0]), float(raw[1])


def _checked_split(raw: Any, args_url: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise GendetError(f"{args_url}: 'calibration_split' must be a string or null; save the model again")
    return raw


def fit_platt(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling (sklearn's logistic regression on the 1-D margin): (a, b)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e4, max_iter=1000).fit(np.asarray(margins, dtype=np.float64).reshape(-1, 1),
                                                        np.asarray(labels, dtype=np.int64))
    return float(model.coef_[0, 0]), float(model.intercept_[0])
