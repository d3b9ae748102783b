"""A hyperparameter sweep's bookkeeping, without Ray or MLflow: the grid, each trial's numbers, the tables.

* ``expand_grid``: every point of a grid ``{key: [values]}``, the last key varying fastest.
* ``trial_numbers``: the numbers a trial reports from its ``metrics.json`` dicts (one per method):
  the mean accuracy, AP and calibrated accuracy over the subsets it never trained on
  (``unseen_*``) and over those it did (``seen_*``); the headline method's bare (``unseen_acc``:
  what a sweep ranks trials by, on its selection split), every other method's as ``<method>/unseen_acc``.
* ``best_point``: the grid point chosen (highest mean ``unseen_acc`` on the selection split);
  ``selected_text`` reports its numbers on the eval splits, read once, after the choice.
* ``grid_table`` (one row per grid point, seeds pooled) and ``pivot_table`` (rows one knob,
  columns another: Table 5's M x alpha), cells mean ± sd over seeds in %; ``csv_text`` writes the
  per-trial rows (``sweep.csv``).

``pipelines.sweep`` runs the grid on Ray Tune; this module only does the arithmetic.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.config import ConfigError, csv_tuple, parse_value
from gendet.eval.tables import markdown_table, mean_over

SUMMARY = ("acc", "ap", "acc_calibrated")
"""metrics.json per-subset numbers a trial averages over its seen and unseen subsets."""
NUMBERS = tuple(f"{side}_{m}" for side in ("unseen", "seen") for m in SUMMARY)
"""The bare keys of ``trial_numbers``: unseen_acc, unseen_ap, unseen_acc_calibrated, seen_acc, ..."""


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """``{"alpha": [0.1, 1], "margin": [2]}`` -> ``[{"alpha": 0.1, "margin": 2}, {"alpha": 1, "margin": 2}]``."""
    for key, values in grid.items():
        if not values:
            raise GendetError(f"grid: {key} has no values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def seen_unseen(report: Mapping[str, Any], seen: Sequence[str]) -> dict[str, float]:
    """The ``NUMBERS`` of one metrics.json dict; NaN where a side has no subset (or no value)."""
    subsets = list(report["subsets"])
    sides = {"unseen": [s for s in subsets if s not in seen], "seen": [s for s in subsets if s in seen]}
    out = {}
    for side, names in sides.items():
        for metric in SUMMARY:
            value = mean_over(report, names, metric) if names else None
            out[f"{side}_{metric}"] = math.nan if value is None else float(value)
    return out


def trial_numbers(reports: Mapping[str, Mapping[str, Any]], seen: Sequence[str], headline: str) -> dict[str, float]:
    """The headline method's ``NUMBERS`` bare, every other method's as ``<method>/<number>``."""
    if headline not in reports:
        raise GendetError(f"sweep: the headline method {headline!r} was not trained; trained: {', '.join(reports)}")
    out: dict[str, float] = {}
    for method, report in reports.items():
        numbers = seen_unseen(report, seen)
        out.update(numbers if method == headline else {f"{method}/{k}": v for k, v in numbers.items()})
    return out


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_sd(values: Sequence[Any]) -> str:
    """Fractions as ``"88.5 ± 2.2"`` (%; sd over the values), ``"88.5"`` for one, ``"–"`` for none."""
    finite = _finite(values)
    if not finite:
        return "–"
    mean = 100 * statistics.mean(finite)
    if len(finite) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(finite):.1f}"


def cell(value: Any) -> str:
    """A knob's value as a table cell: tuples as ``a,b``, floats as Python writes them."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def group(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows grouped by their values of ``keys``, groups in order of first appearance."""
    out: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(tuple(cell(row[k]) for k in keys), []).append(row)
    return out


def grid_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], numbers: Sequence[str] = NUMBERS) -> str:
    """One row per distinct value of ``keys`` (seeds pooled): the knobs, the trial count, then
    mean ± sd of each of ``numbers``."""
    lines = [[*values, len(members), *(mean_sd([m.get(n) for m in members]) for n in numbers)]
             for values, members in group(rows, keys).items()]
    return markdown_table([*keys, "trials", *numbers], lines)


def pivot_table(rows: Sequence[Mapping[str, Any]], row_key: str, col_key: str, number: str = "unseen_acc") -> str:
    """Rows ``row_key``, columns ``col_key``, cells mean ± sd of ``number`` over the rows that
    share both values (the seeds, and any other knob: pass only the rows to pool)."""
    cols = list(group(rows, [col_key]))
    lines = []
    for (row_value,), members in group(rows, [row_key]).items():
        by_col = group(members, [col_key])
        lines.append([row_value, *(mean_sd([m.get(number) for m in by_col.get(c, [])]) for c in cols)])
    return markdown_table([f"{row_key} \\ {col_key}", *(c[0] for c in cols)], lines)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The rows as CSV with a header; knobs as ``cell`` writes them, missing values empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else (cell(row[c]) if not isinstance(row[c], float) else repr(row[c]))
                         for c in columns])
    return buf.getvalue()


