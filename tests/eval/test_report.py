"""The demo report's tables: seen subsets first and marked, means over unseen subsets only."""

from gendet.eval import report, tables


def _rep(**accs):
    return {"subsets": {s: {"acc": a} for s, a in accs.items()}}


def test_methods_table_orders_seen_first_and_averages_unseen_only():
    reports = {"probe": _rep(a=1.0, b=0.5, c=0.7), "gendet": _rep(a=0.9, b=0.8, c=None)}
    lines = tables.methods_table(reports, seen=["b"]).splitlines()
    assert lines[0] == "| method | b (train) | a | c | mean unseen |"
    assert lines[2] == "| probe | 50.0 | 100.0 | 70.0 | 85.0 |"
    assert lines[3] == "| gendet | 80.0 | 90.0 | – | 90.0 |"  # a missing value is shown and skipped


def test_degradation_by_method_has_a_row_per_degradation_and_a_column_per_method(tmp_path):
    by_degrade = {"": {"probe": _rep(seen=1.0, x=0.8)}, "jpeg:30": {"probe": _rep(seen=0.9, x=0.6)}}
    text = tables.degradation_by_method(by_degrade, seen=["seen"])
    assert text.splitlines()[2:] == ["| none | 80.0 |", "| jpeg:30 | 60.0 |"]
    path = report.write(str(tmp_path / "r.md"), [("Table 4", text)])
    assert open(path).read().startswith("# gendet demo report\n\n## Table 4\n\n| degradation | probe |")


def test_over_seeds_table_is_mean_and_sd_per_method_and_column():
    from gendet.eval.tables import over_seeds_table, settings_suffix

    runs = [{("a", "acc"): 0.80, ("a", "ap"): 0.9, ("b", "acc"): 0.5, ("b", "ap"): None},
            {("a", "acc"): 0.90, ("a", "ap"): 0.9, ("b", "acc"): 0.7, ("b", "ap"): None}]
    lines = over_seeds_table(runs, ["a", "b"]).splitlines()
    assert lines[0].split("|")[1:-1] == [" method ", " acc ", " ap "]
    assert lines[2] == "| a | 85.0 ± 7.1 | 90.0 ± 0.0 |" and lines[3] == "| b | 60.0 ± 14.1 | – |"
    assert settings_suffix(["classifier_input=both", "alpha=0.5"]) == "-classifier-input-both-alpha-0.5"
