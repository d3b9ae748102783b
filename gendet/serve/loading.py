"""One way to load a trained detector, whatever the URI: every verb and the served model use it.

``uri`` is ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN/detector`` or
``mlflow-artifacts:/...`` (MLflow downloads the model's ``artifacts/detector`` folder), or a local
path / fsspec URL of a saved Detector (``detector.json``) or of an MLflow model directory holding
one. Only the detector's own files are read (safetensors weights and JSON): nothing in the model
is executed, and no image encoder is loaded (``load_scorer`` adds it: ``gendet.serve.scorer``).

The folder holds a GenDet ``Detector`` (``detector.json``) or a GAMMA model (``gamma.json``,
``gendet.method.gamma.detector``; logged under the same ``artifacts/detector``): ``load_model``
returns either, ``load_detector`` (the verbs that read pooled features) a Detector only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.method.gamma.detector import GammaDetector, is_gamma_dir
from gendet.method.gendet.detector import ARGS, Detector

if TYPE_CHECKING:
    from gendet.serve.scorer import ImageScorer

ARTIFACT = "detector"  # the Detector's folder inside a logged MLflow model: artifacts/detector
MLMODEL_FILE = "MLmodel"  # marks an MLflow model directory
REGISTRY_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
USAGE = ("pass models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/detector or a directory from `gendet train` "
         "or `gendet train-gamma`")


def load_detector(uri: str) -> Detector:
    """The GenDet Detector behind ``uri`` (see the module docstring); a GAMMA model is refused in one line."""
    model = load_model(uri)
    if not isinstance(model, Detector):
        raise GendetError(f"--model {uri}: a GAMMA model (gamma.json); this verb takes a GenDet detector from "
                          "`gendet train` (GAMMA models are scored by `gendet predict` and the served model)")
    return model


def load_model(uri: str) -> Detector | GammaDetector:
    """The Detector or GammaDetector behind ``uri`` (see the module docstring)."""
    return load_located(uri)[0]


def load_located(uri: str) -> tuple[Detector | GammaDetector, str]:
    """(the model behind ``uri``, the detector folder it was read from: a registry model's download)."""
    uri = str(uri)
    if uri.startswith(REGISTRY_SCHEMES):
        folder = _download(uri)
        return (GammaDetector.load(folder) if is_gamma_dir(folder) else Detector.load(folder)), folder
    url = uri[len("file://"):] if uri.startswith("file://") else uri
    for folder in (url, gio.join(url, "artifacts", ARTIFACT)):
        if gio.exists(gio.join(folder, ARGS)):
            return Detector.load(folder), folder
        if is_gamma_dir(folder):
            return GammaDetector.load(folder), folder
    if gio.exists(gio.join(url, MLMODEL_FILE)):
        raise GendetError(f"--model {uri}: an MLflow model, but not a gendet detector (no artifacts/{ARTIFACT}/{ARGS}); "
                          "log one with gendet.serve.pyfunc.log_detector")
    raise GendetError(f"--model {uri}: neither a saved detector ({ARGS}) nor an MLflow model ({MLMODEL_FILE}); {USAGE}")


def pinned(uri: str) -> tuple[str, str]:
    """(the URI to load, the name every reply gives it): ``models:/NAME@ALIAS`` is resolved once to
    ``models:/NAME/VERSION`` (the alias may move while a job runs; its replies keep naming one version),
    named ``NAME/VERSION``; any other URI loads as given and is its own name (credentials redacted)."""
    uri = str(uri)
    if uri.startswith("models:/"):
        name, _, rest = uri[len("models:/"):].rstrip("/").partition("@")
        if rest:
            from mlflow import MlflowClient

            try:
                version = MlflowClient().get_model_version_by_alias(name, rest).version
            except Exception as exc:  # a missing alias or model, an unreachable server
                raise GendetError(f"--model {uri}: cannot resolve this alias ({first_line(exc, 200)}); check the "
                                  "name and alias, and MLFLOW_TRACKING_URI / --tracking-uri") from exc
            return f"models:/{name}/{version}", f"{name}/{version}"
        return uri, uri[len("models:/"):].rstrip("/")
    return uri, gio.redact(uri)


def load_scorer(uri: str, *, device: str = "cpu", threshold: float | None = None, masks: bool = False,
                precision: str = "fp32") -> ImageScorer:
    """Load a model once (any URI ``gendet.serve.loading.load_model`` takes) with its encoder: an
    ``ImageScorer`` for a GenDet detector, a ``GammaScorer`` (fake_fraction, masks) for a GAMMA model.
    ``masks``: refuse, before the encoder is loaded, a model that cannot make masks. Its replies
    name the model (``pinned``)."""
    from gendet.serve.bundle import bundled_weights

    uri, label = pinned(uri)
    model, folder = load_located(uri)
    if masks and not (isinstance(model, GammaDetector) and model.has_masks):
        what = "a GAMMA model without segmentation heads" if isinstance(model, GammaDetector) else "a GenDet detector"
        raise GendetError(f"--mask-dir: masks need a GAMMA model with segmentation heads (`gendet train-gamma`); "
                          f"--model {uri} is {what}")
    bundled = bundled_weights(folder, model) if gio.is_local(gio.fs_and_path(folder)[0]) else None
    return scorer_for(model, device=device, threshold=threshold, model=label, precision=precision, bundled=bundled)


def scorer_for(detector: Detector | GammaDetector, /, **kwargs: Any) -> ImageScorer:
    """The scorer of a loaded model, its encoder loaded (``ImageScorer.from_detector``'s keywords):
    a ``GammaScorer`` for a GAMMA model, an ``ImageScorer`` otherwise. Every loader goes through it."""
    if isinstance(detector, GammaDetector):
        from gendet.serve.gamma_scorer import GammaScorer

        return GammaScorer.from_detector(detector, **kwargs)
    from gendet.serve.scorer import ImageScorer

    return ImageScorer.from_detector(detector, **kwargs)


def _download(uri: str) -> str:
    import mlflow

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/artifacts/{ARTIFACT}")
    except Exception as exc:  # MLflow raises several types for a missing model / unreachable server
        raise GendetError(f"--model {uri}: cannot load this MLflow model ({first_line(exc, 200)}); check the URI, "
                          "that it is a gendet detector, and MLFLOW_TRACKING_URI / --tracking-uri") from exc
