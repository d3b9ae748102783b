"""The scoring side of ``gendet score``: the model loaded once per worker, rows in, replies out.

``model_files`` packs the saved detector (its JSON and safetensors, never a pickle; its bundled encoder
weights when it has them, ``gendet.serve.bundle``) so a worker on
any node loads exactly the model the driver resolved (``models:/NAME@ALIAS`` pinned to its
version, ``gendet.serve.loading.pinned``) without reaching MLflow. ``BatchScorer`` is a plain
class: Ray Data runs it as the actor of a pool, ``run_local`` in this process.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gendet import GendetError
from gendet import io as gio
from gendet.progress import progress
from gendet.serve.batch.inputs import PartReader
from gendet.serve.batch.store import SCHEMA, PartCollector, ScorePlan, shard_complete, write_part

log = logging.getLogger(__name__)
ACTOR_SCHEMA = SCHEMA.append(pa.field("n_in_part", pa.int64()))


def model_files(uri: str) -> tuple[dict[str, bytes], str, Any]:
    """({relative path: bytes} of the model behind ``uri``, its bundled encoder weights included
    (``gendet.serve.bundle``), the name replies give it, the loaded model)."""
    from gendet.serve.bundle import bundle_files
    from gendet.serve.loading import load_located, pinned

    uri, label = pinned(uri)
    model, folder = load_located(uri)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    return {**files, **bundle_files(folder)}, label, model


def load_files(files: dict[str, bytes]) -> tuple[Any, str | None]:
    """(the Detector or GammaDetector ``model_files`` packed, its checked bundled weights or None)."""
    from gendet.method.gamma.detector import GammaDetector, is_gamma_dir
    from gendet.method.gendet.detector import Detector
    from gendet.serve.bundle import bundled_weights

    folder = tempfile.mkdtemp(prefix="gendet-model-")
    for name, data in files.items():
        if name.startswith(("/", "..")) or "/../" in name:
            raise GendetError(f"model file {name!r}: not a path inside the model")
        Path(folder, name).parent.mkdir(parents=True, exist_ok=True)
        Path(folder, name).write_bytes(data)
    model = GammaDetector.load(folder) if is_gamma_dir(folder) else Detector.load(folder)
    return model, bundled_weights(folder, model)


class BatchScorer:
    """Reader batches (``PartReader.read`` columns) -> output rows (``ACTOR_SCHEMA``, a pyarrow Table)."""

    def __init__(self, files: dict[str, bytes], *, model: str, device: str = "cpu", precision: str = "fp32",
                 threshold: float | None = None, mask_dir: str | None = None, threads: int | None = None):
        import torch

        from gendet.serve.loading import scorer_for

        if threads:
            torch.set_num_threads(threads)
        detector, bundled = load_files(files)
        self.scorer = scorer_for(detector, device=device, threshold=threshold, model=model, precision=precision,
                                 bundled=bundled)
        if mask_dir and not self.scorer.has_masks:
            raise GendetError(f"--mask-dir {mask_dir}: masks need a GAMMA model with segmentation heads; "
                              f"--model {model} has none")
        self.mask_dir = mask_dir

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from gendet.serve.batch.store import output_rows

        errors = [str(e) for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if not e]
        replies: list[dict[str, Any]] = [self.scorer.error(e) if e else {} for e in errors]
        sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in ok]
        scored = self.scorer.score_pixels([batch["pixels"][i] for i in ok], sizes, masks=bool(self.mask_dir))
        masks = [""] * len(errors)
        for i, reply in zip(ok, scored):
            png = reply.pop("mask_png", None)
            if png is not None:
                masks[i] = gio.join(self.mask_dir, str(batch["part"][i]), f"{int(batch['index'][i]):06d}.mask.png")
                gio.write_bytes_atomic(masks[i], png)
            replies[i] = reply
        columns = output_rows(batch, replies, masks)
        columns["n_in_part"] = [int(x) for x in batch["n_in_part"]]
        return pa.Table.from_pydict(columns, schema=ACTOR_SCHEMA)


def score_stored(detector: Any, variant_url: str, part: Any, *, model: str,
                 threshold: float | None = None) -> pa.Table:
    """One shard scored from the features a store already holds for it (``gendet score --features``):
    its rows in the store's order, then its quarantined samples as ``error`` rows with their reasons."""
    import pyarrow.parquet as pq

    from gendet.features.store import QUARANTINE_SUFFIX, feature_matrix
    from gendet.serve.batch.store import output_rows
    from gendet.serve.scorer import Replier

    replier = Replier(detector, threshold, model)
    fs, path = gio.fs_and_path(gio.join(variant_url, f"{part.name}.parquet"))
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["key", "label", "feature"])
    probabilities = detector.score(feature_matrix(table["feature"])) if table.num_rows else []
    replies = [replier.result(p) for p in probabilities]
    keys, labels = table["key"].to_pylist(), table["label"].to_pylist()
    quarantine = gio.join(variant_url, f"{part.name}{QUARANTINE_SUFFIX}")
    if gio.exists(quarantine):
        fs, path = gio.fs_and_path(quarantine)
        with fs.open(path, "rb") as f:
            bad = pq.read_table(f, columns=["key", "reason"])
        keys += bad["key"].to_pylist()
        labels += [""] * bad.num_rows
        replies += [replier.error(f"quarantined: {r}") for r in bad["reason"].to_pylist()]
    n = len(keys)
    batch = {"id": keys, "path": [gio.redact(part.shard)] * n, "label": labels, "part": [part.name] * n,
             "index": list(range(n))}
    return pa.Table.from_pydict(output_rows(batch, replies), schema=SCHEMA)


def write_finished(plan: ScorePlan, finished: list[tuple[str, pa.Table]]) -> list[dict[str, Any]]:
    """Write each completed partition with its marker; the markers."""
    url_of = {p.name: p.shard or f"{len(p.ids)} items" for p in plan.parts + plan.stored}
    return [write_part(plan.out, name, table, source=url_of.get(name, name),
                       complete=shard_complete(table) if plan.kind == "shards" else True)
            for name, table in finished]


def run_stored(plan: ScorePlan, detector: Any, variant_url: str, *, model: str,
               threshold: float | None = None) -> list[dict[str, Any]]:
    """Score ``plan.stored`` from the store's rows in this process (the heads alone: cheap); the markers."""
    written = []
    with progress(total=len(plan.stored), unit="shard", desc="score --features") as bar:
        for part in plan.stored:
            table = score_stored(detector, variant_url, part, model=model, threshold=threshold)
            written += write_finished(plan, [(part.name, table)])
            bar.update(1)
    return written


def run_local(plan: ScorePlan, files: dict[str, bytes], *, model: str, encoder: str, batch_size: int = 64,
              device: str = "cpu", precision: str = "fp32", threshold: float | None = None,
              mask_dir: str | None = None, max_pixels: int | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Score ``plan`` in this process: (markers written, {} of failed partitions)."""
    reader, scorer = PartReader(encoder, max_pixels), BatchScorer(files, model=model, device=device, precision=precision,
                                                                  threshold=threshold, mask_dir=mask_dir)
    collector, written = PartCollector(), []
    with progress(total=len(plan.parts), unit="part", desc="score") as bar:
        for part in plan.parts:
            columns = reader.read(part.item())
            n = len(columns["id"])
            for start in range(0, n, batch_size):
                piece = {k: v[start:start + batch_size] for k, v in columns.items()}
                written += write_finished(plan, collector.add(scorer(piece).to_pydict()))
            bar.update(1)
            bar.set_postfix(images=sum(m["rows"] for m in written))
    return written, {name: "not every row was scored" for name in collector.pending}
