"""Config plumbing shared by every job config.

Configs are frozen ``kw_only, slots`` dataclasses (torchtitan style): a misspelt field fails
loudly, checks live in ``__post_init__`` and run before any work starts, and the resolved config
is written next to every output and logged to MLflow. Each concern keeps its own config class next
to its code (``gendet.method.gendet.config``, ``gendet.extract``, ``gendet.zoo``); this module holds what
they share.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

from gendet import GendetError


class ConfigError(GendetError):
    """An invalid config value; the message names the field and the fix."""


C = TypeVar("C")


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (used in ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)


def check_finite(cfg: Any, prefix: str = "") -> None:
    """Every float of a (possibly nested) config dataclass is a finite number: ``inf`` passes ``>= 0``
    and NaN fails every comparison silently, so range checks alone would let both through."""
    import math

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_finite(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: {value}; give a finite number")
        elif isinstance(value, tuple) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ConfigError(f"{name}: {value}; give finite numbers")


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


# --- a field's value from text (sweep grids, MLflow params) ---------------------------------------
def csv_tuple(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: how a tuple field is given as text."""
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


def _flag_type(hint: Any) -> tuple[Any, dict[str, Any]]:
    """(constructor, {"choices": ...}) of a field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return type(args[0]), {"choices": list(args)}
    if typing.get_origin(hint) is tuple:
        return csv_tuple, {}
    if args and len(args) == 1:  # X | None
        return _flag_type(args[0])
    return hint, {}


def parse_value(cls: type, name: str, text: str) -> Any:
    """``text`` as field ``name`` of ``cls`` takes it (int, float, bool, a choice, a comma tuple)."""
    hint = typing.get_type_hints(cls)[name]
    kind, extra = _flag_type(hint)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{name}={text}: not a boolean; use true or false")
        return lowered in ("true", "1", "yes")
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={text}: expected a value of type {getattr(kind, '__name__', kind)}") from None
    if "choices" in extra and value not in extra["choices"]:
        raise ConfigError(f"{name}={text}: choose from {', '.join(map(str, extra['choices']))}")
    return value


def parse_resources(text: str, flag: str) -> dict[str, float]:
    """A JSON object of custom resource names and positive amounts (``'{"gpu_node": 1}'``) as a dict;
    empty text: none; a one-line error naming ``flag`` otherwise."""
    import json

    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not (isinstance(value, dict) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                                      for v in value.values())):
        raise ConfigError(f"{flag} {text}: give a JSON object of resource names and positive amounts, "
                          "e.g. '{\"gpu_node\": 1}'")
    return {str(k): float(v) for k, v in value.items()}
