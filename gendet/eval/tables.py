"""The paper's tables as Markdown, from ``metrics.json`` dicts (no Ray, no MLflow).

* ``table``: Tables 1-3, a row per method (or model), a column per subset, then the mean.
* ``methods_table``: the same with the training subsets first and marked, and ``mean unseen``
  averaging only the generators the detector never trained on: the number the method is about.
* ``degradation_table`` / ``degradation_by_method``: Table 4, a row per degradation.
* ``markdown_table``: the one writer of a Markdown table every table here (and the slip verdicts
  and the benchmarks) goes through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gendet import GendetError
from gendet.eval.metrics import nanmean


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """``| a | b |`` lines: the header, the rule, one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal; "–" for missing (None) or NaN."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def mean_over(report: Mapping[str, Any], subsets: Sequence[str], metric: str) -> float | None:
    """Mean of ``metric`` over ``subsets`` of a metrics.json dict, missing values skipped; None if none."""
    mean = nanmean([report["subsets"].get(s, {}).get(metric) for s in subsets])
    return None if math.isnan(mean) else mean


def table(reports_by_row: Mapping[str, Mapping[str, Any]], *, metric: str = "acc", mean_key: str = "mean_acc",
          subsets: Sequence[str] | None = None, row_title: str = "method") -> str:
    """A row per entry of ``reports_by_row``, a column per subset (in %), then the mean."""
    if not reports_by_row:
        raise GendetError("no results to tabulate")
    names = list(subsets) if subsets else sorted({s for r in reports_by_row.values() for s in r["subsets"]})
    rows = [[row, *(pct(rep["subsets"].get(s, {}).get(metric)) for s in names), pct(rep.get(mean_key))]
            for row, rep in reports_by_row.items()]
    return markdown_table([row_title, *names, mean_key], rows)


def methods_table(reports: Mapping[str, Mapping[str, Any]], seen: Sequence[str], *, metric: str = "acc",
                  seen_generator: Sequence[str] = ()) -> str:
    """Row per method, column per subset (seen first, marked; then ``seen_generator``: subsets made by a
    training family's generator another way, e.g. masked, marked and left out of the unseen mean),
    then the mean over unseen subsets."""
    known = [*seen, *seen_generator]
    subsets = sorted({s for r in reports.values() for s in r["subsets"]}, key=lambda s: (s not in seen, s not in known, s))
    unseen = [s for s in subsets if s not in known]
    header = ["method", *(f"{s} (train)" if s in seen else f"{s} (seen generator)" if s in known else s
                          for s in subsets), "mean unseen"]
    rows = [[method, *(pct(rep["subsets"].get(s, {}).get(metric)) for s in subsets),
             pct(mean_over(rep, unseen, metric))] for method, rep in reports.items()]
    return markdown_table(header, rows)


def degradation_table(reports_by_degrade: Mapping[str, Mapping[str, Any]]) -> str:
    """Table 4 of one model: a row per degradation, mean accuracy, mAP and calibrated accuracy."""
    rows = [[degrade or "none", pct(rep.get("mean_acc")), pct(rep.get("mAP")), pct(rep.get("mean_acc_calibrated"))]
            for degrade, rep in reports_by_degrade.items()]
    return markdown_table(["degradation", "mean_acc", "mAP", "mean_acc_calibrated"], rows)


def degradation_by_method(by_degrade: Mapping[str, Mapping[str, Mapping[str, Any]]], seen: Sequence[str], *,
                          metric: str = "acc") -> str:
    """Table 4 of every method: ``by_degrade[degrade][method]`` metrics.json dicts -> row per
    degradation, column per method, each cell the mean ``metric`` over unseen subsets."""
    methods = list(next(iter(by_degrade.values())))
    rows = []
    for degrade, reports in by_degrade.items():
        cells = [pct(mean_over(reports[m], [s for s in reports[m]["subsets"] if s not in seen], metric))
                 for m in methods]
        rows.append([degrade or "none", *cells])
    return markdown_table(["degradation", *methods], rows)


def mean_sd(values: Sequence[float]) -> str:
    """``"mean ± sd"`` of ``values`` (one decimal; sd 0.0 for one value, "–" for none): a cell over seeds."""
    import statistics

    if not values:
        return "–"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def over_seeds_table(runs: Sequence[Mapping[tuple[str, str], float | None]], methods: Sequence[str]) -> str:
    """Rows ``methods``, one column per number of the runs (keys ``(method, column)``), each cell
    mean ± sd over the runs (seeds) in %, runs where the number is None left out."""
    columns = list(dict.fromkeys(k[1] for k in runs[0]))
    body = [[method, *(mean_sd([100 * r[(method, col)] for r in runs if r.get((method, col)) is not None])
                       for col in columns)] for method in methods]
    return markdown_table(["method", *columns], body)


def settings_suffix(assignments: Sequence[str]) -> str:
    """``["alpha=0.5", "classifier_input=both"]`` -> ``"-alpha-0.5-classifier-input-both"``: a result
    file named by the settings it ran with."""
    return "".join("-" + kv.replace("=", "-").replace("_", "-") for kv in assignments)
