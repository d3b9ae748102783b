"""Config plumbing shared by every job config.

Configs are frozen ``kw_only, slots`` dataclasses (torchtitan style): a misspelt field fails
loudly, checks live in ``__post_init__`` and run before any work starts, and the resolved config
is written next to every output and logged to MLflow. Each concern keeps its own config class next
to its code (``gendet.method.gendet.config``, ``gendet.extract``, ``gendet.zoo``); this module holds what
they share.
"""

from __future__ import annotations

import argparse
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


# --- the command line of a config: flags made from its fields, defaults and docstrings -----------

def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), first sentence."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def csv_tuple(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: how a tuple field is given on the command line."""
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


def _flag_type(hint: Any) -> tuple[Any, dict[str, Any]]:
    """(argparse type, extra add_argument kwargs) for a field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return type(args[0]), {"choices": list(args)}
    if typing.get_origin(hint) is tuple:
        return csv_tuple, {"metavar": "A,B,..."}
    if args and len(args) == 1:  # X | None
        return _flag_type(args[0])
    return hint, {}


def add_config_arguments(parser: Any, cls: type, *, positional: tuple[str, ...] = (), skip: tuple[str, ...] = (),
                         helps: dict[str, str] | None = None) -> None:
    """One ``--field-name`` flag per field of the config dataclass ``cls`` (``positional`` ones as
    positional arguments), with the field's default, its type or choices, and its docstring as
    help: the defaults live in the config alone."""
    hints, docs, helps = typing.get_type_hints(cls), field_docs(cls), helps or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, extra = _flag_type(hints[f.name])
        text = helps.get(f.name, docs.get(f.name, "")).replace("%", "%%")  # argparse formats help with %
        if f.name in positional:
            parser.add_argument(f.name, metavar=f.name.upper(), type=kind, help=text, **extra)
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool:
            parser.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=default,
                                help=text)
            continue
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=default,
                            help=f"{text} (default: {shown})", **extra)


def config_from_args(cls: type[C], args: Any) -> C:
    """The config whose fields are the parsed flags of ``add_config_arguments`` (validated)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _parse_value(cls: type, name: str, text: str) -> Any:
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


def parse_assignments(cls: type, items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["alpha=0.5", "methods=gendet,teacher"]`` -> {field: typed value} for ``cls`` (``--set``);
    an unknown field or a bad value is a one-line error naming it."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set alpha=0.5")
        if key not in names:
            raise ConfigError(f"--set {item}: unknown field {key!r}; known: {', '.join(sorted(names))}")
        out[key] = _parse_value(cls, key, text)
    return out


def read_config_file(cls: type, url: str) -> dict[str, Any]:
    """The fields of ``cls`` in a JSON or YAML file (``--config``), checked by name (values are
    checked when the config is built)."""
    import fsspec  # not gendet.io: config sits beside io, below every other layer

    try:
        with fsspec.open(str(url), "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {url}: file not found") from None
    try:
        if str(url).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - json and yaml raise their own types
        raise ConfigError(f"--config {url}: not valid {'YAML' if str(url).endswith(('.yaml', '.yml')) else 'JSON'} "
                          f"({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {url}: expected a mapping of field: value")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"--config {url}: unknown field(s) {unknown}; known: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    return {k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple else v for k, v in data.items()}
