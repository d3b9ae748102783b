"""The model registry: register a logged detector, and the promotion gate for ``champion``.

A new version gets the alias ``challenger``. ``champion`` (what ``gendet predict --model
models:/gendet@champion`` serves) moves only through ``promote``: the challenger must reach the
real-image accuracy floor at its calibrated threshold (a detector that flags real photos as fake is
worse than none, whatever its mean accuracy), and, when there is a champion, beat its mean
accuracy on the gate's split by ``margin``, and lose no family beyond noise: both models judge the
same images at the thresholds each is deployed with, and a family whose paired interval of the
difference (``gendet.eval.paired``) lies wholly below ``-max_family_drop`` refuses the challenger
(a fix for a new generator must not break the old ones; subsets only the challenger scored pass).
Callers score on val (``GateConfig.split``): the gate is a choice and never reads what is reported.
Every decision is written, with its reason, as tags on the model version and on the version's run,
and returned as a ``GateDecision``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import mlflow
from mlflow.entities import RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gendet import GendetError, first_line
from gendet.mlops.gate import MAX_FAMILY_DROP, GateConfig

DEFAULT_NAME = "gendet"
CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_PREFIX = "gendet.gate."
FAMILY_METRIC = "acc_calibrated"


@dataclasses.dataclass(frozen=True, slots=True)
class GateDecision:
    """What the gate decided for one challenger, and why (also written as tags)."""

    name: str
    version: str
    promoted: bool
    reason: str
    metric: str
    challenger_score: float
    champion_score: float | None
    champion_version: str | None
    real_acc_calibrated: float
    margin: float
    real_acc_floor: float
    max_family_drop: float = MAX_FAMILY_DROP
    worst_family: str | None = None
    """The subset with the largest fall below the champion (None without a champion)."""
    worst_family_drop: float | None = None
    """champion - challenger calibrated accuracy on ``worst_family`` (negative: a gain)."""

    def tags(self) -> dict[str, str]:
        return {TAG_PREFIX + k: ("" if v is None else str(v)) for k, v in dataclasses.asdict(self).items()
                if k != "name"}


def register(model_uri: str, name: str = DEFAULT_NAME, *, client: MlflowClient | None = None,
             tags: Mapping[str, str] | None = None) -> ModelVersion:
    """Register a logged model (``runs:/…``, ``models:/m-…``) as a new version with alias ``challenger``."""
    client = client or MlflowClient()
    version = mlflow.register_model(model_uri, name, tags=dict(tags or {}))
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return client.get_model_version(name, version.version)


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when no version does (or the model is not registered)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def pin(client: MlflowClient, uri: str) -> ModelVersion | None:
    """The registered version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names now (an alias
    resolved once, so a promotion mid-run cannot mix two models); None for every other URI
    (directories, ``runs:/``, ``models:/m-…``). An unreadable registry or a missing alias or
    version is one line naming the fix."""
    from gendet.eval.refresh_state import parse_registered

    parsed = parse_registered(uri)
    if parsed is None:
        return None
    name, alias, number = parsed
    try:
        found = version_by_alias(client, name, alias) if alias else client.get_model_version(name, number)
    except MlflowException as exc:
        if alias or exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise GendetError(f"--model {uri}: cannot read the registry at {client.tracking_uri} "
                              f"({first_line(exc, 200)}); check MLFLOW_TRACKING_URI / --tracking-uri") from None
        found = None
    except Exception as exc:  # noqa: BLE001 - an unreachable server raises several types
        raise GendetError(f"--model {uri}: cannot read the registry at {client.tracking_uri} "
                          f"({first_line(exc, 200)}); check MLFLOW_TRACKING_URI / --tracking-uri") from None
    if found is None:
        what = f"no version with alias {alias!r}" if alias else f"no version {number}"
        raise GendetError(f"--model {uri}: registered model {name!r} has {what} at {client.tracking_uri}; "
                          f"register and promote one, or pass models:/{name}/VERSION")
    return found


def pooled_real_acc_calibrated(report: Mapping[str, Any]) -> float:
    """Accuracy on all real images at the calibrated threshold (subsets weighted by ``n_real``)."""
    with_reals = [s for s in report.get("subsets", {}).values() if int(s.get("n_real") or 0)]
    if not with_reals:
        raise GendetError("metrics: no real images in any subset; evaluate on a set with real images "
                          "before promoting")
    if any(s.get("real_acc_calibrated") is None for s in with_reals):
        raise GendetError("metrics: no real accuracy at a calibrated threshold; evaluate a model whose "
                          "threshold was calibrated (train with a target FPR)")
    total = sum(int(s["n_real"]) for s in with_reals)
    return sum(float(s["real_acc_calibrated"]) * int(s["n_real"]) for s in with_reals) / total


def _metric(report: Mapping[str, Any], metric: str, who: str) -> float:
    if report.get(metric) is None:
        raise GendetError(f"{who} metrics have no {metric!r}; pass a metrics.json dict written by evaluate")
    return float(report[metric])


class Verdict(NamedTuple):
    promoted: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    real_acc_calibrated: float
    worst_family: str | None = None
    worst_family_drop: float | None = None




def family_drops(challenger_metrics: Mapping[str, Any], champion_metrics: Mapping[str, Any]) -> dict[str, float]:
    """{subset: champion - challenger ``acc_calibrated``} over the subsets both reports scored
    (``acc`` where either lacks a calibrated accuracy; neither: left out)."""
    mine, theirs = challenger_metrics.get("subsets") or {}, champion_metrics.get("subsets") or {}
    drops = {}
    for subset in sorted(set(mine) & set(theirs)):
        for key in (FAMILY_METRIC, "acc"):
            a, b = mine[subset].get(key), theirs[subset].get(key)
            if a is not None and b is not None:
                drops[subset] = float(b) - float(a)
                break
    return drops


def decide(challenger_metrics: Mapping[str, Any], champion_metrics: Mapping[str, Any] | None, *,
           margin: float, real_acc_floor: float, metric: str = "mean_acc",
           max_family_drop: float = MAX_FAMILY_DROP, evidence: Mapping[str, Mapping[str, Any]] | None = None) -> Verdict:
    """The gate's rule alone (no registry): floor first, then the margin over the champion on
    ``metric``, then no family may fall below the champion's calibrated accuracy. With ``evidence``
    (``gendet.eval.paired.deployed_intervals`` of both models on the same images) a family falls when
    its whole interval of ``challenger - champion`` lies below ``-max_family_drop`` (worse beyond
    noise); without it, when its point drop exceeds ``max_family_drop`` (``family_drops``)."""
    score = _metric(challenger_metrics, metric, "challenger")
    real_acc = pooled_real_acc_calibrated(challenger_metrics)
    floor = f"real accuracy at the calibrated threshold {real_acc:.4f}"
    if real_acc < real_acc_floor:
        return Verdict(False, f"{floor} is below the floor {real_acc_floor:.4f}", score, None, real_acc)
    if champion_metrics is None:
        return Verdict(True, f"no champion yet and {floor} >= floor {real_acc_floor:.4f}", score, None, real_acc)
    best = _metric(champion_metrics, metric, "champion")
    drops = ({f: -float(iv["diff"]) for f, iv in evidence.items()} if evidence is not None
             else family_drops(challenger_metrics, champion_metrics))
    worst = max(drops, key=lambda s: (drops[s], s)) if drops else None
    family = (worst, None if worst is None else drops[worst])
    if score < best + margin:
        return Verdict(False, f"{metric} {score:.4f} does not beat the champion's {best:.4f} by the margin "
                       f"{margin:.4f}", score, best, real_acc, *family)
    if evidence is not None:
        return _family_rule_on_evidence(evidence, max_family_drop, score, best, real_acc, family, metric, margin,
                                        real_acc_floor, floor)
    if worst is not None and drops[worst] > max_family_drop + 1e-12:
        fallen = sorted(s for s, d in drops.items() if d > max_family_drop + 1e-12)
        return Verdict(False, f"family {worst}: {FAMILY_METRIC} falls {drops[worst]:.4f} below the champion's, more than "
                       f"max_family_drop {max_family_drop:.4f} (fallen: {', '.join(fallen)})", score, best, real_acc, *family)
    kept = f"; no family falls more than {max_family_drop:.4f}" + (f" (worst: {worst} {drops[worst]:+.4f})" if worst else "")
    return Verdict(True, f"{metric} {score:.4f} beats the champion's {best:.4f} by >= {margin:.4f} and {floor} "
                   f">= floor {real_acc_floor:.4f}{kept}", score, best, real_acc, *family)


def _family_rule_on_evidence(evidence: Mapping[str, Mapping[str, Any]], tolerance: float, score: float, best: float,
                             real_acc: float, family: tuple, metric: str, margin: float, real_acc_floor: float,
                             floor: str) -> Verdict:
    from gendet.eval.paired import describe, fallen

    worse = fallen(dict(evidence), tolerance)
    refit = "; thresholds refitted per resample" if any(iv.get("refit") for iv in evidence.values()) else ""
    beyond = f"beyond noise (paired bootstrap, simultaneous over {len(evidence)} families{refit}; tolerance {tolerance:.4f})"
    if worse:
        named = "; ".join(describe(f, worse[f]) for f in sorted(worse, key=lambda f: worse[f]["hi"]))
        return Verdict(False, f"{FAMILY_METRIC} falls below the champion's {beyond} on {named}", score, best, real_acc,
                       *family)
    worst = family[0]
    kept = f"; no family falls {beyond}" + (f" (worst: {describe(worst, evidence[worst])})" if worst else "")
    return Verdict(True, f"{metric} {score:.4f} beats the champion's {best:.4f} by >= {margin:.4f} and {floor} "
                   f">= floor {real_acc_floor:.4f}{kept}", score, best, real_acc, *family)


def promote(client: MlflowClient, name: str, challenger_metrics: Mapping[str, Any],
            champion_metrics: Mapping[str, Any] | None, *, margin: float, real_acc_floor: float,
            metric: str = "mean_acc", version: str | None = None, max_family_drop: float = MAX_FAMILY_DROP,
            evidence: Mapping[str, Mapping[str, Any]] | None = None) -> GateDecision:
    """Run the gate for the ``challenger`` (or ``version``) of ``name`` and move ``champion`` if it passes.

    ``challenger_metrics`` and ``champion_metrics`` are metrics.json dicts of both models on the
    same evaluation set; ``champion_metrics`` is ignored when there is no champion yet. ``evidence``:
    the paired per-family intervals of the two (``decide``).
    """
    if not 0.0 <= real_acc_floor <= 1.0 or margin < 0 or not 0.0 <= max_family_drop <= 1.0:
        raise GendetError(f"gate: margin {margin} must be >= 0, real_acc_floor {real_acc_floor} and max_family_drop "
                          f"{max_family_drop} in [0, 1]")
    candidate = client.get_model_version(name, version) if version else version_by_alias(client, name, CHALLENGER)
    if candidate is None:
        raise GendetError(f"registered model {name!r} has no {CHALLENGER!r} version; register a model first")
    champion = version_by_alias(client, name, CHAMPION)
    if champion is not None and champion_metrics is None:
        raise GendetError(f"{name!r} has a champion (version {champion.version}); pass its metrics on "
                          "the same evaluation set")
    verdict = decide(challenger_metrics, None if champion is None else champion_metrics,
                     margin=margin, real_acc_floor=real_acc_floor, metric=metric, max_family_drop=max_family_drop,
                     evidence=None if champion is None else evidence)
    if champion is not None and champion.version == candidate.version:
        verdict = verdict._replace(promoted=False, reason="this version is already the champion")
    decision = GateDecision(name=name, version=str(candidate.version), metric=metric, margin=margin,
                            real_acc_floor=real_acc_floor, max_family_drop=max_family_drop,
                            champion_version=None if champion is None else str(champion.version),
                            **verdict._asdict())
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
    _log_decision(client, candidate, decision)
    return decision


def _log_decision(client: MlflowClient, candidate: ModelVersion, decision: GateDecision) -> None:
    """Tags on the model version, and on its run when it came from one (the audit trail)."""
    tags = decision.tags()
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, candidate.version, key, value)
    if candidate.run_id:
        client.log_batch(candidate.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def reference_metric(model_uri: str, metric: str, *, client: MlflowClient | None = None) -> float | None:
    """``metric`` (e.g. ``gendet/mean_acc_calibrated``) as logged by the run that made a registered
    model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``); None for other URIs or when absent."""
    if not model_uri.startswith("models:/"):
        return None
    client = client or MlflowClient()
    name, _, ref = model_uri[len("models:/"):].partition("@")
    if ref:
        version = version_by_alias(client, name, ref)
    else:
        name, _, number = name.partition("/")
        version = client.get_model_version(name, number) if number else None
    if version is None or not version.run_id:
        return None
    value = client.get_run(version.run_id).data.metrics.get(metric)
    return None if value is None else float(value)


FAMILY_KEYS = ("acc_calibrated", "fake_acc_calibrated", "real_acc_calibrated", "ap")


def family_table(challenger_report: dict, champion_report: dict | None,
                 evidence: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """{subset: {"champion": {...}, "challenger": {...}, "paired": {...}}} of the calibrated accuracies
    and AP both models reached on the gate's split (champion: None when there is none) and the
    paired interval of their difference (``paired``: None when not paired)."""
    def pick(report: dict | None, subset: str) -> dict[str, Any] | None:
        found = (report or {}).get("subsets", {}).get(subset)
        return None if found is None else {k: found.get(k) for k in FAMILY_KEYS}

    subsets = sorted(set(challenger_report.get("subsets", {})) | set((champion_report or {}).get("subsets", {})))
    return {s: {"champion": pick(champion_report, s), "challenger": pick(challenger_report, s),
                "paired": None if evidence is None or s not in evidence else dict(evidence[s])} for s in subsets}


class GateScores(NamedTuple):
    """Both models scored on the gate's split (``register_and_gate``'s ``score``)."""

    challenger: dict
    """The challenger's metrics.json dict."""
    champion: dict | None
    """The champion's, on the same rows (None without a champion)."""
    evidence: dict[str, dict[str, Any]] | None = None
    """``gendet.eval.paired.deployed_intervals`` of the two on the same images (None: not paired)."""


