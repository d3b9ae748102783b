"""The two figures a training run logs (matplotlib's object API: no pyplot, no backend to set,
no display needed, and a figure is freed with its last reference).

- ``accuracy_bars``: per-subset accuracy of every method side by side, from metrics.json dicts;
  where GenDet beats or trails the baselines is read off one chart.
- ``score_histograms``: per subset, the distribution of a score (the teacher-student discrepancy
  or P(fake)) for real against fake images: how well-separated they are, and where a threshold
  falls, which a single accuracy number hides.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gendet import io as gio


def accuracy_bars(reports: Mapping[str, Mapping[str, Any]], *, metric: str = "acc",
                  title: str | None = None) -> Figure:
    """Grouped bars: one group per subset (plus ``mean``), one bar per method.

    ``reports`` maps method name -> metrics.json dict (CONTRACTS.md). Subsets a method lacks are
    left empty rather than drawn as zero.
    """
    methods = list(reports)
    subsets = sorted({s for r in reports.values() for s in r.get("subsets", {})})
    groups = [*subsets, "mean"]
    values = np.full((len(methods), len(groups)), np.nan)
    for i, method in enumerate(methods):
        per_subset = reports[method].get("subsets", {})
        for j, subset in enumerate(subsets):
            if metric in per_subset.get(subset, {}):
                values[i, j] = per_subset[subset][metric]
        values[i, -1] = np.nanmean(values[i, :-1]) if np.isfinite(values[i, :-1]).any() else np.nan

    fig = Figure(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(methods)) / 2), 4.0))
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(groups))
    for i, method in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, values[i], width, label=method)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per subset")
    ax.legend(fontsize="small", ncols=min(len(methods), 5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def score_histograms(scores: Sequence[float], labels: Sequence[str], subsets: Sequence[str], *,
                     bins: int = 30, score_name: str = "score", threshold: float | None = None) -> Figure:
    """One panel per subset: histogram of ``scores`` for ``real`` against ``fake`` labels."""
    scores_arr = np.asarray(scores, dtype=np.float64)
    labels_arr, subsets_arr = np.asarray(labels), np.asarray(subsets)
    if not (len(scores_arr) == len(labels_arr) == len(subsets_arr)):
        raise ValueError(f"scores, labels and subsets differ in length: "
                         f"{len(scores_arr)}, {len(labels_arr)}, {len(subsets_arr)}")
    names = sorted(set(subsets_arr.tolist()))
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols) if names else 1
    fig = Figure(figsize=(4.0 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    finite = scores_arr[np.isfinite(scores_arr)]
    edges = np.histogram_bin_edges(finite if finite.size else [0.0, 1.0], bins=bins)
    for ax, name in zip(axes.flat, names):
        in_subset = subsets_arr == name
        for label, color in (("real", "tab:blue"), ("fake", "tab:red")):
            ax.hist(scores_arr[in_subset & (labels_arr == label)], bins=edges, alpha=0.55,
                    color=color, label=label)
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel(score_name)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig: Figure, url: str, dpi: int = 100) -> str:
    """Write the figure as a PNG to a local path or fsspec URL (atomically); returns ``url``."""
    gio.write_bytes_atomic(url, png_bytes(fig, dpi))
    return url
