"""The tail of a training run, on the driver: evaluate, print, log to MLflow, register, gate.

Only the driver talks to MLflow (the Train workers never do), which is Ray's rank-0-only rule
made stronger: one process logs, after the run, from the files rank 0 wrote. How the store is
scored is the caller's ``evaluate`` (``pipelines.evaluate.evaluate_store`` runs the library's
scorer on Ray Data; ``gendet.eval.scoring`` has the in-process one), so this module needs no Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gendet import io as gio
from gendet.eval.metrics import json_safe
from gendet.eval.tables import table
from gendet.features.store import Variant
from gendet.method.gendet.config import TrainConfig
from gendet.method.gendet.detector import Detector
from gendet.method.gendet.trainer import DIAGNOSTICS

REPORTED = "gendet"  # the method whose metrics.json is the run's headline and whose model is registered

Evaluate = Callable[[dict[str, Detector], Variant, tuple[str, ...]], tuple[dict[str, dict], dict[str, np.ndarray]]]


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """What the tail of a run needs besides the trained detectors (``gendet train``'s flags)."""

    out: str
    """Output folder: metrics/, metrics.json, table.md, plots/, train_summary.json."""
    eval_splits: tuple[str, ...] = ("test",)
    run_name: str = "gendet-train"
    params: Mapping[str, Any] = field(default_factory=dict)
    """Extra MLflow params of the run (e.g. workers, GPU)."""
    register: str | None = None
    """Register the headline detector under this name (alias challenger) and run the gate."""
    gate_margin: float = 0.0
    gate_real_floor: float = 0.8
    gate_max_family_drop: float = 0.02
    """Largest fall of any subset's calibrated accuracy below the champion's (the gate's family rule)."""


def headline_method(detectors: dict[str, Detector]) -> str:
    return REPORTED if REPORTED in detectors else list(detectors)[-1]


def log_history(history: list[dict[str, Any]]) -> None:
    """Per-stage mean loss of every job as ``loss/<job>`` (step = stage index), features/s, and
    the trainer's diagnostics as ``<name>/<job>`` (``discrepancy/real.gendet``, ``hinge/fake.gendet``,
    ``g_shift/augmenter``) on the same steps."""
    import mlflow

    from gendet.mlops import tracking

    tracking.log_stage_history(history)
    stage_index: dict[str, int] = {}
    for row in history:
        step = stage_index.setdefault(row["stage"], len(stage_index))
        mlflow.log_metric(f"features_per_s/{row['kind']}", float(row["features_per_s"]), step=step)
        for name in DIAGNOSTICS:
            if row.get(name) is not None:
                mlflow.log_metric(tracking.metric_key(name, row["job"]), float(row[name]), step=step)


def log_plots(reports: dict[str, dict], scored: dict[str, np.ndarray], detectors: dict[str, Detector],
              out: str, history: list[dict[str, Any]] | None = None) -> list[str]:
    """Accuracy bars, discrepancy histograms and, given the trainer's ``history``, the per-rotation
    training diagnostics (``training_diagnostics.png``) as PNGs under ``OUT/plots/`` and as MLflow
    artifacts (``plots/``); returns the local paths."""
    from gendet.eval import plots
    from gendet.mlops import tracking

    figures = {f"{metric}_by_method": plots.accuracy_bars(reports, metric=metric, title=f"{metric} per subset, every method")
               for metric in ("acc", "ap", "acc_calibrated")}
    if any(str(row.get("job", "")).startswith("real.") for row in history or ()):  # a teacher-student rung trained
        figures["training_diagnostics"] = plots.training_diagnostics(history)
    for method in detectors:
        key = f"discrepancy_{method}"
        if key in scored:
            figures[key] = plots.score_histograms(scored[key], scored["label"], scored["subset"],
                                                  score_name=f"{method}: mean (z_t - z_s)^2")
    paths = []
    for name, fig in figures.items():
        paths.append(plots.save_png(fig, gio.join(out, "plots", f"{name}.png")))
        tracking.log_figure(fig, name)
    return paths


def gate(opts: ReportOptions, variant: Variant, model_uri: str, challenger_report: dict,
         evaluate: Evaluate) -> dict[str, Any]:
    """Register the logged model as challenger and run the promotion gate against the champion."""
    from mlflow import MlflowClient

    from gendet.mlops import registry
    from gendet.serve.loading import load_detector

    client = MlflowClient()
    version = registry.register(model_uri, opts.register, client=client)
    champion = registry.version_by_alias(client, opts.register, registry.CHAMPION)
    champion_report = None
    if champion is not None and champion.version != version.version:
        champ = load_detector(f"models:/{opts.register}@{registry.CHAMPION}")
        champion_report = evaluate({"champion": champ}, variant, tuple(opts.eval_splits))[0]["champion"]
    decision = registry.promote(client, opts.register, challenger_report, champion_report,
                                margin=opts.gate_margin, real_acc_floor=opts.gate_real_floor, version=version.version,
                                max_family_drop=opts.gate_max_family_drop)
    return {"registered": opts.register, "version": str(version.version), "promoted": decision.promoted,
            "reason": decision.reason, "champion_version": decision.champion_version,
            "worst_family": decision.worst_family, "worst_family_drop": decision.worst_family_drop,
            "families": family_table(challenger_report, champion_report)}


FAMILY_KEYS = ("acc_calibrated", "fake_acc_calibrated", "real_acc_calibrated", "ap")


def family_table(challenger_report: dict, champion_report: dict | None) -> dict[str, dict[str, Any]]:
    """{subset: {"champion": {...}, "challenger": {...}}} of the calibrated accuracies and AP both
    models reached on the gate's evaluation set (champion: None when there is none)."""
    def pick(report: dict | None, subset: str) -> dict[str, Any] | None:
        found = (report or {}).get("subsets", {}).get(subset)
        return None if found is None else {k: found.get(k) for k in FAMILY_KEYS}

    subsets = sorted(set(challenger_report.get("subsets", {})) | set((champion_report or {}).get("subsets", {})))
    return {s: {"champion": pick(champion_report, s), "challenger": pick(challenger_report, s)} for s in subsets}


def report_training(cfg: TrainConfig, variant: Variant, detectors_url: str, opts: ReportOptions,
                    evaluate: Evaluate) -> dict[str, Any]:
    """Evaluate every trained method, print the table, log the run; returns a summary dict."""
    import mlflow

    from gendet.mlops import tracking
    from gendet.serve.pyfunc import log_detector

    detectors = {m: Detector.load(gio.join(detectors_url, m)) for m in cfg.methods}
    reports, scored = evaluate(detectors, variant, tuple(opts.eval_splits))
    out = opts.out
    for method, rep in reports.items():
        gio.write_json_atomic(gio.join(out, "metrics", f"{method}.json"), rep)
    head = headline_method(detectors)
    gio.write_json_atomic(gio.join(out, "metrics.json"), reports[head])
    text = table(reports)
    gio.write_bytes_atomic(gio.join(out, "table.md"), (text + "\n").encode())
    print(text)
    history = gio.read_json(gio.join(out, "history.json"))
    with tracking.start_run(out, run_name=opts.run_name, tags={"gendet.features": variant.url}) as run:
        tracking.log_config(cfg)
        mlflow.log_params({"features": variant.url, "encoder": variant.encoder, **opts.params,
                           "eval_splits": ",".join(opts.eval_splits)})
        log_history(history)
        tracking.log_reports(reports)
        mlflow.log_text(text, "table.md")
        plot_paths = log_plots(reports, scored, detectors, out, history)
        info = log_detector(detectors[head], name="detector")
        summary = {"run_id": run.info.run_id, "model_uri": info.model_uri, "metrics": gio.join(out, "metrics.json"),
                   "tracking_uri": mlflow.get_tracking_uri(), "headline": head, "plots": plot_paths,
                   "reports": gio.join(out, "metrics"), "calibration_split": detectors[head].calibration_split}
        if opts.register:
            summary["gate"] = gate(opts, variant, info.model_uri, reports[head], evaluate)
        mlflow.log_dict(summary, "summary.json")
    gio.write_json_atomic(gio.join(out, "train_summary.json"), json_safe(summary))
    print(json.dumps(json_safe(summary), indent=2))
    return summary
