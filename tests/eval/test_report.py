"""The demo report's tables: seen subsets first and marked, means over unseen subsets only."""

import json

from gendet.eval import report, tables


def _rep(**accs):
    return {"subsets": {s: {"acc": a} for s, a in accs.items()}}


def test_methods_table_orders_seen_first_and_averages_unseen_only():
    reports = {"probe": _rep(a=1.0, b=0.5, c=0.7), "gendet": _rep(a=0.9, b=0.8, c=None)}
    lines = tables.methods_table(reports, seen=["b"]).splitlines()
    assert lines[0] == "| method | b (train) | a | c | mean unseen |"
    assert lines[2] == "| probe | 50.0 | 100.0 | 70.0 | 85.0 |"
    assert lines[3] == "| gendet | 80.0 | 90.0 | – | 90.0 |"  # a missing value is shown and skipped


def test_methods_table_marks_a_seen_generator_and_leaves_it_out_of_the_unseen_mean():
    reports = {"gendet": _rep(a=0.9, b=0.8, c=0.5, d=0.7)}
    lines = tables.methods_table(reports, seen=["b"], seen_generator=["c"]).splitlines()
    assert lines[0] == "| method | b (train) | c (seen generator) | a | d | mean unseen |"
    assert lines[2] == "| gendet | 80.0 | 50.0 | 90.0 | 70.0 | 80.0 |"  # (0.9 + 0.7) / 2: c is not unseen


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


def test_mean_sd_cell_of_none_one_and_several_values():
    from gendet.eval.tables import mean_sd

    assert (mean_sd([]), mean_sd([188.25]), mean_sd([182.0, 191.0, 191.0])) == ("–", "188.2 ± 0.0", "188.0 ± 5.2")


def test_demo_report_names_the_world_and_the_degradations_note(tmp_path):
    rep = {"subsets": {"seen": {"acc": 1.0, "ap": 1.0, "acc_calibrated": 1.0}, "x": {"acc": 0.8, "ap": 0.9,
                                                                                   "acc_calibrated": 0.7}},
           "target_fpr": 0.05}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gendet.json").write_text(json.dumps(rep))
    zoo = {"photos": 3, "corpus": {"found": {"scikit-image": 2, "mate-backgrounds": 1}},
           "config": {"crop_size": 64, "crop_sizes": [64, 128], "jpeg_fraction": 0.5, "jpeg_quality": [70, 95]},
           "families": {"seen": {"real": 4, "fake": 4, "masked": 0, "shards": ["seen-000000.tar"]}}}
    path, headline = report.write_demo_report(str(tmp_path), report.DemoReport(
        train_family="seen", new_family="new", zoo=zoo,
        extracted={"": {"store_rows": 8, "images": 8, "images_per_s": 10.0}},
        summary={"run_id": "r", "model_uri": "runs:/r/m", "gate": {"version": "1", "promoted": True, "reason": "first"}},
        by_degrade={"": {"gendet": rep}, "resize:64": {"gendet": rep}}, predictions=[], predictions_model="m",
        refresh={"table": "", "new_shards": [], "alert": False, "subsets": {}}, times={"zoo": 1.0},
        degrade_note="resize:64 halves the 128 px crops."))
    text = open(path).read()
    assert "80.0" in headline and "| resize:64 | 80.0 |" in text
    assert "resize:64 halves the 128 px crops." in text
    assert "3 photos (scikit-image 2, mate-backgrounds 1), world seed 0; native crops of 64, 128 px, 50% of each " \
           "label's images JPEG (q 70-95), the rest PNG" in text


