"""The detector as an MLflow pyfunc model ("models from code": no pickle anywhere).

What is logged: the code file ``gendet/serve/pyfunc_model.py`` (it calls ``mlflow.models.set_model``),
a copy of the part of ``gendet`` that scoring imports (``code_paths``, ``SERVING_CODE``: a fresh
serving environment needs only the pinned pip requirements, and a model keeps the code it was
logged with),
the saved Detector directory as the artifact ``detector`` (``model.safetensors`` + ``detector.json``:
heads, encoder name and weights reference, preprocess hash, calibrated threshold), a signature, an
input example, and the same facts as MLmodel ``metadata`` so tools can read them without loading.
``mlflow models serve`` and ``gendet predict --model models:/gendet@champion`` need nothing else.

Serving contract: the input is a DataFrame with a string column ``image`` holding base64-encoded
image bytes (``dataframe_split``, ``dataframe_records`` or ``inputs`` over HTTP); the output has
one row per input, the reply every scorer gives (``gendet.serve.scorer``, CONTRACTS.md "The reply"):
``verdict``, ``probability``, ``band``, ``model``, ``encoder``, ``encoder_digest``, ``error``, then
0.8's ``score``, ``is_fake``, ``threshold`` (score and is_fake null when the row was not scored:
never a verdict of ``real``). ``model`` is ``model_config["model"]`` when the server sets it, else
the logged model's ``models:/<model_id>``. An ``image`` that is a URL is not fetched (no requests
to addresses a client picks) unless ``model_config["allow_urls"]`` is true; then http(s) only.
The params schema (``masks``) is the same for both methods, so asking a GenDet model for masks is
refused (HTTP 400) instead of dropped; MLflow's server itself drops params the schema does not name
(with a warning), which Ray Serve (``pipelines/serve.py``) refuses.

A GAMMA model (``gendet.method.gamma.detector``, logged the same way under ``artifacts/detector``,
``GAMMA_SIGNATURE``) answers two more columns: ``fake_fraction`` (the share of the pixels the model
saw, its crop of the image, that its predicted mask covers; null when the row was not scored or the model has no segmentation
heads) and, when the request's params say ``{"masks": true}``, ``mask_png`` (the mask as a base64
8-bit greyscale PNG of the image's size, 255 = predicted generated; null when not scored). Asking
a GenDet detector for masks is refused (HTTP 400); its frame is unchanged.

Limits (``model_config`` keys, defaults in ``SERVING_LIMITS``): a request of more than
``max_images`` rows or ``max_request_bytes`` of image bytes is refused whole (HTTP 400, one line);
an image over ``max_pixels`` is refused alone from its header (``too_large``) before it is decoded.
Images are decoded one at a time and reduced to the encoder's input at once, so a request holds
one full-resolution image, not all of them (benchmarks/serve_memory.py). Images are not decoded
at reduced size (JPEG draft mode): that would change the features from the store's.
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from gendet import io as gio
from gendet.serve.loading import ARTIFACT
from gendet.serve.request_format import LIMITS, decode_b64
from gendet.serve.scorer import ImageScorer

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(__file__).parents[1]
# The code a served model runs, relative to the package (tests/serve check it is the import
# closure of pyfunc_model): the rest of gendet (training, extraction, the zoo and its weights) stays out.
SERVING_CODE = ("__init__.py", "io.py", "config.py", "progress.py", "data/__init__.py", "data/decode.py", "encoders",
                "eval/__init__.py", "eval/metrics.py", "eval/overlays.py", "method/__init__.py", "method/saved.py",
                "method/gendet/__init__.py", "method/gendet/config.py", "method/gendet/detector.py",
                "method/gendet/networks.py", "method/gamma/__init__.py", "method/gamma/config.py",
                "method/gamma/networks.py", "method/gamma/detector.py", "serve")
INPUT_COLUMN = "image"
MASKS_PARAM = "masks"
PARAMS = ParamSchema([ParamSpec(MASKS_PARAM, "boolean", False)])
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
    outputs=Schema([ColSpec("string", "verdict"), ColSpec("double", "probability", required=False),
                    ColSpec(Array("double"), "band"), ColSpec("string", "model"), ColSpec("string", "encoder"),
                    ColSpec("string", "encoder_digest"), ColSpec("string", "error", required=False),
                    ColSpec("double", "score", required=False), ColSpec("boolean", "is_fake", required=False),
                    ColSpec("double", "threshold")]),
    params=PARAMS,
)
GAMMA_SIGNATURE = ModelSignature(
    inputs=SIGNATURE.inputs,
    outputs=Schema([*SIGNATURE.outputs.inputs, ColSpec("double", "fake_fraction", required=False),
                    ColSpec("string", "mask_png", required=False)]),
    params=PARAMS,
)
# The library's own dependencies serve the model, pinned to what logged it; Ray is left out (the
# library never imports it). Listed rather than inferred: inference loads the model in a subprocess.
_NOT_FOR_SERVING = {"ray"}
SERVING_LIMITS = LIMITS  # the same limits as every server of a gendet model (request_format)


def pin(name: str, installed: str) -> str:
    """``name==version`` without a local label (``torch==2.4.1``, not ``+cu121``): pip cannot
    install a local version from an index, so a pin with one would break every serving env."""
    from packaging.version import Version

    return f"{name}=={Version(installed).public}"


def pip_requirements() -> list[str]:
    """gendet's runtime dependencies (no extras), pinned to the installed versions."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    pins = []
    for text in requires("gendet") or []:
        req = Requirement(text)
        if req.marker is not None or req.name in _NOT_FOR_SERVING:
            continue
        try:
            pins.append(pin(req.name, version(req.name)))
        except PackageNotFoundError:
            pins.append(str(req))
    return pins


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def example_image() -> bytes:
    """A tiny deterministic PNG: the logged input example (and a smoke test of a served model)."""
    from PIL import Image

    ramp = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    return buf.getvalue()


