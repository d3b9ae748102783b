"""One way to load a trained detector, whatever the URI: every verb and the served model use it.

``uri`` is ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN/detector`` or
``mlflow-artifacts:/...`` (MLflow downloads the model's ``artifacts/detector`` folder), or a local
path / fsspec URL of a saved Detector (``detector.json``) or of an MLflow model directory holding
one. Only the detector's own files are read (safetensors weights and JSON): nothing in the model
is executed, and no image encoder is loaded (``gendet.serve.scorer`` adds it).
"""

from __future__ import annotations

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.method.detector import ARGS, Detector

ARTIFACT = "detector"  # the Detector's folder inside a logged MLflow model: artifacts/detector
MLMODEL_FILE = "MLmodel"  # marks an MLflow model directory
REGISTRY_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
USAGE = "pass models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/detector or a directory from `gendet train`"


def load_detector(uri: str) -> Detector:
    """The Detector behind ``uri`` (see the module docstring)."""
    uri = str(uri)
    if uri.startswith(REGISTRY_SCHEMES):
        return Detector.load(_download(uri))
    url = uri[len("file://"):] if uri.startswith("file://") else uri
    for folder in (url, gio.join(url, "artifacts", ARTIFACT)):
        if gio.exists(gio.join(folder, ARGS)):
            return Detector.load(folder)
    if gio.exists(gio.join(url, MLMODEL_FILE)):
        raise GendetError(f"--model {uri}: an MLflow model, but not a gendet detector (no artifacts/{ARTIFACT}/{ARGS}); "
                          "log one with gendet.serve.pyfunc.log_detector")
    raise GendetError(f"--model {uri}: neither a saved detector ({ARGS}) nor an MLflow model ({MLMODEL_FILE}); {USAGE}")


def _download(uri: str) -> str:
    import mlflow

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/artifacts/{ARTIFACT}")
    except Exception as exc:  # MLflow raises several types for a missing model / unreachable server
        raise GendetError(f"--model {uri}: cannot load this MLflow model ({first_line(exc, 200)}); check the URI, "
                          "that it is a gendet detector, and MLFLOW_TRACKING_URI / --tracking-uri") from exc
