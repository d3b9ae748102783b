"""The figures a training run logs (matplotlib's object API: no pyplot, no backend to set,
no display needed, and a figure is freed with its last reference).

- ``accuracy_bars``: per-subset accuracy of every method side by side, from metrics.json dicts;
  where GenDet beats or trails the baselines is read off one chart.
- ``score_histograms``: per subset, the distribution of a score (the teacher-student discrepancy
  or P(fake)) for real against fake images: how well-separated they are, and where a threshold
  falls, which a single accuracy number hides.
- ``training_diagnostics``: the adversarial stages rotation by rotation, from the trainer's
  history (Eq. 1, Eq. 2's hinge, Eq. 3, G's shift, the real/fake discrepancy gap): whether stage
  (b) moves, whether G runs to its bound, whether the gap N_c reads opens.
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


DIAGNOSTIC_PANELS = ("Eq. 1 on reals (stage a)", "Eq. 2 hinge on fakes, G(x) for gendet (stage b)", "Eq. 3 (stage c)",
                     "G shift ||G(x) - x|| / ||x|| (stage c)", "discrepancy gap: fake (b) - real (a)")
RUNG_COLORS = {"ts_real": "tab:blue", "ts_fake": "tab:orange", "gendet": "tab:green"}


def _rotation(stage: str) -> int | None:
    """``r03.b`` -> 3; None for pretrain and classifier."""
    head, _, _ = str(stage).partition(".")
    return int(head[1:]) if head.startswith("r") and head[1:].isdigit() else None


def diagnostic_series(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{panel title: {line label: (rotations, values)}} of ``training_diagnostics``, from the trainer's
    history rows (``gendet.method.gendet.trainer``: stage, job, mean_loss and the diagnostics).

    - Eq. 1: ``mean_loss`` of ``real.M`` (one line per student rung);
    - Eq. 2: the row's ``hinge`` (Eq. 2 without alpha, on G(x^f) for gendet, raw fakes for
      ts_fake); rows written before the trainer recorded it fall back to ``mean_loss`` (alpha * Eq. 2);
    - Eq. 3: ``mean_loss`` of ``augmenter``; G shift: its ``g_shift``;
    - the gap: per rotation, ``discrepancy`` of ``fake.M`` minus that of ``real.M``. The history has
      both sides on every rotation but one stage apart: the real side is the mean over stage (a)'s
      reals, the fake side over stage (b)'s raw fakes (gendet's on every 8th batch), so the
      student moved between the two; a rotation lacking either side is left out of the line.
    """
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {p: {} for p in DIAGNOSTIC_PANELS}
    disc: dict[tuple[str, str], dict[int, float]] = {}

    def add(panel: str, label: str, rotation: int, value: Any) -> None:
        if value is not None and np.isfinite(float(value)):
            xs, ys = series[panel].setdefault(label, ([], []))
            xs.append(rotation)
            ys.append(float(value))

    for row in history:
        rotation = _rotation(row.get("stage", ""))
        if rotation is None:
            continue
        what, _, method = str(row.get("job", "")).partition(".")
        if what == "real":
            add(DIAGNOSTIC_PANELS[0], method, rotation, row.get("mean_loss"))
        elif what == "fake":
            add(DIAGNOSTIC_PANELS[1], method, rotation, row.get("hinge", row.get("mean_loss")))
        elif what == "augmenter":
            add(DIAGNOSTIC_PANELS[2], "gendet", rotation, row.get("mean_loss"))
            add(DIAGNOSTIC_PANELS[3], "gendet", rotation, row.get("g_shift"))
        if what in ("real", "fake") and row.get("discrepancy") is not None:
            disc.setdefault((what, method), {})[rotation] = float(row["discrepancy"])
    for (what, method), fake in sorted(disc.items()):
        real = disc.get(("real", method), {}) if what == "fake" else {}
        for rotation in sorted(set(fake) & set(real)):
            add(DIAGNOSTIC_PANELS[4], method, rotation, fake[rotation] - real[rotation])
    return series


def training_diagnostics(history: Sequence[Mapping[str, Any]], *, title: str = "GenDet training, per rotation") -> Figure:
    """One figure, five panels (``DIAGNOSTIC_PANELS``), x = rotation, one line per rung with a
    point per rotation; see ``diagnostic_series`` for what each line is. A panel no rung of the
    run has (e.g. Eq. 3 without gendet) says so instead of staying blank."""
    series = diagnostic_series(history)
    fig = Figure(figsize=(15.0, 6.5))
    axes = fig.subplots(2, 3, squeeze=False)
    for ax, panel in zip(axes.flat, DIAGNOSTIC_PANELS):
        for label, (xs, ys) in sorted(series[panel].items(), key=lambda item: list(RUNG_COLORS).index(item[0])
                                      if item[0] in RUNG_COLORS else len(RUNG_COLORS)):
            ax.plot(xs, ys, marker="o", label=label, color=RUNG_COLORS.get(label))
        if series[panel]:
            ax.legend(fontsize="small")
            rotations = sorted({x for xs, _ in series[panel].values() for x in xs})
            ax.set_xticks(rotations)
        else:
            ax.text(0.5, 0.5, "not in this run", ha="center", va="center", transform=ax.transAxes, color="gray")
        if panel == DIAGNOSTIC_PANELS[4]:
            ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(panel, fontsize="medium")
        ax.set_xlabel("rotation")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(DIAGNOSTIC_PANELS):]:
        ax.set_visible(False)
    fig.suptitle(title)
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
