"""Does a new generator slip past the champion? The rule of ``gendet refresh`` (no Ray, no MLflow).

A new generator's shards arrive; the champion scores them (real images paired with the new fakes,
as CONTRACTS.md pairs them). What a trust-and-safety engineer needs to know is whether the
detector still holds **at the threshold it is deployed with**: the calibrated one. So each new
subset is compared with the champion's own reference, its mean calibrated accuracy on the
generators it was evaluated on:

* ``slipped`` when ``acc_calibrated`` on the new subset is below ``reference - max_drop``;
* ``slipped`` as well when ``fake_acc_calibrated`` (the share of the new fakes caught) is below
  ``min_fake_acc``, whatever the reference: a detector may keep its accuracy up on reals alone.

Without a reference (a local detector directory and no ``--reference``) only the second rule runs,
and the result says so. AP is reported next to them: a high AP with a low calibrated accuracy means
the scores still rank the new fakes but the threshold no longer fits, which recalibration fixes;
a low AP means the detector must be retrained with the new generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gendet.config import check
from gendet.eval.tables import markdown_table, pct

MAX_DROP = 0.05
MIN_FAKE_ACC = 0.5


@dataclass(frozen=True, kw_only=True, slots=True)
class SlipRule:
    """When a new subset raises an alert."""

    max_drop: float = MAX_DROP
    """Largest allowed fall of calibrated accuracy below the champion's reference mean."""
    min_fake_acc: float = MIN_FAKE_ACC
    """Smallest share of the new generator's fakes caught at the calibrated threshold."""

    def __post_init__(self) -> None:
        check(0.0 <= self.max_drop <= 1.0, f"max_drop {self.max_drop} must be in [0, 1]")
        check(0.0 <= self.min_fake_acc <= 1.0, f"min_fake_acc {self.min_fake_acc} must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class SubsetVerdict:
    subset: str
    slipped: bool
    reason: str
    acc_calibrated: float | None
    fake_acc_calibrated: float | None
    ap: float | None
    n_real: int
    n_fake: int


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def judge(report: Mapping[str, Any], reference: float | None, rule: SlipRule) -> list[SubsetVerdict]:
    """One verdict per subset of a metrics.json dict (the champion on the new shards)."""
    out = []
    for subset, m in sorted(report["subsets"].items()):
        acc, fake_acc, ap = _num(m.get("acc_calibrated")), _num(m.get("fake_acc_calibrated")), _num(m.get("ap"))
        alerts = []
        if reference is not None and acc is not None and acc < reference - rule.max_drop:
            alerts.append(f"calibrated accuracy {acc:.3f} is below the champion's reference {reference:.3f} "
                          f"minus {rule.max_drop:.3f}")
        if fake_acc is not None and fake_acc < rule.min_fake_acc:
            alerts.append(f"only {fake_acc:.1%} of its fakes are caught at the calibrated threshold "
                          f"(floor {rule.min_fake_acc:.1%})")
        if alerts:
            advice = ("recalibrate on rows of it (`gendet calibrate --subsets SUBSET`) or retrain (`gendet fix`)"
                      if ap is not None and ap >= 0.9 else "retrain with this generator (`gendet fix`)")
            reason = "; ".join(alerts) + (f"; AP {ap:.3f}: {advice}" if ap is not None else "")
        else:
            reason = ("holds: calibrated accuracy " + ("–" if acc is None else f"{acc:.3f}")
                      + ("" if reference is not None else " (no reference: fake-catch floor only)"))
        out.append(SubsetVerdict(subset=subset, slipped=bool(alerts), reason=reason, acc_calibrated=acc,
                                 fake_acc_calibrated=fake_acc, ap=ap, n_real=int(m.get("n_real") or 0),
                                 n_fake=int(m.get("n_fake") or 0)))
    return out


def verdicts_dict(verdicts: list[SubsetVerdict]) -> dict[str, dict[str, Any]]:
    return {v.subset: asdict(v) for v in verdicts}


def format_verdicts(verdicts: list[SubsetVerdict], reference: float | None) -> str:
    ref = "none" if reference is None else f"{100 * reference:.1f}"
    rows = [[v.subset, v.n_real, v.n_fake, pct(v.acc_calibrated), pct(v.fake_acc_calibrated), pct(v.ap),
             "ALERT" if v.slipped else "ok"] for v in verdicts]
    return f"reference acc_calibrated: {ref}\n\n" + markdown_table(
        ["new subset", "n_real", "n_fake", "acc_calibrated", "fake caught", "AP", "status"], rows)
