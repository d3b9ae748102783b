"""The tail of a training run, on the driver: evaluate, log to MLflow, register, gate.

Only the driver talks to MLflow (the Train workers never do), which is Ray's rank-0-only rule
made stronger: one process logs, after the run, from the files rank 0 wrote. How the store is
scored is the caller's ``evaluate`` (``pipelines.evaluate.evaluate_store`` runs the library's
scorer on Ray Data; ``gendet.eval.scoring`` has the in-process one), so this module needs no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gendet import GendetError
from gendet import io as gio
from gendet.eval.metrics import json_safe
from gendet.eval.tables import table
from gendet.features.store import Variant
from gendet.method.gendet.config import TrainConfig
from gendet.method.gendet.detector import Detector
from gendet.method.gendet.trainer import DIAGNOSTICS
from gendet.mlops.gate import GateConfig
from gendet.mlops.registry import GateScores, paired_evidence, register_and_gate
from gendet.mlops.tracking import JOB_ARTIFACT

REPORTED = "gendet"  # the method whose metrics.json is the run's headline and whose model is registered

Evaluate = Callable[[dict[str, Detector], Variant, tuple[str, ...]], tuple[dict[str, dict], dict[str, np.ndarray]]]


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """What the tail of a run needs besides the trained model (the training job's fields)."""

    out: str
    """Output folder: metrics/, metrics.json, table.md, plots/, train_summary.json."""
    eval_splits: tuple[str, ...] = ("test",)
    run_name: str = "gendet-train"
    params: Mapping[str, Any] = field(default_factory=dict)
    """Extra MLflow params of the run (e.g. workers, GPU)."""
    register: str | None = None
    """Register the headline model under this name (alias challenger) and run the gate."""
    gate: GateConfig = field(default_factory=GateConfig)
    job: Mapping[str, Any] | None = None
    """The whole job that trained (its dict), logged as ``job.json``: what ``gendet fix`` retrains from."""


def calibration_params(model: Any) -> dict[str, Any]:
    """What a model was calibrated on, as MLflow params (``calibration_rows.*``: the rows it read,
    beside the config's ``calibration_subsets``, the extra subsets asked for)."""
    rows = model.calibration_rows or {}
    return {"calibration_rows.subsets": ",".join(model.calibration_subsets or ()),
            "calibration_rows.real": rows.get("real"), "calibration_rows.fake": rows.get("fake")}


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


def gate(opts: ReportOptions, variant: Variant, model_uri: str, challenger: Detector, evaluate: Evaluate) -> dict[str, Any]:
    """Register the logged model as challenger and run the promotion gate: both models scored in one
    pass over the gate's split (``opts.gate.split``, val: a choice never reads what the run reports),
    each image judged by both at their deployed thresholds (the paired evidence)."""
    split = (opts.gate.split,)

    def score(champion: Any) -> GateScores:
        if champion is None:
            return GateScores(evaluate({"challenger": challenger}, variant, split)[0]["challenger"], None)
        if not isinstance(champion, Detector):
            raise GendetError(f"models:/{opts.register}@champion is a GAMMA model; register GenDet detectors under "
                              "another name (--register)")
        reports, scored = evaluate({"challenger": challenger, "champion": champion}, variant, split)
        evidence = paired_evidence(scored["subset"], scored["label"], (challenger, scored["score_challenger"]),
                                   (champion, scored["score_champion"]), opts.gate)
        return GateScores(reports["challenger"], reports["champion"], evidence)

    return register_and_gate(model_uri, opts.register, score, opts.gate)


def report_training(cfg: TrainConfig, variant: Variant, detectors_url: str, opts: ReportOptions,
                    evaluate: Evaluate) -> dict[str, Any]:
    """Evaluate every trained method, write and log the table, log the run; returns the summary (with
    ``table``, the per-subset Markdown table)."""
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
    history = gio.read_json(gio.join(out, "history.json"))
    with tracking.start_run(out, run_name=opts.run_name, tags={"gendet.features": gio.redact(variant.url)}) as run:
        tracking.log_config(cfg)
        if opts.job is not None:
            mlflow.log_dict(json_safe(dict(opts.job)), JOB_ARTIFACT)
        mlflow.log_params(gio.redacted({"features": variant.url, "encoder": variant.encoder, **opts.params,
                                        "eval_splits": ",".join(opts.eval_splits),
                                        **calibration_params(detectors[head])}))
        log_history(history)
        tracking.log_reports(reports)
        mlflow.log_text(text, "table.md")
        plot_paths = log_plots(reports, scored, detectors, out, history)
        info = log_detector(detectors[head], name="detector")
        summary = {"run_id": run.info.run_id, "model_uri": info.model_uri, "metrics": gio.join(out, "metrics.json"),
                   "tracking_uri": mlflow.get_tracking_uri(), "headline": head, "plots": plot_paths,
                   "reports": gio.join(out, "metrics"), "calibration_split": detectors[head].calibration_split,
                   "calibration_subsets": list(detectors[head].calibration_subsets or ()),
                   "calibration_rows": detectors[head].calibration_rows}
        if opts.register:
            summary["gate"] = gate(opts, variant, info.model_uri, detectors[head], evaluate)
        mlflow.log_dict(json_safe(summary), "summary.json")
    gio.write_json_atomic(gio.join(out, "train_summary.json"), json_safe(summary))
    return {**summary, "table": text}
