"""Config plumbing: the command line of a config is made from its fields (gendet.config)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from gendet.config import ConfigError, add_config_arguments, config_from_args, csv_tuple, field_docs
from gendet.extract.config import ExtractConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ExtractConfig, positional=("shards", "features"))
    return parser


def test_every_field_is_a_flag_with_the_configs_own_default():
    args = _parser().parse_args(["s/", "f/"])
    assert config_from_args(ExtractConfig, args) == ExtractConfig(shards="s/", features="f/")
    flags = {a.dest for a in _parser()._actions}
    assert {f.name for f in dataclasses.fields(ExtractConfig)} <= flags


def test_flags_set_fields_with_their_types_and_choices():
    args = _parser().parse_args(["s/", "f/", "--batch-size", "7", "--num-gpus", "0.5", "--precision", "bf16",
                                 "--read-tasks", "3"])
    cfg = config_from_args(ExtractConfig, args)
    assert (cfg.batch_size, cfg.num_gpus, cfg.precision, cfg.read_tasks) == (7, 0.5, "bf16", 3)
    with pytest.raises(SystemExit):  # a Literal field offers its choices only
        _parser().parse_args(["s/", "f/", "--precision", "fp8"])


def test_values_are_validated_by_the_config_before_any_work():
    args = _parser().parse_args(["s/", "f/", "--batch-size", "0"])
    with pytest.raises(ConfigError, match="batch_size 0: must be >= 1"):
        config_from_args(ExtractConfig, args)


def test_help_is_the_field_docstring():
    docs = field_docs(ExtractConfig)
    assert docs["batch_size"] == "Images per encoder call."
    text = _parser().format_help()
    assert "Images per encoder call. (default: 64)" in " ".join(text.split())


def test_csv_tuple():
    assert csv_tuple(" a, b,,c ") == ("a", "b", "c") and csv_tuple("") == ()