REPLY_COLUMNS = [c.name for c in SIGNATURE.outputs.inputs]


def to_frame(results: list[dict[str, Any]], *, gamma: bool = False, masks: bool = False) -> pd.DataFrame:
    """Replies -> the output frame of SIGNATURE (``gamma``: of GAMMA_SIGNATURE, ``mask_png`` only
    with ``masks``). An errored row has verdict ``error``, probability and score None (JSON ``null``:
    a NaN would be written as ``NaN``, which strict JSON parsers reject), is_fake None (not false: an
    image that could not be scored was not found real) and its reason."""
    frame = pd.DataFrame({c: pd.Series([r[c] for r in results], dtype=object) for c in REPLY_COLUMNS})
    if gamma:
        frame["fake_fraction"] = pd.Series([r.get("fake_fraction") for r in results], dtype=object)
    if gamma and masks:
        frame["mask_png"] = pd.Series([b64(r["mask_png"]) if "mask_png" in r else None for r in results], dtype=object)
    return frame


def bad_request(message: str) -> Exception:
    """An error the scoring server answers with HTTP 400 and this one line (not a 500)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class GendetModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: loads Detector + encoder once in ``load_context``."""

    scorer: ImageScorer

    def load_context(self, context: Any) -> None:
        from gendet.method.gamma.detector import GammaDetector
        from gendet.serve.bundle import bundled_weights
        from gendet.serve.loading import load_located, scorer_for

        config = context.model_config or {}
        self.limits = {k: int(config.get(k, v)) for k, v in SERVING_LIMITS.items()}
        self.allow_urls = bool(config.get("allow_urls", False))
        model, folder = load_located(context.artifacts[ARTIFACT])
        self.gamma = isinstance(model, GammaDetector)
        self.scorer = scorer_for(model, device=load_device(config.get("device", "auto")),
                                 threshold=config.get("threshold"), max_pixels=self.limits["max_pixels"],
                                 model=str(config.get("model") or logged_model_name(folder)),
                                 bundled=bundled_weights(folder, model))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if INPUT_COLUMN not in frame.columns:
            raise bad_request(f"model input has columns {list(frame.columns)}; send a column "
                              f"{INPUT_COLUMN!r} of base64-encoded image bytes")
        limits = getattr(self, "limits", SERVING_LIMITS)
        if len(frame) > limits["max_images"]:
            raise bad_request(f"request has {len(frame)} images, at most {limits['max_images']} are scored per request; "
                              "send them in several requests")
        values = list(frame[INPUT_COLUMN])
        encoded = sum(len(v) for v in values if isinstance(v, str)) * 3 // 4  # base64 -> bytes, before decoding any
        if encoded > limits["max_request_bytes"]:
            raise bad_request(f"request carries {encoded} bytes of images, over the limit of {limits['max_request_bytes']}; "
                              "send them in several requests")
        masks = bool((params or {}).get(MASKS_PARAM, False))
        if masks and not self.scorer.has_masks:
            raise bad_request('params {"masks": true}: masks need a GAMMA model with segmentation heads '
                              "(`gendet train-gamma`); send the request without them")
        allow_urls = getattr(self, "allow_urls", False)
        results = self.scorer.score_bytes([decode_b64(v, allow_urls=allow_urls) for v in values], masks=masks)
        return to_frame(results, gamma=getattr(self, "gamma", False), masks=masks)


