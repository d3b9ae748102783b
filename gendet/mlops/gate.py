"""Register a trained model and run the promotion gate: one path for every method.

``gendet train``, ``train-gamma`` and ``fix`` all end the same way: the logged model becomes a new
version with the alias ``challenger``; when a ``champion`` exists, the caller scores it on the
same evaluation set (``score_champion``: GenDet scores feature rows, GAMMA token rows); the gate
(``gendet.mlops.registry.promote``) decides and moves ``champion`` only when it passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gendet.config import check
from gendet.mlops import registry

FAMILY_KEYS = ("acc_calibrated", "fake_acc_calibrated", "real_acc_calibrated", "ap")


@dataclass(frozen=True, kw_only=True, slots=True)
class GateConfig:
    """The promotion gate's rule (``gendet.mlops.registry.decide``)."""

    margin: float = 0.0
    """Mean accuracy the challenger must gain over the champion on the same evaluation set."""
    real_floor: float = 0.8
    """Least accuracy on real images at the challenger's calibrated threshold."""
    max_family_drop: float = registry.MAX_FAMILY_DROP
    """Largest fall of any subset's calibrated accuracy below the champion's on it."""

    def __post_init__(self) -> None:
        check(self.margin >= 0, f"gate.margin {self.margin}: must be >= 0")
        check(0.0 <= self.real_floor <= 1.0, f"gate.real_floor {self.real_floor}: must be in [0, 1]")
        check(0.0 <= self.max_family_drop <= 1.0, f"gate.max_family_drop {self.max_family_drop}: must be in [0, 1]")


def family_table(challenger_report: dict, champion_report: dict | None) -> dict[str, dict[str, Any]]:
    """{subset: {"champion": {...}, "challenger": {...}}} of the calibrated accuracies and AP both
    models reached on the gate's evaluation set (champion: None when there is none)."""
    def pick(report: dict | None, subset: str) -> dict[str, Any] | None:
        found = (report or {}).get("subsets", {}).get(subset)
        return None if found is None else {k: found.get(k) for k in FAMILY_KEYS}

    subsets = sorted(set(challenger_report.get("subsets", {})) | set((champion_report or {}).get("subsets", {})))
    return {s: {"champion": pick(champion_report, s), "challenger": pick(challenger_report, s)} for s in subsets}


def register_and_gate(model_uri: str, name: str, challenger_report: dict, score_champion: Callable[[Any], dict],
                      gate: GateConfig) -> dict[str, Any]:
    """Register ``model_uri`` under ``name`` (alias challenger), score the champion when there is one
    (``score_champion(loaded champion) -> metrics.json dict``), run the gate; returns its record."""
    from mlflow import MlflowClient

    from gendet.serve.loading import load_model

    client = MlflowClient()
    version = registry.register(model_uri, name, client=client)
    champion = registry.version_by_alias(client, name, registry.CHAMPION)
    champion_report = None
    if champion is not None and champion.version != version.version:
        champion_report = score_champion(load_model(f"models:/{name}@{registry.CHAMPION}"))
    decision = registry.promote(client, name, challenger_report, champion_report, margin=gate.margin,
                                real_acc_floor=gate.real_floor, version=version.version,
                                max_family_drop=gate.max_family_drop)
    return {"registered": name, "version": str(version.version), "promoted": decision.promoted,
            "reason": decision.reason, "champion_version": decision.champion_version,
            "worst_family": decision.worst_family, "worst_family_drop": decision.worst_family_drop,
            "families": family_table(challenger_report, champion_report)}
