"""The promotion gate's rule as a job's config (``GateConfig``): light to import, no MLflow. The
gate itself, and the one path that registers a model and runs it for every method, are
``gendet.mlops.registry`` (``register_and_gate``, ``promote``)."""

from __future__ import annotations

from dataclasses import dataclass

from gendet.config import check

MAX_FAMILY_DROP = 0.0  # the gate's family rule: how far beyond noise a family may fall below the champion
GATE_SPLIT = "val"  # the gate chooses: it reads val, never the split a run reports


@dataclass(frozen=True, kw_only=True, slots=True)
class GateConfig:
    """The promotion gate's rule (``gendet.mlops.registry.decide``)."""

    split: str = GATE_SPLIT
    """The split both models are scored on for the decision: a choice, so never one the run reports
    (--eval-splits)."""
    margin: float = 0.0
    """Mean accuracy the challenger must gain over the champion on the gate's split."""
    real_floor: float = 0.8
    """Least accuracy on real images at the challenger's calibrated threshold."""
    max_family_drop: float = MAX_FAMILY_DROP
    """A family falls when its whole paired interval (challenger - champion calibrated accuracy, same
    images) lies below minus this: 0 refuses any fall beyond noise."""
    alpha: float = 0.05
    """The chance, over all families together, that a challenger no worse than the champion is refused
    for a fall (the intervals are simultaneous: Bonferroni)."""
    resamples: int = 2000
    """Paired bootstrap resamples per family."""

    def __post_init__(self) -> None:
        check(bool(self.split), "gate.split: empty; name the split the gate scores (val)")
        check(0.0 < self.alpha < 0.5, f"gate.alpha {self.alpha}: must be in (0, 0.5)")
        check(self.resamples >= 100, f"gate.resamples {self.resamples}: must be >= 100")
        check(self.margin >= 0, f"gate.margin {self.margin}: must be >= 0")
        check(0.0 <= self.real_floor <= 1.0, f"gate.real_floor {self.real_floor}: must be in [0, 1]")
        check(0.0 <= self.max_family_drop <= 1.0, f"gate.max_family_drop {self.max_family_drop}: must be in [0, 1]")


def check_gate_split(gate: GateConfig, *, register: str | None, eval_splits: tuple[str, ...],
                     splits: tuple[str, ...] | None = None) -> None:
    """When a job registers (and so gates): its gate split is not a reported one, and, given the
    store's ``splits``, has rows."""
    if not register:
        return
    check(gate.split not in eval_splits,
          f"--gate.split {gate.split} is also in --eval-splits: the gate would choose on the rows the run reports; "
          "gate on val and report test (GenImage's train/val layout: --gate.split train, the unseen families' "
          "training rows, or split off a val with gendet import)")
    if splits is not None:
        check(gate.split in splits, f"no rows of split {gate.split} for the gate; the store has {','.join(sorted(splits))}: "
                                    "pass --gate.split with a split the run does not report")
