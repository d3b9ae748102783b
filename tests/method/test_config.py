"""TrainConfig: the paper's defaults, the presets, and one clear error per bad value."""

from __future__ import annotations

import pytest

from gendet.config import ConfigError, from_dict, to_dict
from gendet.method.config import METHODS, TrainConfig, preset, replace


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