def load_device(device: str) -> str:
    """``auto`` (the default a model is logged with): the GPU when this process has one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def logged_model_name(detector_folder: str) -> str:
    """``models:/<model_id>`` (MLflow 3) or ``runs:/<run>/<path>`` of the MLflow model holding
    ``detector_folder`` (its ``artifacts/detector``), from the MLmodel file beside it; the model's
    directory for one saved outside any run."""
    import yaml

    root = Path(detector_folder).parent.parent
    try:
        with open(root / "MLmodel") as f:
            meta = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        meta = {}
    if meta.get("model_id"):
        return f"models:/{meta['model_id']}"
    if meta.get("run_id"):
        return f"runs:/{meta['run_id']}/{meta.get('artifact_path', '')}".rstrip("/")
    return str(root)


def stage_serving_code(tmp: str) -> str:
    """A copy of ``SERVING_CODE`` as ``<tmp>/gendet`` (what ``code_paths`` logs), caches left out."""
    root = Path(tmp) / "gendet"
    for rel in SERVING_CODE:
        src, dst = PACKAGE_DIR / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    return str(root)


def _detector_dir(detector: Any, tmp: str, *, bundle: bool = True) -> str:
    """``detector`` (a Detector or GammaDetector, or a saved one's directory or URL) saved as
    ``<tmp>/detector``, so the artifact is always ``artifacts/detector`` inside the model
    (``gendet.serve.loading`` reads it there), with its encoder weights when they are a file or URL
    (``gendet.serve.bundle``; a directory's own bundle is carried over)."""
    from gendet.method.gamma.detector import GammaDetector, is_gamma_dir
    from gendet.method.gendet.detector import Detector
    from gendet.serve.bundle import BUNDLE_DIR, bundle_weights, bundled_weights

    source = None
    if isinstance(detector, (str, Path)):
        source = str(detector)
        detector = (GammaDetector if is_gamma_dir(source) else Detector).load(source)
    folder = detector.save(str(Path(tmp) / ARTIFACT))
    if bundle:
        if source and gio.is_local(gio.fs_and_path(source)[0]) and bundled_weights(source, detector):
            shutil.copytree(Path(source) / BUNDLE_DIR, Path(folder) / BUNDLE_DIR)
        else:
            bundle_weights(detector, folder)
    return folder


def _model_kwargs(detector_dir: str, tmp: str) -> dict[str, Any]:
    from gendet.method.gamma.detector import GammaDetector, is_gamma_dir
    from gendet.method.gendet.detector import Detector

    gamma = is_gamma_dir(detector_dir)
    det = (GammaDetector if gamma else Detector).load(detector_dir)
    metadata = {"encoder": det.encoder, "encoder_weights": det.encoder_weights,
                "encoder_weights_digest": det.encoder_weights_digest, "encoder_precision": det.encoder_precision,
                "preprocess_hash": det.preprocess_hash, "threshold": det.threshold, "target_fpr": det.target_fpr,
                "method": det.method}
    if gamma:
        metadata |= {"token_grid": list(det.grid), "token_dim": det.token_dim, "sources": list(det.sources),
                     "masks": det.has_masks}
    else:
        metadata["feature_dim"] = det.feature_dim
    return dict(python_model=str(MODEL_CODE), artifacts={ARTIFACT: detector_dir},
                signature=GAMMA_SIGNATURE if gamma else SIGNATURE,
                input_example=pd.DataFrame({INPUT_COLUMN: [b64(example_image())]}),
                pip_requirements=pip_requirements(), metadata=metadata,
                model_config={"device": "auto", "allow_urls": False, **SERVING_LIMITS},
                code_paths=[stage_serving_code(tmp)])


def log_detector(detector: Any, *, name: str = "detector", registered_model_name: str | None = None,
                 **kwargs: Any) -> Any:
    """Log a Detector or GammaDetector (object or saved directory) into the active run; returns
    MLflow's ModelInfo.

    ``registered_model_name`` registers it in the same call; ``gendet.mlops.registry.register`` does that
    and sets the ``challenger`` alias.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model_name,
                                       **_model_kwargs(_detector_dir(detector, tmp), tmp), **kwargs)


def save_detector_model(detector: Any, path: str) -> str:
    """Write a Detector or GammaDetector as a local MLflow model directory (for ``mlflow models serve -m path``)."""
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pyfunc.save_model(path, **_model_kwargs(_detector_dir(detector, tmp), tmp))
    return path
