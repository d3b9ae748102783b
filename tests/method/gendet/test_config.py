"""TrainConfig: the paper's defaults, the presets, and one clear error per bad value."""

from __future__ import annotations

import pytest

from gendet.config import ConfigError, from_dict, to_dict
from gendet.method.gendet.config import METHODS, TrainConfig, preset, replace, resolve_calibration_split


def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio) == (196, 1, 4, 4.0)
    assert (cfg.margin, cfg.alpha, cfg.rotations, cfg.stage_epochs) == (2.0, 0.1, 10, 1)
    assert cfg.methods == METHODS == ("linear_probe", "teacher", "ts_real", "ts_fake", "gendet")


@pytest.mark.parametrize("name, rates", [
    ("genimage", (1e-5, 1e-5, 1e-3)),
    ("ufd", (1e-5, 1e-4, 1e-5)),
])
def test_presets_carry_the_papers_learning_rates(name, rates):
    cfg = preset(name)
    assert (cfg.teacher_lr, cfg.student_lr, cfg.classifier_lr) == rates
    assert cfg.augmenter_lr == cfg.student_lr  # documented choice: the paper is silent
    assert preset(name, seed=7).seed == 7


def test_round_trip_through_dict():
    cfg = preset("ufd", methods=("gendet", "teacher"), train_subsets=("progan",))
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("changes, words", [
    ({"margin": -1.0}, "margin"),
    ({"rotations": 0}, "rotations"),
    ({"methods": ("gendet", "knn")}, "knn"),
    ({"methods": ()}, "methods"),
    ({"heads": 5}, "heads"),
    ({"student_lr": 0.0}, "student_lr"),
    ({"target_fpr": 1.5}, "target_fpr"),
    ({"precision": "fp8"}, "precision"),
    ({"train_splits": ()}, "train_splits"),
    ({"calibration_split": "test"}, "calibration_split"),
    ({"calibration_holdout": 0.0}, "calibration_holdout"),
    ({"calibration_holdout": 1.0}, "calibration_holdout"),
    ({"calibration_holdout": -0.1}, "calibration_holdout"),
])
def test_invalid_values_fail_with_one_line(changes, words):
    with pytest.raises(ConfigError) as err:
        replace(TrainConfig(), **changes)
    message = str(err.value)
    assert words in message and "\n" not in message


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="unknown 'imagenet'"):
        preset("imagenet")
    with pytest.raises(ConfigError, match="rotation"):
        preset("genimage", rotation=3)


@pytest.mark.parametrize(("choice", "eval_splits", "val_rows", "resolved"), [
    ("auto", ("test",), 100, "val"),                # the store's val split, as before
    ("auto", ("val",), 100, "train_holdout"),       # GenImage: val is what is scored
    ("auto", ("test", "val"), 100, "train_holdout"),
    ("auto", ("test",), 0, "train_holdout"),        # no val rows at all
    ("val", ("test",), 100, "val"),
    ("train_holdout", ("test",), 100, "train_holdout"),
])
def test_calibration_split_resolves_to_rows_that_are_not_scored(choice, eval_splits, val_rows, resolved):
    cfg = resolve_calibration_split(TrainConfig(calibration_split=choice), eval_splits=eval_splits, val_rows=val_rows)
    assert cfg.calibration_split == resolved
    rows = cfg.calibration_rows()
    assert not set(rows["splits"]) & set(eval_splits)
    if resolved == "train_holdout":  # the same rows as training, the complementary side of the holdout
        assert rows == {**cfg.training_rows(), "holdout": "only"} and cfg.training_rows()["holdout"] == "exclude"
    else:
        assert "holdout" not in cfg.training_rows()


@pytest.mark.parametrize(("choice", "eval_splits", "val_rows", "needle"), [
    ("val", ("val",), 100, "fitted on the rows they are scored on"),
    ("val", ("test",), 0, "no val rows"),
    ("train_holdout", ("train",), 100, "also scored"),
    ("auto", ("train", "val"), 100, "also scored"),
])
def test_calibration_on_scored_or_missing_rows_is_refused(choice, eval_splits, val_rows, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        resolve_calibration_split(TrainConfig(calibration_split=choice), eval_splits=eval_splits, val_rows=val_rows)
    assert "\n" not in str(err.value)


def test_val_calibration_reads_the_training_families_and_the_ones_named_only():
    """Until 0.8.0 val calibration read every subset's val rows: the fakes of the families reported
    as unseen moved the threshold the 0.5 and calibrated tables use."""
    cfg = resolve_calibration_split(TrainConfig(train_subsets=("seen",)), eval_splits=("test",), val_rows=10)
    assert cfg.calibration_rows() == {"subsets": ("seen",), "splits": ("val",)}
    named = replace(cfg, calibration_subsets=("team_reals", "seen"))
    assert named.calibration_rows() == {"subsets": ("seen", "team_reals"), "splits": ("val",)}
    everything = resolve_calibration_split(TrainConfig(), eval_splits=("test",), val_rows=10)
    assert everything.calibration_rows()["subsets"] == ()  # trained on every subset: each is a training family
    with pytest.raises(ConfigError, match="calibration_subsets .* but calibration_split is train_holdout"):
        resolve_calibration_split(replace(named, calibration_split="auto"), eval_splits=("val",), val_rows=10)


def test_rows_are_not_chosen_before_the_calibration_split_is_resolved():
    with pytest.raises(ConfigError, match="still auto"):
        TrainConfig().training_rows()


def test_shots_are_validated_and_reach_the_training_rows():
    cfg = TrainConfig(train_subsets=("sd", "sdedit"), shots=("sdedit=64",))
    assert cfg.shot_limits == {"sdedit": 64}
    assert replace(cfg, calibration_split="val").training_rows()["shots"] == {"sdedit": 64}
    assert "shots" not in replace(cfg, calibration_split="val").calibration_rows()  # calibration rows unchanged
    for bad, needle in (("sdedit=64", "not among the training subsets"), ("sd=0", "positive integer"),
                        ("sd", "expected SUBSET=N"), ("sd=2,sd=3", "given twice")):
        with pytest.raises(ConfigError, match=needle):
            TrainConfig(train_subsets=("sd",), shots=tuple(bad.split(",")))
