"""A study's ``--set KEY=VALUE`` items: TrainConfig fields for every run, typed as ``gendet train --set`` types them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gendet.config import ConfigError, parse_value
from gendet.method.gendet.config import TrainConfig


def train_settings(items: Sequence[str]) -> dict[str, Any]:
    """``["alpha=0.5", "classifier_input=both"]`` -> {field: typed value} (``gendet.config.parse_value``);
    a bad item, an unknown field or a bad value is a one-line error naming it."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set alpha=0.5")
        if key not in names:
            raise ConfigError(f"--set {item}: unknown field {key!r}; known: {', '.join(sorted(names))}")
        out[key] = parse_value(TrainConfig, key, text)
    return out
