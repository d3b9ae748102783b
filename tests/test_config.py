"""Config plumbing (gendet.config): dicts, and a field's value from text."""

from __future__ import annotations

import pytest

from gendet.config import ConfigError, csv_tuple, from_dict, parse_value, to_dict
from gendet.extract.config import ExtractConfig
from gendet.method.gendet.config import TrainConfig


def test_csv_tuple():
    assert csv_tuple(" a, b,,c ") == ("a", "b", "c") and csv_tuple("") == ()


def test_a_config_round_trips_through_its_dict_and_unknown_keys_are_refused():
    cfg = ExtractConfig(encoder="spectrum:v1", shards="s/", features="f/", batch_size=7)
    assert from_dict(ExtractConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(ExtractConfig, {**to_dict(cfg), "batchsize": 3})


def test_values_are_validated_when_the_config_is_built():
    with pytest.raises(ConfigError, match="batch_size 0: must be >= 1"):
        ExtractConfig(encoder="spectrum:v1", shards="s/", features="f/", batch_size=0)


@pytest.mark.parametrize(("name", "text", "value"), [
    ("alpha", "0.5", 0.5), ("rotations", "3", 3), ("methods", "gendet,teacher", ("gendet", "teacher")),
    ("classifier_input", "both", "both"),
])
def test_parse_value_types_text_as_the_field_takes_it(name, text, value):
    assert parse_value(TrainConfig, name, text) == value


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("rotations", "two", "expected a value of type int"), ("classifier_input", "fakes", "choose from raw"),
])
def test_parse_value_refuses_bad_text_in_one_line(name, text, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        parse_value(TrainConfig, name, text)
    assert "\n" not in str(err.value)
