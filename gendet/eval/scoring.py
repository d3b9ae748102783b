"""Scoring a feature store: detectors in, per-row scores and ``metrics.json`` dicts out.

No image is decoded and no encoder loaded: the store holds the features. ``DetectorScorer`` turns
one pyarrow batch of store rows into columns ``label``, ``subset``, ``score_<method>`` and, for
the teacher-student rungs, ``discrepancy_<method>`` (one forward pass each, ``Detector.
score_and_discrepancy``). It is a plain callable class: ``pipelines.evaluate`` runs it as a Ray
Data actor over a cluster's store; ``score_store`` runs it here in one process (pyarrow.dataset).
``reports`` turns the scored columns into one ``metrics.json`` dict per method.

Detectors are duck-typed (``score_and_discrepancy``, ``feature_dim``, ``preprocess_hash``,
``threshold``, ``target_fpr``, ``encoder``, ``method``): evaluation sits below the method layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from gendet import GendetError
from gendet.eval.metrics import metrics_report
from gendet.features.store import Variant, check_variant, feature_matrix, open_dataset

COLUMNS = ["feature", "label", "subset", "split", "shard"]


class DetectorScorer:
    """A pyarrow batch of store rows -> label, subset, score per method (+ mean discrepancy)."""

    def __init__(self, detectors: Mapping[str, Any]):
        self.detectors = dict(detectors)

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> dict[str, np.ndarray]:
        x = feature_matrix(batch.column("feature")).astype(np.float32)
        out = {"label": np.asarray(batch.column("label").to_pylist()),
               "subset": np.asarray(batch.column("subset").to_pylist())}
        for method, det in self.detectors.items():
            score, disc = det.score_and_discrepancy(x)
            out[f"score_{method}"] = score
            if disc is not None:
                out[f"discrepancy_{method}"] = disc
        return out


def check_matches(detectors: Mapping[str, Any], variant: Variant) -> None:
    """Every detector must score this variant's features (same width, same preprocessing; same
    weights digest and precision where both recorded them: ``gendet.features.store.check_variant``)."""
    for method, det in detectors.items():
        if det.feature_dim != variant.dim or (det.preprocess_hash and det.preprocess_hash != variant.preprocess_hash):
            raise GendetError(f"{variant.url}: features of {variant.encoder} (dim {variant.dim}) do not match the "
                              f"{method} detector's encoder {det.encoder} (dim {det.feature_dim}); evaluate on a "
                              "store extracted with the detector's encoder")
        check_variant(variant, det)


def rows_to_score(splits: tuple[str, ...] = (), shards: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """(column, values) of the rows to score: those of ``shards`` (by stem) when given, else those
    of ``splits``; each runner spells the filter in its own expressions (pyarrow here, Ray's there)."""
    if not splits and not shards:
        raise GendetError("name the splits or the shards to score")
    return ("shard", list(shards)) if shards else ("split", list(splits))


def no_rows_error(variant: Variant, splits: tuple[str, ...], shards: tuple[str, ...]) -> GendetError:
    what = f"shard in {list(shards)}" if shards else f"split in {list(splits)}; pass --eval-splits with splits the store has"
    return GendetError(f"{variant.url}: no rows with {what}")


def score_store(detectors: Mapping[str, Any], variant: Variant, splits: tuple[str, ...] = (), *,
                shards: tuple[str, ...] = (), batch_size: int = 4096) -> dict[str, np.ndarray]:
    """The scored columns over one variant's rows of ``splits`` (or ``shards``), in this process."""
    check_matches(detectors, variant)
    column, values = rows_to_score(splits, shards)
    where = pads.field(column).isin(values)
    scorer = DetectorScorer(detectors)
    batches = open_dataset(variant.url).to_batches(columns=COLUMNS, filter=where, batch_size=batch_size)
    parts = [scorer(b) for b in batches if b.num_rows]
    if not parts:
        raise no_rows_error(variant, splits, shards)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def reports(scored: Mapping[str, np.ndarray], detectors: Mapping[str, Any], *,
            model_uris: Mapping[str, str] | None = None) -> dict[str, dict]:
    """One metrics.json dict per method from scored columns, each at its detector's calibrated threshold."""
    out = {}
    for method, det in detectors.items():
        out[method] = metrics_report(scored[f"score_{method}"], scored["label"], scored["subset"], threshold=0.5,
                                     calibrated_threshold=det.threshold if det.target_fpr else None,
                                     target_fpr=det.target_fpr, model=(model_uris or {}).get(method, method),
                                     encoder=det.encoder)
    return out
