"""``gendet evaluate`` / ``python -m pipelines.evaluate``: per-subset tables of a model on a store.

Ray Data streams the store's evaluation rows through a scoring actor (features in, one score per
method out: no image is decoded, no encoder loaded), the driver collects the small score table and
builds ``metrics.json`` with ``gendet.metrics``. ``--degrade all`` adds Table 4: the same model on
every degraded variant of the store (``gendet extract --degrade SPEC``), one row each.

``report_training`` is the tail of ``gendet train``: evaluate every method, print the table, log
everything to MLflow, register and gate.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from gendet import GendetError
from gendet import io as gio
from gendet.detector import Detector
from gendet.evaluation import degradation_table, load_detector, reports, table
from gendet.features import Variant, list_variants, resolve_variant
from gendet.metrics import json_safe
from gendet.models import discrepancy


class DetectorScorer:
    """Ray Data actor: a pyarrow batch of features -> score per method (+ GenDet's discrepancy)."""

    def __init__(self, detectors: dict[str, Detector]):
        self.detectors = detectors

    def __call__(self, batch):
        import torch

        n, dim = batch.num_rows, batch.schema.field("feature").type.list_size
        x = batch.column("feature").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        x = x.reshape(n, dim).astype(np.float32)
        out = {"label": np.asarray(batch.column("label").to_pylist()),
               "subset": np.asarray(batch.column("subset").to_pylist())}
        for method, det in self.detectors.items():
            out[f"score_{method}"] = det.score(x)
            if "student" in det.nets:
                with torch.no_grad():
                    d = discrepancy(det.nets["teacher"], det.nets["student"], torch.from_numpy(x))
                out[f"discrepancy_{method}"] = d.mean(dim=1).double().numpy()
        return out


def score_variant(detectors: dict[str, Detector], variant: Variant, splits: tuple[str, ...] = (), *,
                  shards: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Columns label, subset, score_<method>, discrepancy_<method> over the rows of ``splits``
    (or of the shards named by stem in ``shards``: what ``refresh`` has just extracted)."""
    import ray.data

    from pipelines._ray import any_of, feature_files, init_ray

    for method, det in detectors.items():
        if det.feature_dim != variant.dim or (det.preprocess_hash and det.preprocess_hash != variant.preprocess_hash):
            raise GendetError(f"{variant.url}: features of {variant.encoder} (dim {variant.dim}) do not match the "
                              f"{method} detector's encoder {det.encoder} (dim {det.feature_dim}); evaluate on a "
                              "store extracted with the detector's encoder")
    if not splits and not shards:
        raise GendetError("score_variant: name the splits or the shards to score")
    init_ray()
    where = any_of("shard", shards) if shards else any_of("split", splits)
    ds = (ray.data.read_parquet(feature_files(variant.url), columns=["feature", "label", "subset", "split", "shard"])
          .filter(expr=where)
          .map_batches(DetectorScorer, fn_constructor_kwargs={"detectors": detectors}, batch_format="pyarrow",
                       batch_size=4096, concurrency=1))
    frame = ds.to_pandas()
    if frame.empty:
        what = f"shard in {list(shards)}" if shards else f"split in {list(splits)}; pass --eval-splits with splits the store has"
        raise GendetError(f"{variant.url}: no rows with {what}")
    return {c: frame[c].to_numpy() for c in frame.columns}


def evaluate_store(detectors: dict[str, Detector], variant: Variant, splits: tuple[str, ...] = (), *,
                   shards: tuple[str, ...] = (),
                   model_uris: dict[str, str] | None = None) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    scored = score_variant(detectors, variant, splits, shards=shards)
    scores = {m: scored[f"score_{m}"] for m in detectors}
    return reports(scores, scored["label"], scored["subset"], detectors, model_uris=model_uris), scored


# --- gendet evaluate -----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES", help="feature store URL")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, runs:/…, or a detector directory")
    p.add_argument("--out", default="metrics.json", help="where to write metrics.json")
    p.add_argument("--encoder", default=None, help="store variant's encoder when several are present (default: the model's)")
    p.add_argument("--eval-splits", type=lambda s: tuple(x for x in s.split(",") if x), default=("test",),
                   help="splits to score (GenImage has train/val: use val)")
    p.add_argument("--degrade", default="", help="score the variant extracted with this --degrade spec; 'all' = Table 4 over every degraded variant")
    p.add_argument("--mlflow-run", default=None, help="log metrics.json and the table into this MLflow run id")


def run(args: argparse.Namespace) -> int:
    det = load_detector(args.model)
    encoder = args.encoder or det.encoder or None
    degrades = ([""] + sorted({v.degrade for v in list_variants(args.features) if v.degrade})
                if args.degrade == "all" else [args.degrade])
    by_degrade = {}
    for degrade in degrades:
        variant = resolve_variant(args.features, encoder=encoder, degrade=degrade)
        by_degrade[degrade] = evaluate_store({det.method: det}, variant, args.eval_splits,
                                             model_uris={det.method: args.model})[0][det.method]
    main_report = by_degrade[degrades[0]]
    if len(degrades) > 1:
        main_report = {**main_report, "degraded": {d or "none": r for d, r in by_degrade.items()}}
    gio.write_bytes_atomic(args.out, (json.dumps(json_safe(main_report), indent=2) + "\n").encode())
    text = table({det.method: by_degrade[degrades[0]]})
    if len(degrades) > 1:
        text += "\n\n" + degradation_table(by_degrade)
    print(text)
    print(f"metrics written to {args.out}")
    if args.mlflow_run:
        # The client, not start_run: it logs into that run whatever experiment this process has active.
        from mlflow import MlflowClient

        client = MlflowClient()
        client.log_dict(args.mlflow_run, json_safe(main_report), "evaluate/metrics.json")
        client.log_text(args.mlflow_run, text, "evaluate/table.md")
        for key, value in (("eval_mean_acc", main_report["mean_acc"]), ("eval_mAP", main_report["mAP"])):
            if value is not None:
                client.log_metric(args.mlflow_run, key, float(value))
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.evaluate", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
