"""The tail of a GAMMA training run, on the driver: evaluate, log to MLflow, register, gate
(``gendet train-gamma``; GenDet's is ``gendet.mlops.training_report``, whose options it takes).

MLflow gets: the GammaConfig and the data as params; the per-epoch losses as ``loss/<part>``
(``loss``, ``cls``, ``seg``, ``source``; step = epoch); the per-subset numbers as
``gamma/<subset>/<metric>`` (``tracking.log_reports``) plus ``gamma/<subset>/pixel_f1`` and
``pixel_iou``, ``gamma/mean_pixel_f1``/``iou`` and ``gamma/pixel/<family>/f1``/``iou``; the files
``metrics/gamma/metrics.json``, ``table.md``, the model directory (``model/``) and
``plots/gamma_overlays.png`` (true against predicted masks). With ``register`` the model is logged
as a pyfunc model (``gendet.serve.pyfunc.log_detector``), registered as ``challenger`` and gated.
"""

from __future__ import annotations

import tempfile
from typing import Any

from gendet import io as gio
from gendet.eval.metrics import json_safe
from gendet.features.store import Variant
from gendet.features.tokens import load_token_rows
from gendet.method.gamma.config import GammaConfig
from gendet.method.gamma.detector import GammaDetector
from gendet.method.gamma.eval import PIXEL_KEYS, gamma_report, overlay_figure, report_table
from gendet.mlops.registry import GateScores, paired_evidence, register_and_gate
from gendet.mlops.tracking import JOB_ARTIFACT
from gendet.mlops.training_report import ReportOptions, calibration_params

METHOD = "gamma"


def pixel_numbers(report: dict[str, Any], method: str = METHOD) -> dict[str, float]:
    """The pixel metrics of a GAMMA metrics.json dict as flat MLflow metric names."""
    from gendet.mlops.tracking import metric_key

    out = {}
    for subset, values in report.get("subsets", {}).items():
        for key in PIXEL_KEYS:
            if values.get(key) is not None:
                out[metric_key(method, subset, key)] = float(values[key])
    for key in PIXEL_KEYS:
        if report.get("mean_" + key) is not None:
            out[metric_key(method, "mean_" + key)] = float(report["mean_" + key])
    for family, values in (report.get("pixel") or {}).get("families", {}).items():
        for key in ("f1", "iou"):
            if values.get(key) is not None:
                out[metric_key(method, "pixel", family, key)] = float(values[key])
    return out


def log_history(history: list[dict[str, Any]]) -> None:
    import mlflow

    for row in history:
        for key, value in row.items():
            if key != "epoch":
                mlflow.log_metric(f"loss/{key}", float(value), step=int(row["epoch"]))


def gate(opts: ReportOptions, model_uri: str, det: GammaDetector, features: str, variant: Variant) -> dict[str, Any]:
    """Register the logged model as challenger and run the promotion gate on the gate's split: a
    GAMMA champion is scored on the same token rows (paired evidence); a GenDet one on their pooled
    features (other rows: the point rule)."""
    rows = load_token_rows(features, encoder=variant.encoder, splits=(opts.gate.split,))
    mine, loc = gamma_report(det, rows, model="challenger")

    def score(champion: Any) -> GateScores:
        if champion is None:
            return GateScores(mine, None)
        if isinstance(champion, GammaDetector):
            theirs, their_loc = gamma_report(champion, rows, model="champion")
            evidence = paired_evidence(rows.subset, rows.labels, (det, loc["score"]), (champion, their_loc["score"]),
                                       opts.gate)
            return GateScores(mine, theirs, evidence)
        from gendet.eval import scoring

        scored = scoring.score_store({"champion": champion}, variant, (opts.gate.split,))
        return GateScores(mine, scoring.reports(scored, {"champion": champion})["champion"])

    return register_and_gate(model_uri, opts.register, score, opts.gate)


def report_gamma(cfg: GammaConfig, det: GammaDetector, model_url: str, variant: Variant, opts: ReportOptions, *,
                 features: str) -> dict[str, Any]:
    """Score the eval splits, write OUT/metrics.json and table.md, log the run; returns a summary."""
    import mlflow

    from gendet.eval import plots
    from gendet.mlops import tracking

    rows = load_token_rows(features, encoder=variant.encoder, splits=opts.eval_splits)
    report, loc = gamma_report(det, rows, model=model_url)
    out = opts.out
    gio.write_json_atomic(gio.join(out, "metrics.json"), report)
    text = report_table(report, METHOD)
    gio.write_bytes_atomic(gio.join(out, "table.md"), (text + "\n").encode())
    history = gio.read_json(gio.join(out, "history.json"))
    fig = overlay_figure(det, rows, loc["token_probs"]) if "token_probs" in loc else None
    tags = {"gendet.features": gio.redact(variant.url), "gendet.method": METHOD}
    with tracking.start_run(out, run_name=opts.run_name, tags=tags) as run:
        tracking.log_config(cfg)
        if opts.job is not None:
            mlflow.log_dict(json_safe(dict(opts.job)), JOB_ARTIFACT)
        mlflow.log_params(gio.redacted({"features": variant.url, "encoder": variant.encoder, **opts.params,
                                        "token_grid": f"{det.grid[0]}x{det.grid[1]}", "sources": ",".join(det.sources),
                                        "eval_splits": ",".join(opts.eval_splits),
                                        "calibration_split": det.calibration_split, "target_fpr": det.target_fpr,
                                        **calibration_params(det)}))
        log_history(history)
        tracking.log_reports({METHOD: report})
        mlflow.log_metrics(pixel_numbers(report))
        mlflow.log_text(text, "table.md")
        with tempfile.TemporaryDirectory() as tmp:  # the model may live on s3://: log a local copy
            mlflow.log_artifacts(det.save(gio.join(tmp, "model")), "model")
        plot_paths = []
        if fig is not None:
            plot_paths.append(plots.save_png(fig, gio.join(out, "plots", "gamma_overlays.png")))
            tracking.log_figure(fig, "gamma_overlays")
        summary = {"run_id": run.info.run_id, "model": model_url, "metrics": gio.join(out, "metrics.json"),
                   "tracking_uri": mlflow.get_tracking_uri(), "plots": plot_paths, "sources": list(det.sources),
                   "calibration_split": det.calibration_split, "epochs": len(history)}
        if opts.register:
            from gendet.serve.pyfunc import log_detector

            info = log_detector(det, name="detector")
            summary["model_uri"] = info.model_uri
            summary["gate"] = gate(opts, info.model_uri, det, features, variant)
        mlflow.log_dict(json_safe(summary), "summary.json")
    gio.write_json_atomic(gio.join(out, "train_summary.json"), json_safe(summary))
    return {**summary, "table": text}
