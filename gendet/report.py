"""The demo's report: Markdown tables in the paper's layout, plots beside them (no Ray, no MLflow).

Tables 1-3 put a row per method and a column per subset; the paper trains on one generator
(SD v1.4) and reads the others as *unseen*, so the columns here are ordered seen first, each
marked, and ``mean unseen`` averages only the generators the detector never trained on: the number
the method is about. Table 4 puts a row per degradation and a column per method (mean accuracy
over the unseen generators).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gendet import io as gio
from gendet.evaluation import pct
from gendet.metrics import nanmean


def mean_over(report: Mapping[str, Any], subsets: Sequence[str], metric: str) -> float | None:
    """Mean of ``metric`` over ``subsets`` of a metrics.json dict, missing values skipped; None if none."""
    mean = nanmean([report["subsets"].get(s, {}).get(metric) for s in subsets])
    return None if math.isnan(mean) else mean


def methods_table(reports: Mapping[str, Mapping[str, Any]], seen: Sequence[str], *, metric: str = "acc") -> str:
    """Row per method, column per subset (seen first, marked), then the mean over unseen subsets."""
    subsets = sorted({s for r in reports.values() for s in r["subsets"]}, key=lambda s: (s not in seen, s))
    unseen = [s for s in subsets if s not in seen]
    header = [f"{s} (train)" if s in seen else s for s in subsets]
    lines = ["| method | " + " | ".join(header) + " | mean unseen |", "|---" * (len(subsets) + 2) + "|"]
    for method, rep in reports.items():
        cells = [pct(rep["subsets"].get(s, {}).get(metric)) for s in subsets]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {pct(mean_over(rep, unseen, metric))} |")
    return "\n".join(lines)


def degradation_by_method(by_degrade: Mapping[str, Mapping[str, Mapping[str, Any]]], seen: Sequence[str], *,
                      metric: str = "acc") -> str:
    """Table 4: ``by_degrade[degrade][method]`` metrics.json dicts -> row per degradation, column
    per method, each cell the mean ``metric`` over unseen subsets."""
    methods = list(next(iter(by_degrade.values())))
    lines = ["| degradation | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for degrade, reports in by_degrade.items():
        cells = []
        for m in methods:
            unseen = [s for s in reports[m]["subsets"] if s not in seen]
            cells.append(pct(mean_over(reports[m], unseen, metric)))
        lines.append(f"| {degrade or 'none'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(sections: Sequence[tuple[str, str]], title: str = "gendet demo report") -> str:
    """``# title`` then ``## heading`` + body for each section."""
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    return "\n".join(parts)


def write(url: str, sections: Sequence[tuple[str, str]], title: str = "gendet demo report") -> str:
    gio.write_bytes_atomic(url, markdown(sections, title).encode("utf-8"))
    return url
