"""A sweep's arithmetic: the grid's points, each trial's seen/unseen numbers, the tables and the CSV."""

import csv
import io
import math

import pytest

from gendet import GendetError
from gendet.eval import sweep


def _rep(**subsets):
    return {"subsets": {s: {"acc": a, "ap": p, "acc_calibrated": c} for s, (a, p, c) in subsets.items()}}


def test_expand_grid_is_the_product_in_order_last_key_fastest():
    points = sweep.expand_grid({"alpha": [0.1, 1.0], "margin": [1.0, 2.0], "seed": [0]})
    assert points == [{"alpha": 0.1, "margin": 1.0, "seed": 0}, {"alpha": 0.1, "margin": 2.0, "seed": 0},
                      {"alpha": 1.0, "margin": 1.0, "seed": 0}, {"alpha": 1.0, "margin": 2.0, "seed": 0}]
    with pytest.raises(GendetError, match="margin has no values"):
        sweep.expand_grid({"alpha": [0.1], "margin": []})


def test_trial_numbers_average_unseen_and_seen_subsets_headline_bare():
    reports = {"gendet": _rep(seen=(1.0, 1.0, 0.9), a=(0.8, 0.9, 0.7), b=(0.6, None, 0.5)),
               "teacher": _rep(seen=(0.9, 0.95, 0.9), a=(0.5, 0.5, 0.5))}
    numbers = sweep.trial_numbers(reports, ["seen"], "gendet")
    assert numbers["unseen_acc"] == pytest.approx(0.7) and numbers["unseen_ap"] == pytest.approx(0.9)  # None skipped
    assert numbers["unseen_acc_calibrated"] == pytest.approx(0.6) and numbers["seen_acc"] == 1.0
    assert numbers["teacher/unseen_acc"] == 0.5 and "gendet/unseen_acc" not in numbers
    assert set(sweep.NUMBERS) <= set(numbers)
    only_seen = sweep.seen_unseen(_rep(seen=(1.0, 1.0, 1.0)), ["seen"])
    assert math.isnan(only_seen["unseen_acc"]) and only_seen["seen_ap"] == 1.0
    with pytest.raises(GendetError, match="headline method 'gendet' was not trained"):
        sweep.trial_numbers({"teacher": reports["teacher"]}, ["seen"], "gendet")


def test_mean_sd_cells():
    assert sweep.mean_sd([0.8, 0.9, 1.0]) == "90.0 ± 10.0"
    assert sweep.mean_sd([0.885]) == "88.5"
    assert sweep.mean_sd([None, float("nan")]) == "–"
    assert sweep.cell(("gendet", "teacher")) == "gendet,teacher" and sweep.cell(0.01) == "0.01"


ROWS = [{"alpha": a, "margin": m, "seed": s, "unseen_acc": acc, "seen_acc": 1.0}
        for (a, m, s, acc) in [(0.1, 1.0, 0, 0.80), (0.1, 1.0, 1, 0.90), (0.1, 2.0, 0, 0.70), (0.1, 2.0, 1, 0.70),
                               (1.0, 1.0, 0, 0.60), (1.0, 1.0, 1, 0.60), (1.0, 2.0, 0, 0.50), (1.0, 2.0, 1, None)]]


def test_pivot_table_rows_one_knob_columns_another_cells_over_seeds():
    lines = sweep.pivot_table(ROWS, "alpha", "margin").splitlines()
    assert lines[0] == "| alpha \\ margin | 1.0 | 2.0 |"
    assert lines[2:] == ["| 0.1 | 85.0 ± 7.1 | 70.0 ± 0.0 |", "| 1.0 | 60.0 ± 0.0 | 50.0 |"]  # a missing seed is skipped
    # a column a row lacks is shown as missing
    assert sweep.pivot_table(ROWS[:6], "alpha", "margin").splitlines()[3] == "| 1.0 | 60.0 ± 0.0 | – |"


def test_grid_table_pools_seeds_per_point():
    lines = sweep.grid_table(ROWS, ["alpha", "margin"], ["unseen_acc", "seen_acc"]).splitlines()
    assert lines[0] == "| alpha | margin | trials | unseen_acc | seen_acc |"
    assert lines[2] == "| 0.1 | 1.0 | 2 | 85.0 ± 7.1 | 100.0 ± 0.0 |"
    assert len(lines) == 2 + 4


def test_csv_text_round_trips_the_rows():
    rows = [{"alpha": 0.1, "methods": ("gendet",), "unseen_acc": 0.8125, "note": None},
            {"alpha": 1.0, "methods": ("gendet",), "unseen_acc": float("nan"), "note": "x"}]
    read = list(csv.DictReader(io.StringIO(sweep.csv_text(rows, ["alpha", "methods", "unseen_acc", "note"]))))
    assert read[0] == {"alpha": "0.1", "methods": "gendet", "unseen_acc": "0.8125", "note": ""}
    assert float(read[0]["unseen_acc"]) == 0.8125 and math.isnan(float(read[1]["unseen_acc"]))


def test_best_point_pools_seeds_reads_only_the_selection_numbers_and_skips_failures():
    rows = [{"alpha": 0.1, "seed": 0, "status": "TERMINATED", "unseen_acc": 0.90},
            {"alpha": 0.1, "seed": 1, "status": "TERMINATED", "unseen_acc": 0.70},  # mean 0.80
            {"alpha": 1.0, "seed": 0, "status": "TERMINATED", "unseen_acc": 0.85},
            {"alpha": 1.0, "seed": 1, "status": "TERMINATED", "unseen_acc": 0.83},  # mean 0.84: the best point
            {"alpha": 9.0, "seed": 0, "status": "ERROR"}]
    values, members = sweep.best_point(rows, ["alpha"])
    assert values == ("1.0",) and [m["seed"] for m in members] == [0, 1]  # not alpha=0.1's single best trial
    assert sweep.best_point([{"alpha": 1, "status": "ERROR"}], ["alpha"]) is None
    assert sweep.best_point(rows[:2], [])[0] == ()  # seeds only: the one point


def test_selected_text_reports_the_chosen_point_on_the_eval_splits():
    selected = {"point": "alpha=1.0", "select_split": "val", "eval_splits": ["test"], "chosen_by": [0.85, 0.83],
                "reported": [{"seed": 0, "unseen_acc": 0.81}, {"seed": 1, "unseen_acc": 0.79}]}
    text = sweep.selected_text(selected)
    assert text.startswith("Chosen on val (unseen accuracy, mean over seeds): alpha=1.0, 84.0 ± 1.4. Reported once, on test")
    assert "| 80.0 ± 1.4 |" in text