def test_gamma_sections_put_gamma_beside_gendet_and_the_partial_fakes_in_their_own_table():
    gendet = {"subsets": {"seen": {"acc": 0.9, "ap": 1.0, "acc_calibrated": 0.9},
                          "inpaint_f8": {"acc": 0.5, "ap": 0.6, "acc_calibrated": 0.55}}}
    metrics = {"subsets": {"seen": {"acc": 0.8, "ap": 0.95, "acc_calibrated": 0.85},
                           "inpaint_f8": {"acc": 0.75, "ap": 0.8, "acc_calibrated": 0.7, "fake_acc": 0.8,
                                          "fake_acc_calibrated": 0.7, "n_masked": 12, "pixel_f1": 0.4, "pixel_iou": 0.3},
                           "copy_move": {"acc": None, "fake_acc": 0.25, "n_masked": 3, "pixel_f1": 0.1, "pixel_iou": 0.05}}}
    gamma = {"metrics": metrics, "train_subsets": ["seen", "copy_move"], "manipulated": {"copy_move": 3},
             "token_grid": "8x8", "seconds": {"train_gamma": 60.0},
             "summary": {"run_id": "r2", "gate": {"registered": "gendet-gamma", "version": "1", "promoted": False,
                                                  "reason": "below the floor"}}}
    assert report.gamma_sections({}, gendet, ["seen"]) == []
    [(heading, body)] = report.gamma_sections(gamma, gendet, ["seen"])
    lines = body.splitlines()
    assert lines.count("| method | seen (train) | inpaint_f8 | mean unseen |") == 3  # acc, AP, calibrated: GenDet's columns
    assert "| gendet | 90.0 | 50.0 | 50.0 |" in lines and "| gamma | 80.0 | 75.0 | 75.0 |" in lines
    rows = [line for line in lines if line.startswith(("| inpaint_f8 |", "| copy_move |"))]
    assert rows == ["| inpaint_f8 | 12 | 80.0 | 70.0 | 40.0 | 30.0 |", "| copy_move | 3 | 25.0 | – | 10.0 | 5.0 |"]
    assert "`gendet-gamma` version 1, promoted to champion: **False** (below the floor)" in body


def test_gamma_sections_label_a_seen_generator_apart():
    gendet = {"subsets": {"seen": {"acc": 0.9}, "inpaint_f8": {"acc": 0.5}, "strokes": {"acc": 0.6}}}
    metrics = {"subsets": {"seen": {"acc": 0.8}, "inpaint_f8": {"acc": 0.7, "n_masked": 4, "fake_acc": 0.9},
                           "strokes": {"acc": 0.65, "n_masked": 5, "fake_acc": 0.5}}}
    gamma = {"metrics": metrics, "train_subsets": ["seen"], "manipulated": {}, "token_grid": "8x8",
             "summary": {"gate": {}}}
    [(_, body)] = report.gamma_sections(gamma, gendet, ["seen"], ("inpaint_f8",))
    assert "| method | seen (train) | inpaint_f8 (seen generator) | strokes | mean unseen |" in body
    assert "| gamma | 80.0 | 70.0 | 65.0 | 65.0 |" in body  # the unseen mean is strokes alone
    assert "| inpaint_f8 (seen process: the training family's weights, GAMMA's mask drawer) | 4 |" in body


def test_the_fix_section_says_what_the_gate_saw_on_val_and_what_is_reported_on_test():
    paired = {"n": 560, "challenger": 0.95, "champion": 0.97, "diff": -0.02, "lo": -0.041, "hi": 0.004}
    fix = {"shots": 32, "subsets": ["new"], "challenger_version": "2", "promoted": True, "reason": "ok", "seconds": 9,
           "gate_split": "val", "eval_splits": ["test"],
           "families": {"old": {"before": {"acc_calibrated": 0.97, "fake_acc_calibrated": 0.96},
                                "after": {"acc_calibrated": 0.95, "fake_acc_calibrated": 0.93}, "paired": paired},
                        "new": {"before": {"acc_calibrated": 0.5, "fake_acc_calibrated": 0.1},
                                "after": {"acc_calibrated": 0.9, "fake_acc_calibrated": 0.92}, "paired": None}},
           "reported": {"new": {"acc_calibrated": 0.91, "fake_acc_calibrated": 0.94},
                        "old": {"acc_calibrated": 0.96}, "older": {"acc_calibrated": 0.9}}}
    text = report._fix_text(fix)
    assert "version 2 promoted to champion: ok" in text and "What the gate saw, on val" in text
    assert "| old | 560 | 97.0 | 95.0 | -2.0 [-4.1, +0.4] | 96.0 | 93.0 |" in text
    assert ("Reported on test (never read by the gate), the challenger: new 94.0 of fakes caught, acc_cal 91.0; "
            "mean acc_cal of the other families 93.0.") in text
    assert report._fix_text(None) == ""