def deployed(model: Any, scores: Any, subsets: Any, labels: Any, split: str) -> Any:
    """``model`` (a GenDet or GAMMA detector) as the gate judges it on ``split``'s rows: its scores and
    deployed threshold, refitted per resample on the reals of its calibration subsets when it was
    calibrated on this split (``gendet.eval.paired.Deployed``); a fixed threshold otherwise (calibrated
    on a train holdout, or saved before models named their calibration subsets)."""
    import numpy as np

    from gendet.eval.metrics import as_fake_labels
    from gendet.eval.paired import Deployed

    scores, fitted_on = np.asarray(scores, dtype=np.float64), getattr(model, "calibration_subsets", None)
    if getattr(model, "calibration_split", None) != split or not fitted_on or model.target_fpr is None:
        return Deployed(scores, float(model.threshold))
    reals = np.isin(np.asarray(subsets).astype(str), list(fitted_on)) & (as_fake_labels(labels) == 0)
    return Deployed(scores, float(model.threshold), reals, float(model.target_fpr))


def paired_evidence(subsets: Any, labels: Any, challenger: tuple[Any, Any], champion: tuple[Any, Any],
                    gate: GateConfig) -> dict[str, dict[str, Any]]:
    """The gate's per-family intervals from two models' scores on the same rows of ``gate.split``:
    ``challenger`` and ``champion`` are (model, scores), each judged as ``deployed`` says."""
    from gendet.eval.paired import deployed_intervals

    models = [deployed(model, scores, subsets, labels, gate.split) for model, scores in (challenger, champion)]
    return deployed_intervals(subsets, labels, *models, alpha=gate.alpha, resamples=gate.resamples)


