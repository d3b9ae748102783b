"""What every saved detector shares, whatever its method: the encoder it reads, its calibration,
and how it is written to and read from a directory.

On disk a saved model is two files, each written atomically through ``gendet.io``::

    DIR/model.safetensors   the weights: tensors only, so loading runs no pickled code
    DIR/<method>.json       ``detector.json`` (GenDet and its ladder) or ``gamma.json`` (GAMMA): the
                            method's own fields (``method_args``) beside the shared ones below

The shared fields name the encoder (name, weights reference and digest, preprocess hash,
precision) so the same features can be made again, the calibration: the threshold on P(fake), its
target FPR, Platt scaling and the rows both were fitted on, and ``weights_sha256``, the digest of
``model.safetensors``. Every field read back is checked before anything is built from it (types,
ranges, finite numbers), the weights against their digest and for non-finite values: a file gendet
did not write, or one changed since, is refused in one line. Nothing non-finite is ever written: a
training run that diverged fails before its model is saved.
"""

from __future__ import annotations

import hashlib
import math
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
MAX_ARGS_BYTES = 16 << 20  # a model's JSON: fields and calibration, never 16 MiB


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
    calibration_subsets: tuple[str, ...] | None = None
    """The subsets those rows came from, sorted; None when not recorded (models saved before 0.8.0)."""
    calibration_rows: dict[str, int] | None = None
    """How many rows of each label calibrated (``{"real": n, "fake": n}``); None when not recorded."""
    band_low: float | None = None
    """The uncertain band's lower edge (``gendet.eval.metrics.band_low``): P(fake) at or below it is
    ``real``, above ``threshold`` ``fake``, between ``uncertain``; None (models saved before 0.9.0, or
    calibrated without fakes): no band, the verdict is ``fake`` above the threshold, else ``real``."""
    target_miss: float | None = None
    """The share of calibration fakes allowed at or below ``band_low`` (called real)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def calibrated(self, margin: torch.Tensor) -> torch.Tensor:
        """P(fake) [N] (float64) from the logit margin [N]: Platt-scaled when calibrated."""
        margin = margin.double()
        if self.platt is None:
            return torch.sigmoid(margin)
        a, b = self.platt
        return torch.sigmoid(a * margin + b)

    def band(self, threshold: float | None = None) -> tuple[float, float]:
        """(low, high) of the verdict (``band_low``'s docstring); ``threshold`` overrides high, and
        low never rises above it."""
        high = float(self.threshold if threshold is None else threshold)
        return (high if self.band_low is None else min(float(self.band_low), high)), high

    def fit_band(self, fake_scores: np.ndarray, target_miss: float) -> None:
        """Set ``band_low`` from held-out fakes' P(fake) at ``target_miss`` (after the threshold is set)."""
        from gendet.eval.metrics import band_low

        if len(fake_scores):
            self.band_low, self.target_miss = band_low(fake_scores, target_miss, self.threshold), float(target_miss)

    # -- files ------------------------------------------------------------------------------------
    def shared_args(self) -> dict[str, Any]:
        return {"format_version": self.FORMAT_VERSION, "encoder": self.encoder, "encoder_weights": self.encoder_weights,
                "preprocess_hash": self.preprocess_hash, "encoder_weights_digest": self.encoder_weights_digest,
                "encoder_precision": self.encoder_precision, "threshold": float(self.threshold),
                "target_fpr": self.target_fpr, "platt": list(self.platt) if self.platt else None,
                "calibration_split": self.calibration_split,
                "calibration_subsets": list(self.calibration_subsets) if self.calibration_subsets is not None else None,
                "calibration_rows": self.calibration_rows, "band_low": self.band_low, "target_miss": self.target_miss,
                "extra": self.extra}

    def args(self) -> dict[str, Any]:
        """The JSON file's content: the method's fields, then the shared ones."""
        raise NotImplementedError

    def write(self, dir_url: str, tensors: dict[str, torch.Tensor]) -> str:
        """Write the weights, then the JSON file that describes them (with their digest); returns
        ``dir_url``. A model with a non-finite weight or calibration value is refused, unwritten."""
        tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
        bad = sorted(k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
        if bad:
            raise GendetError(f"{dir_url}: the model has non-finite weights ({', '.join(bad[:3])}): training diverged; "
                              "lower the learning rates (or check the features for NaN) and train again")
        args = self.args()
        _check_calibration(args, dir_url)
        data = save_safetensors(tensors)
        gio.write_bytes_atomic(gio.join(dir_url, WEIGHTS), data)
        gio.write_json_atomic(gio.join(dir_url, self.ARGS), {**args, "weights_sha256": hashlib.sha256(data).hexdigest()})
        return dir_url

    @classmethod
    def read_args(cls, dir_url: str) -> tuple[dict[str, Any], str]:
        """(the JSON file of a saved model of this kind, its URL), its format version checked."""
        args_url = gio.join(dir_url, cls.ARGS)
        if not gio.exists(args_url):
            raise GendetError(f"{dir_url}: no {cls.ARGS} here; pass a directory written by {cls.WRITER}")
        try:
            args = gio.read_json(args_url, max_bytes=MAX_ARGS_BYTES)
        except ValueError as exc:  # not JSON, nested too deep, a number too long, NaN
            raise GendetError(f"{args_url}: not a valid {cls.ARGS} ({first_line(exc, 200)}); save the model again") from None
        if not isinstance(args, dict) or args.get("format_version") != cls.FORMAT_VERSION:
            version = args.get("format_version") if isinstance(args, dict) else None
            raise GendetError(f"{args_url}: format {version}, this gendet reads {cls.FORMAT_VERSION}; upgrade gendet")
        return args, args_url

    @classmethod
    def read_weights(cls, dir_url: str, args: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """The weights, checked against ``args``' ``weights_sha256`` (models saved before 0.7.0 have
        none) and for non-finite values."""
        weights_url = gio.join(dir_url, WEIGHTS)
        try:
            data = gio.read_bytes(weights_url)
        except FileNotFoundError:
            raise GendetError(f"{weights_url}: missing; a saved model is {WEIGHTS} + {cls.ARGS}, save it again") from None
        recorded = (args or {}).get("weights_sha256")
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise GendetError(f"{weights_url}: not the weights {cls.ARGS} was written with (sha256 differs from its "
                              "weights_sha256): the file changed since it was saved; restore it or save the model again")
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
            raise cls.weights_mismatch(weights_url, exc) from None
        bad = sorted(k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
        if bad:
            raise GendetError(f"{weights_url}: non-finite weights ({', '.join(bad[:3])}); this model cannot score")
        return tensors

    @classmethod
    def weights_mismatch(cls, weights_url: str, exc: BaseException) -> GendetError:
        """The one-line error of weights that are not what the JSON file describes (a cut file, a
        state-dict mismatch)."""
        return GendetError(f"{weights_url}: not the weights {cls.ARGS} describes ({first_line(exc, 200)}); "
                           f"save the model again ({cls.WRITER})")

    @staticmethod
    def shared_fields(args: dict[str, Any], args_url: str) -> dict[str, Any]:
        """The shared fields of a JSON file, each checked: keyword arguments of the constructor."""
        for key in ("encoder", "encoder_weights", "preprocess_hash", "encoder_weights_digest", "encoder_precision"):
            if args.get(key) is not None and not isinstance(args[key], str):
                raise GendetError(f"{args_url}: {key!r} must be a string; save the model again")
        extra = args.get("extra") or {}
        if not isinstance(extra, dict):
            raise GendetError(f"{args_url}: 'extra' must be an object; save the model again")
        _check_calibration(args, args_url)
        return {"encoder": str(args.get("encoder") or ""), "encoder_weights": str(args.get("encoder_weights") or ""),
                "preprocess_hash": str(args.get("preprocess_hash") or ""),
                "encoder_weights_digest": str(args.get("encoder_weights_digest") or ""),
                "encoder_precision": str(args.get("encoder_precision") or ""),
                "threshold": float(args.get("threshold", 0.5)), "target_fpr": args.get("target_fpr"),
                "platt": _checked_platt(args.get("platt"), args_url),
                "calibration_split": _checked_split(args.get("calibration_split"), args_url),
                **_checked_calibration_rows(args, args_url), "band_low": args.get("band_low"),
                "target_miss": args.get("target_miss"), "extra": extra}


PLATT_LIMIT = 1e6  # far beyond any fitted slope or offset; past it a probability is a step function of noise


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_calibration(args: dict[str, Any], where: str) -> None:
    """The calibration fields of a model's JSON: a threshold in [0, 1], a target FPR in (0, 1) or
    null, Platt's [a, b] finite and within ``PLATT_LIMIT``, all numbers (not strings)."""
    threshold = args.get("threshold", 0.5)
    if not (_number(threshold) and 0.0 <= threshold <= 1.0):
        raise GendetError(f"{where}: 'threshold' {threshold!r} is not a probability in [0, 1]; save the model again")
    fpr = args.get("target_fpr")
    if fpr is not None and not (_number(fpr) and 0.0 < fpr < 1.0):
        raise GendetError(f"{where}: 'target_fpr' {fpr!r} is not a rate in (0, 1); save the model again")
    _checked_platt(args.get("platt"), where)
    low, miss = args.get("band_low"), args.get("target_miss")
    if low is not None and not (_number(low) and -1.0 <= low <= threshold):
        raise GendetError(f"{where}: 'band_low' {low!r} is not a probability at or below the threshold; save the model again")
    if miss is not None and not (_number(miss) and 0.0 < miss < 1.0):
        raise GendetError(f"{where}: 'target_miss' {miss!r} is not a rate in (0, 1); save the model again")


def _checked_platt(raw: Any, args_url: str) -> tuple[float, float] | None:
    if raw is None:
        return None
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and all(_number(v) and abs(v) <= PLATT_LIMIT for v in raw)):
        raise GendetError(f"{args_url}: 'platt' must be [a, b], two finite numbers within {PLATT_LIMIT:g}; "
                          "save the model again")
    return float(raw[0]), float(raw[1])


def _checked_split(raw: Any, args_url: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise GendetError(f"{args_url}: 'calibration_split' must be a string or null; save the model again")
    return raw


def _checked_calibration_rows(args: dict[str, Any], args_url: str) -> dict[str, Any]:
    subsets, rows = args.get("calibration_subsets"), args.get("calibration_rows")
    if subsets is not None and not (isinstance(subsets, list) and all(isinstance(s, str) for s in subsets)):
        raise GendetError(f"{args_url}: 'calibration_subsets' must be a list of strings or null; save the model again")
    if rows is not None and not (isinstance(rows, dict) and all(isinstance(k, str) and isinstance(v, int)
                                                                  and not isinstance(v, bool) and v >= 0
                                                                  for k, v in rows.items())):
        raise GendetError(f"{args_url}: 'calibration_rows' must map labels to counts or be null; save the model again")
    return {"calibration_subsets": tuple(subsets) if subsets is not None else None, "calibration_rows": rows}


def fit_platt(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling, (a, b), with Platt's (1999) smoothed targets: a fake counts as
    (N+ + 1) / (N+ + 2) fake and a real as 1 / (N- + 2), so rows a model separates perfectly (its own
    training family's held-out rows, which calibrate it since 0.8.0) give a finite slope and
    probabilities short of 0 and 1, not a step function (thresholds of 1e-32, measured). Fitted by
    sklearn's logistic regression on the 1-D margin, each row once per class, weighted by its target."""
    from sklearn.linear_model import LogisticRegression

    m = np.asarray(margins, dtype=np.float64).reshape(-1, 1)
    y = np.asarray(labels, dtype=np.int64)
    n_fake, n_real = int(y.sum()), int(len(y) - y.sum())
    target = np.where(y == 1, (n_fake + 1) / (n_fake + 2), 1 / (n_real + 2))
    model = LogisticRegression(C=1e4, max_iter=1000).fit(np.vstack([m, m]), np.r_[np.ones(len(y)), np.zeros(len(y))],
                                                        sample_weight=np.r_[target, 1 - target])
    return float(model.coef_[0, 0]), float(model.intercept_[0])