def parse_grid(cls: type, items: Sequence[str]) -> dict[str, list[Any]]:
    """``["alpha=0.01,0.1"]`` -> ``{"alpha": [0.01, 0.1]}``: each value typed as field ``alpha`` of the
    config dataclass ``cls`` takes it; a bad key or value is a one-line error naming it."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not csv_tuple(text):
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,..., e.g. --grid alpha=0.01,0.1,1")
        if key not in known:
            raise ConfigError(f"--grid {item}: unknown field {key!r}; known: {', '.join(sorted(known))}")
        if key in grid:
            raise ConfigError(f"--grid {item}: {key} is swept twice; give all its values in one --grid")
        grid[key] = [parse_value(cls, key, v) for v in csv_tuple(text)]
    return grid


TABLE_AXES = ("alpha", "margin")  # rows, columns of the Table-5 pivot when both are swept
CSV_FIXED = ("trial_id", "status", "mlflow_run_id", "train_seconds")


def best_point(rows: Sequence[Mapping[str, Any]], knobs: Sequence[str],
               number: str = "unseen_acc") -> tuple[tuple, list[Mapping[str, Any]]] | None:
    """(knob values, its trials) of the grid point, seeds pooled, whose finished trials have the
    highest mean ``number``; the first in grid order on a tie; None when no trial finished. The
    rows hold the selection split's numbers only: nothing reported is read here."""
    done = [r for r in rows if r.get("status") == "TERMINATED" and _finite([r.get(number)])]
    groups = group(done, knobs) if knobs else ({(): done} if done else {})
    if not groups:
        return None
    return max(groups.items(), key=lambda item: statistics.mean(float(r[number]) for r in item[1]))


def selected_text(selected: Mapping[str, Any]) -> str:
    """sweep.md's last section: the point chosen on the selection split, and its numbers on the
    eval splits (mean ± sd over its seeds), reported once."""
    reported = selected["reported"]
    lines = [f"Chosen on {selected['select_split']} (unseen accuracy, mean over seeds): {selected['point']}, "
             f"{mean_sd(selected['chosen_by'])}. Reported once, on {','.join(selected['eval_splits'])} "
             f"({len(reported)} trial(s)):", "",
             markdown_table(list(NUMBERS), [[mean_sd([r.get(n) for r in reported]) for n in NUMBERS]])]
    return "\n".join(lines)


def write_tables(out: str, grid: Mapping[str, list[Any]], rows: list[dict[str, Any]], title: str,
                 selected: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Write OUT/sweep.csv (one row per trial, the selection split's numbers) and OUT/sweep.md
    (Table 5's shape when alpha and margin are swept, then every grid point, then the chosen point
    on the eval splits); returns (CSV text, Markdown text)."""
    knobs = [k for k in grid if k != "seed"]
    numbers = list(NUMBERS)
    extra = sorted({k for r in rows for k in r if "/" in k})
    columns = [*CSV_FIXED[:1], *grid, *CSV_FIXED[1:], *numbers, *extra]
    table_csv = csv_text(rows, columns)
    gio.write_bytes_atomic(gio.join(out, "sweep.csv"), table_csv.encode())
    done = [r for r in rows if r["status"] == "TERMINATED"]
    parts = [title, ""]
    if set(TABLE_AXES) <= set(knobs):
        others = [k for k in knobs if k not in TABLE_AXES]
        for values, members in group(done, others).items() if others else [((), done)]:
            where = ", ".join(f"{k}={v}" for k, v in zip(others, values))
            parts += [f"Unseen accuracy (%), mean ± sd over seeds{f' ({where})' if where else ''}:", "",
                      pivot_table(members, *TABLE_AXES), ""]
    parts += ["Every grid point (%, mean ± sd over seeds):", "", grid_table(done, knobs or ["seed"], numbers)]
    failed = [r for r in rows if r["status"] != "TERMINATED"]
    if failed:
        parts += ["", f"{len(failed)} trial(s) did not finish: " + "; ".join(r["point"] for r in failed)]
    if selected:
        parts += ["", selected_text(selected)]
    text = "\n".join(parts) + "\n"
    gio.write_bytes_atomic(gio.join(out, "sweep.md"), text.encode())
    return table_csv, text