def register_and_gate(model_uri: str, name: str, score: Callable[[Any], GateScores], gate: GateConfig) -> dict[str, Any]:
    """The end of every training job that registers (``train``, ``train-gamma``, ``fix``): register
    ``model_uri`` under ``name`` (alias challenger), score both models on the gate's split
    (``score(loaded champion or None) -> GateScores``: GenDet scores feature rows, GAMMA token rows),
    run the gate; returns its record."""
    from gendet.serve.loading import load_model

    client = MlflowClient()
    version = register(model_uri, name, client=client)
    champion = version_by_alias(client, name, CHAMPION)
    scored = score(load_model(f"models:/{name}@{CHAMPION}")
                   if champion is not None and champion.version != version.version else None)
    challenger_report, champion_report = scored.challenger, scored.champion
    decision = promote(client, name, challenger_report, champion_report, margin=gate.margin,
                       real_acc_floor=gate.real_floor, version=version.version,
                       max_family_drop=gate.max_family_drop, evidence=scored.evidence)
    return {"registered": name, "version": str(version.version), "promoted": decision.promoted,
            "reason": decision.reason, "champion_version": decision.champion_version,
            "worst_family": decision.worst_family, "worst_family_drop": decision.worst_family_drop,
            "split": gate.split, "families": family_table(challenger_report, champion_report, scored.evidence)}
