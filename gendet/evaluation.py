"""Evaluation helpers shared by ``gendet evaluate``, ``gendet train`` and the demo (no Ray here).

* ``load_detector(uri)``: a ``Detector`` from a local directory written by ``Detector.save`` or
  from an MLflow model URI (``models:/gendet@champion``, ``runs:/…``, a local MLflow model dir).
  Only the detector's own files are read: evaluating features needs no image encoder.
* ``reports(scored, detectors)``: one ``metrics.json`` dict per method from scored rows.
* ``table(reports, …)``: the paper's per-subset tables (Tables 1–3: a row per method, a column per
  subset plus the mean) and Table 4 (a row per degradation) as Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gendet import GendetError
from gendet import io as gio
from gendet.detector import ARGS, Detector
from gendet.metrics import metrics_report


def load_detector(uri: str) -> Detector:
    """The Detector behind a local directory or an MLflow model URI."""
    if "://" not in uri or uri.startswith("file://"):
        local = uri[len("file://"):] if uri.startswith("file://") else uri
        if gio.exists(gio.join(local, ARGS)):
            return Detector.load(local)
        if gio.exists(gio.join(local, "artifacts", "detector", ARGS)):
            return Detector.load(gio.join(local, "artifacts", "detector"))
        if not uri.startswith(("models:/", "runs:/")):
            raise GendetError(f"--model {uri}: neither a detector directory ({ARGS}) nor an MLflow model; "
                              "pass models:/NAME@ALIAS, runs:/ID/detector or a directory from `gendet train`")
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri.rstrip("/") + "/artifacts/detector")
    except Exception as exc:  # MLflow raises several types for a missing model / unreachable server
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise GendetError(f"--model {uri}: cannot load this MLflow model ({first}); check the URI and "
                          "MLFLOW_TRACKING_URI") from exc
    return Detector.load(local)


def reports(scores: Mapping[str, np.ndarray], labels: np.ndarray, subsets: np.ndarray,
            detectors: Mapping[str, Detector], *, model_uris: Mapping[str, str] | None = None) -> dict[str, dict]:
    """One metrics.json dict per method, each at its detector's calibrated threshold."""
    out = {}
    for method, det in detectors.items():
        out[method] = metrics_report(scores[method], labels, subsets, threshold=0.5,
                                     calibrated_threshold=det.threshold if det.target_fpr else None,
                                     target_fpr=det.target_fpr, model=(model_uris or {}).get(method, method),
                                     encoder=det.encoder)
    return out


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal; "–" for missing (None) or NaN."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def table(reports_by_row: Mapping[str, Mapping[str, Any]], *, metric: str = "acc", mean_key: str = "mean_acc",
          subsets: Sequence[str] | None = None, row_title: str = "method") -> str:
    """Markdown: a row per entry of ``reports_by_row``, a column per subset (in %), then the mean."""
    if not reports_by_row:
        raise GendetError("no results to tabulate")
    names = list(subsets) if subsets else sorted({s for r in reports_by_row.values() for s in r["subsets"]})
    lines = [f"| {row_title} | " + " | ".join(names) + f" | {mean_key} |",
             "|---" * (len(names) + 2) + "|"]
    for row, rep in reports_by_row.items():
        cells = [pct(rep["subsets"].get(s, {}).get(metric)) for s in names]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {pct(rep.get(mean_key))} |")
    return "\n".join(lines)


def degradation_table(reports_by_degrade: Mapping[str, Mapping[str, Any]]) -> str:
    """Table 4: a row per degradation, mean accuracy, mAP and calibrated accuracy over subsets."""
    lines = ["| degradation | mean_acc | mAP | mean_acc_calibrated |", "|---|---|---|---|"]
    for degrade, rep in reports_by_degrade.items():
        lines.append(f"| {degrade or 'none'} | {pct(rep.get('mean_acc'))} | {pct(rep.get('mAP'))} | "
                     f"{pct(rep.get('mean_acc_calibrated'))} |")
    return "\n".join(lines)
