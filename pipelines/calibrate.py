"""``gendet calibrate`` / ``python -m pipelines.calibrate``: move a detector's operating point to your
own data, without retraining (``gendet.mlops.recalibrate``).

Before any work: the store has rows of ``--subsets`` in ``--split`` (reals at least), the model
loads and matches the store's features, OUT can be written; with ``--register``, the MLflow server
answers and the gate's split has rows. Then: the model's rates on the report split (rows the fit
never reads) at its own threshold; the refit on ``--split``; the same rates at the new threshold;
``OUT/detector`` (the recalibrated model) and ``OUT/calibration.json`` (both sets of rates, the rows,
the parent). With ``--register NAME``: an MLflow run (experiment ``gendet-calibrate``) logs the model
with tags naming its parent and calibration rows, registers it as ``challenger`` and runs the
promotion gate against the champion on ``--gate.split``, as training does.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from gendet.config import check
from gendet.mlops.gate import GateConfig
from pipelines import _jobs
from pipelines._jobs import Positional

log = logging.getLogger(__name__)
EXPERIMENT = "gendet-calibrate"


@dataclass(frozen=True, kw_only=True, slots=True)
class CalibrateJob:
    """Refit a detector's calibration (Platt scaling when both classes are given, the threshold at
    --target-fpr on your reals, the uncertain band at --target-miss on your fakes) on your own labelled
    rows of a feature store, without retraining; report the real FPR before and after on held-out rows.

    Examples:
      gendet import folder /data/ourcam shards-ourcam/ --subset ourcam --val-fraction 0.5
      gendet extract shards-ourcam/ features/ --encoder open_clip:ViT-L-14/openai
      gendet calibrate features/ --model models:/gendet@champion --subsets ourcam --out out/calibrate
      gendet calibrate features/ --model models:/gendet@champion --subsets ourcam --register gendet
    """

    features: Positional[str]
    """Feature store holding your rows (extracted with the model's encoder)."""
    subsets: tuple[str, ...]
    """Subsets whose rows calibrate (your own reals, and fakes if you have them)."""
    model: str = "models:/gendet@champion"
    """The model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH or a model directory."""
    split: str = "val"
    """The split of --subsets the calibration is fitted on."""
    report_split: str = "test"
    """The split of --subsets the rates are reported on, before and after (never read by the fit;
    skipped when the store has none)."""
    target_fpr: float | None = None
    """Real FPR the new threshold keeps on your reals; None: the model's own."""
    target_miss: float | None = None
    """Share of your fakes allowed below the uncertain band; None: the model's own (0.05 when it has none)."""
    out: str = "out/calibrate"
    """Output folder: OUT/detector and OUT/calibration.json."""
    encoder: str | None = None
    """The store variant's encoder, when the store holds several."""
    register: str | None = None
    """Register the recalibrated model under this name (alias challenger) and run the promotion gate."""
    gate: GateConfig = field(default_factory=GateConfig)
    tracking_uri: str | None = None
    """MLflow tracking URI (default: MLFLOW_TRACKING_URI)."""

    def __post_init__(self) -> None:
        check(bool(self.subsets), "--subsets: name the subsets of your own rows")
        check(self.split != self.report_split, f"--report-split {self.report_split} is --split: the rates would be "
                                               "measured on the rows the calibration was fitted on; report another split")
        check(self.target_fpr is None or 0 < self.target_fpr < 1, f"--target-fpr {self.target_fpr}: must be in (0, 1)")
        check(self.target_miss is None or 0 < self.target_miss < 1, f"--target-miss {self.target_miss}: must be in (0, 1)")
        if self.register:
            check(self.gate.split != self.report_split, f"--gate.split {self.gate.split} is --report-split: the gate "
                                                        "would choose on the rows the run reports")


def preflight(job: CalibrateJob) -> tuple[Any, Any, str, dict]:
    """(variant, detector, its name, row counts): every check that can fail on user input."""
    from gendet import GendetError
    from gendet import io as gio
    from gendet.eval.scoring import check_matches
    from gendet.features.contents import row_counts
    from gendet.features.store import resolve_variant
    from gendet.mlops import tracking
    from gendet.serve.loading import REGISTRY_SCHEMES, load_detector, pinned

    variant = resolve_variant(job.features, job.encoder)
    counts = row_counts(variant.url)
    have = {su for (sp, su), n in counts.items() if sp == job.split and n}
    missing = [s for s in job.subsets if s not in have]
    if missing:
        raise GendetError(f"{variant.url}: no rows of {','.join(missing)} in split {job.split} (it has "
                          f"{','.join(sorted(have)) or 'none'}); pass --subsets and --split of your own rows")
    if job.register and not any(sp == job.gate.split for sp, _ in counts):
        raise GendetError(f"{variant.url}: no rows of split {job.gate.split} for the gate; pass --gate.split")
    gio.check_writable(job.out, "--out")
    if job.model.startswith(REGISTRY_SCHEMES) or job.register:
        tracking.check_server()
    uri, label = pinned(job.model)
    detector = load_detector(uri)
    check_matches({"model": detector}, variant)
    return variant, detector, label, counts


def run(job: CalibrateJob) -> dict[str, Any]:
    """Check, refit, report (and register and gate); returns the record written to calibration.json."""
    from gendet import io as gio
    from gendet.mlops import tracking
    from gendet.mlops.recalibrate import measure, recalibrate

    with tracking.tracking_uri(job.tracking_uri):
        variant, parent, label, counts = preflight(job)
        target_fpr = job.target_fpr or parent.target_fpr or 0.05
        target_miss = job.target_miss or parent.target_miss or 0.05
        reported = any(sp == job.report_split and su in job.subsets for sp, su in counts)
        before = measure(parent, variant, job.subsets, job.report_split) if reported else None
        child = recalibrate(parent, variant, job.subsets, job.split, target_fpr=target_fpr, target_miss=target_miss,
                            parent=label)
        after = measure(child, variant, job.subsets, job.report_split) if reported else None
        model_dir = child.save(gio.join(job.out, "detector"))
        record = {"parent": label, "features": gio.redact(variant.url), "subsets": list(job.subsets), "split": job.split,
                  "rows": child.calibration_rows, "target_fpr": target_fpr, "target_miss": target_miss,
                  "platt_refit": bool((child.calibration_rows or {}).get("fake")),
                  "threshold": {"before": parent.threshold, "after": child.threshold},
                  "band": {"before": list(parent.band()), "after": list(child.band())},
                  "report_split": job.report_split if reported else None, "before": before, "after": after,
                  "model_dir": gio.redact(model_dir)}
        if job.register:
            record["gate"] = register(job, variant, child, record)
        gio.write_json_atomic(gio.join(job.out, "calibration.json"), record)
    return record


def register(job: CalibrateJob, variant: Any, child: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Log the recalibrated model in an MLflow run, register it and gate it (as training does)."""
    import mlflow

    from gendet.mlops import tracking
    from gendet.mlops.registry import GateScores, paired_evidence, register_and_gate
    from gendet.serve.pyfunc import log_detector
    from pipelines.evaluate import evaluate_store

    tags = {"gendet.calibrate.parent": record["parent"], "gendet.calibrate.subsets": ",".join(job.subsets),
            "gendet.calibrate.split": job.split}
    with tracking.start_run(None, experiment=EXPERIMENT, run_name=f"calibrate-{job.register}", tags=tags):
        mlflow.log_params({"parent": record["parent"], "features": record["features"], "subsets": ",".join(job.subsets),
                           "split": job.split, "target_fpr": record["target_fpr"], "target_miss": record["target_miss"],
                           "rows.real": (record["rows"] or {}).get("real"), "rows.fake": (record["rows"] or {}).get("fake")})
        for when in ("before", "after"):
            for key, value in (record[when] or {}).items():
                if value is not None and key in ("real_fpr", "fake_miss"):
                    mlflow.log_metric(f"{job.report_split}.{key}.{when}", value)
        info = log_detector(child)
        split = (job.gate.split,)

        def score(champion: Any) -> GateScores:
            models = {"challenger": child, **({"champion": champion} if champion is not None else {})}
            reports, scored = evaluate_store(models, variant, split)
            if champion is None:
                return GateScores(reports["challenger"], None)
            evidence = paired_evidence(scored["subset"], scored["label"], (child, scored["score_challenger"]),
                                       (champion, scored["score_champion"]), job.gate)
            return GateScores(reports["challenger"], reports["champion"], evidence)

        gate = register_and_gate(info.model_uri, job.register, score, job.gate)
    log.info("registered %s version %s: %s", job.register, gate["version"], gate["reason"])
    return gate


def main(job: CalibrateJob) -> int:
    record = run(job)
    before, after = record["before"] or {}, record["after"] or {}
    line = (f"recalibrated {record['parent']} on {record['rows']} rows of {','.join(record['subsets'])} ({record['split']}): "
            f"threshold {record['threshold']['before']:.4f} -> {record['threshold']['after']:.4f}")
    if record["report_split"]:
        line += (f"; real FPR on {record['report_split']} {before.get('real_fpr')} -> {after.get('real_fpr')} "
                 f"(target {record['target_fpr']})")
    if "gate" in record:
        line += f"; registered {record['gate']['registered']} v{record['gate']['version']}: {record['gate']['reason']}"
    _jobs.emit(line)
    return 0


JOB = _jobs.JobSpec(CalibrateJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.calibrate"))
