"""The promotion gate's rule as a job's config (``GateConfig``): light to import, no MLflow. The
gate itself, and the one path that registers a model and runs it for every method, are
``gendet.mlops.registry`` (``register_and_gate``, ``promote``)."""

from __future__ import annotations

from dataclasses import dataclass

from gendet.config import check

MAX_FAMILY_DROP = 0.02  # the gate's family rule: the largest fall of a subset's calibrated accuracy below the champion's


@dataclass(frozen=True, kw_only=True, slots=True)
class GateConfig:
    """The promotion gate's rule (``gendet.mlops.registry.decide``)."""

    margin: float = 0.0
    """Mean accuracy the challenger must gain over the champion on the same evaluation set."""
    real_floor: float = 0.8
    """Least accuracy on real images at the challenger's calibrated threshold."""
    max_family_drop: float = MAX_FAMILY_DROP
    """Largest fall of any subset's calibrated accuracy below the champion's on it."""

    def __post_init__(self) -> None:
        check(self.margin >= 0, f"gate.margin {self.margin}: must be >= 0")
        check(0.0 <= self.real_floor <= 1.0, f"gate.real_floor {self.real_floor}: must be in [0, 1]")
        check(0.0 <= self.max_family_drop <= 1.0, f"gate.max_family_drop {self.max_family_drop}: must be in [0, 1]")
