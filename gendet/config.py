"""Config plumbing shared by every job config.

Configs are frozen ``kw_only, slots`` dataclasses (torchtitan style): a misspelt field fails
loudly, checks live in ``__post_init__`` and run before any work starts, and the resolved config
is written next to every output and logged to MLflow. Each concern keeps its own config class next
to its code (``gendet.train_config``, ``gendet.extract``, ``gendet.zoo``); this module holds what
they share.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

from gendet import GendetError


class ConfigError(GendetError, ValueError):
    """An invalid config value; the message names the field and the fix."""


C = TypeVar("C")


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (used in ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build ``cls`` from a dict, recursing into nested dataclass fields.

    Unknown keys are an error (a misspelt field must not be silently ignored).
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def replace(cfg: C, **changes: Any) -> C:
    """``dataclasses.replace`` that re-runs validation (``__post_init__``)."""
    return dataclasses.replace(cfg, **changes)
