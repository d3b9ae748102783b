"""Typed jobs: every verb is a frozen dataclass (its fields the verb's flags, with their defaults
and docstrings as help), validated when it is built, before any work, and run by a function that
takes the job as a value. Code composes jobs the same way (``fix`` derives a ``TrainJob`` from the
champion's logged one; ``demo`` builds ``ExtractConfig``, ``TrainJob`` and ``RefreshJob`` values).

The command line is tyro's (dataclass -> argparse, help from the field docstrings). This module
adds what every job shares:

- a nested config marked ``Flat`` gives its fields as top-level flags (``TrainJob.train`` ->
  ``--alpha``); any other nested config keeps its prefix (``--gate.margin``);
- ``tuple[str, ...]`` and ``tuple[int, ...]`` fields take comma lists (``--train-subsets a,b``);
- ``--config FILE``: a JSON or YAML mapping of the job's fields (nested mappings or dotted keys for
  nested configs; positional inputs stay on the command line); ``--set KEY=VALUE``, repeatable:
  any field, applied last; ``--preset NAME`` where the job has presets (applied first); so a value
  comes from, lowest first: the field's default, the preset, the file, the flags, ``--set``;
- ``-v`` / ``-q``: more or less logging (``logging``, to stderr; results go to stdout);
- a ``GendetError`` (bad input, a failed check) is one line, ``gendet: error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import tyro
from tyro import _docstrings
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

from gendet import GendetError
from gendet.config import ConfigError, check_finite, csv_tuple

J = TypeVar("J")
Flat = tyro.conf.OmitArgPrefixes
"""Mark a nested config whose fields are top-level flags: ``train: Annotated[TrainConfig, Flat]``."""
Inputs = tyro.conf.PositionalRequiredArgs
"""Mark a nested config whose required fields are positional arguments (``ExtractConfig``'s SHARDS FEATURES)."""
T = TypeVar("T")
Positional = Annotated[T, tyro.conf.Positional]

log = logging.getLogger("pipelines")
REGISTRY = ConstructorRegistry()
CLI_CONFIG = (tyro.conf.PositionalMetavarFromFieldName,)  # FEATURES, not STR


def _plain(text: Any) -> Any:
    """Help text without reST's ``literal`` markup (the docstrings are also the code's documentation)."""
    return text.replace("``", "") if isinstance(text, str) else text


def _plain_help(get: Callable) -> Callable:
    def field_help(*args: Any, **kwargs: Any) -> Any:
        return _plain(get(*args, **kwargs))

    return field_help


for _name in ("get_field_docstring", "get_callable_description"):  # tyro shows docstrings as written
    if hasattr(_docstrings, _name):
        setattr(_docstrings, _name, _plain_help(getattr(_docstrings, _name)))


@REGISTRY.primitive_rule
def _comma_lists(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """``tuple[str, ...]``/``tuple[int, ...]`` from one comma list (``a,b``; ``''`` is empty): one token,
    so a positional argument after the flag is never taken for an item."""
    args = typing.get_args(info.type)
    if info.type_origin is not tuple or len(args) != 2 or args[1] is not Ellipsis or args[0] not in (str, int):
        return None
    if tyro.conf.UseAppendAction in info.markers or tyro.conf.Positional in info.markers:
        return None  # one item per flag (--grid alpha=0.1,1 --grid margin=1,2) or per argument (paths)
    kind = args[0]

    def parse(items: list[str]) -> tuple:
        try:
            return tuple(kind(t) for item in items for t in csv_tuple(item))
        except ValueError:
            raise ValueError(f"{' '.join(items)!r}: expected comma-separated {kind.__name__}s, e.g. 1,2") from None

    return PrimitiveConstructorSpec(nargs=1, metavar="A,B,...", instance_from_str=parse,
                                    is_instance=lambda x: isinstance(x, tuple),
                                    str_from_instance=lambda x: [",".join(map(str, x))])


@dataclass(frozen=True)
class JobSpec:
    """A verb: its job class, what the command line does with a parsed job (returns the exit code),
    and its presets (name -> field values, applied before ``--config``)."""

    cls: type
    main: Callable[[Any], int]
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    preset_help: str = ""


COMMON_HELP = """\
Every job also takes:
  --config FILE      a JSON or YAML file of the job's fields (over the defaults; flags override it)
  --set KEY=VALUE    any field, repeatable, applied last (e.g. --set alpha=0.5 --set gate.margin=0.01)
  -v, -q             more (debug) or less (warnings only) logging on stderr"""


# --- the job's fields as flags ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    flag: str          # "--alpha", "--gate.margin"; positional and hidden fields: ""
    hint: Any          # the type
    path: tuple[str, ...]
    hidden: bool = False  # tyro.conf.Suppress: set by code (tests), never from the command line


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _strip(hint: Any) -> tuple[Any, tuple]:
    if typing.get_origin(hint) is Annotated:
        return typing.get_args(hint)[0], tuple(hint.__metadata__)
    return hint, ()


def _marked(meta: tuple, marker: Any) -> bool:
    return any(m is marker or m == marker for m in meta)


def job_fields(cls: type, path: tuple[str, ...] = (), shown: tuple[str, ...] = (),
               inherited: tuple = ()) -> dict[str, _Field]:
    """{key: field} of every leaf field of ``cls``, keyed as ``--set`` takes them: the flag's name
    (``alpha``, ``gate.margin``) and the full path (``train.alpha``)."""
    out: dict[str, _Field] = {}
    for f in dataclasses.fields(cls):
        hint, meta = _strip(_hints(cls)[f.name])
        full = (*path, f.name)
        if dataclasses.is_dataclass(hint):
            out.update(job_fields(hint, full, shown if _marked(meta, Flat) else (*shown, f.name), inherited + meta))
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        positional = _marked(meta, tyro.conf.Positional) or (required and _marked(inherited, tyro.conf.PositionalRequiredArgs))
        name = (*shown, f.name)
        hidden = _marked(meta, tyro.conf.Suppress)
        flag = "" if positional or hidden else "--" + ".".join(p.replace("_", "-") for p in name)
        field = _Field(flag=flag, hint=hint, path=full, hidden=hidden)
        out[".".join(name)] = out[".".join(full)] = field
    return out


def _checked(field: _Field, value: Any) -> Any:
    """``value`` (a file's value or a ``--set`` text) as ``field``'s type takes it, or a one-line
    error naming the field (tyro would report a bad flag value in a box of its own)."""
    name, kind = field.flag[2:] or ".".join(field.path), field.hint
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if value is None or (isinstance(value, str) and value == "None" and type(None) in typing.get_args(kind)):
        if type(None) not in typing.get_args(kind):
            raise ConfigError(f"{name}: null; give a value")
        return None
    if typing.get_origin(kind) is not typing.Literal and len(args) == 1 and type(None) in typing.get_args(kind):
        kind = args[0]  # X | None
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        choices = typing.get_args(kind)
        if value not in choices and str(value) not in [str(c) for c in choices]:
            raise ConfigError(f"{name}={value}: choose from {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        items = csv_tuple(value) if isinstance(value, str) else tuple(value)
        inner = typing.get_args(kind)[0]
        return tuple(_checked(_Field(field.flag, inner, field.path), v) for v in items)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{name}={value}: not a boolean; use true or false")
        return text in ("true", "1", "yes")
    if kind in (int, float, str):
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value}: expected a value of type {kind.__name__}") from None
    return value


def _tokens(field: _Field, value: Any) -> list[str]:
    """Command-line tokens that set ``field`` to ``value``, checked (``_checked``)."""
    value = _checked(field, value)
    if isinstance(value, bool) and field.hint is bool:
        head, _, name = field.flag.rpartition(".")
        if head:
            return [f"{head}.{name}" if value else f"{head}.no-{name}"]
        return [field.flag if value else "--no-" + field.flag[2:]]
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    elif value is None:
        value = "None"
    return [field.flag, str(value)]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        key = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def assignment_tokens(cls: type, values: Mapping[str, Any], where: str) -> list[str]:
    """Tokens that set each of ``values`` ({field key: value}); an unknown key is a one-line error."""
    fields = job_fields(cls)
    tokens: list[str] = []
    for key, value in _flatten(values).items():
        key = key.replace("-", "_")
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted({f.flag[2:] for f in fields.values() if f.flag}))
            raise ConfigError(f"{where}: unknown field {key!r}; known: {known}")
        if field.hidden:
            continue
        if not field.flag:
            log.info("%s: %s is a positional argument: give it on the command line", where, key)
            continue
        tokens += _tokens(field, value)
    return tokens


def read_mapping(url: str) -> dict[str, Any]:
    """A JSON or YAML file of field: value (``--config``)."""
    import fsspec

    yaml_file = str(url).endswith((".yaml", ".yml"))
    try:
        with fsspec.open(str(url), "rb") as f:
            text = f.read().decode("utf-8")
        if yaml_file:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"--config {url}: file not found") from None
    except (UnicodeDecodeError, ValueError, Exception) as exc:  # noqa: BLE001 - json, yaml and codecs raise their own
        raise ConfigError(f"--config {url}: not a {'YAML' if yaml_file else 'JSON'} text file "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {url}: expected a mapping of field: value")
    return data


# --- parse and run --------------------------------------------------------------------------------------
def _pre_parser(spec: JobSpec) -> argparse.ArgumentParser:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--set", dest="assignments", action="append", default=[])
    pre.add_argument("-v", "--verbose", action="count", default=0)
    pre.add_argument("-q", "--quiet", action="count", default=0)
    if spec.presets:
        pre.add_argument("--preset", default=None)
    return pre


def description(spec: JobSpec) -> str:
    doc = _plain(inspect.cleandoc(spec.cls.__doc__ or ""))
    parts = [doc]
    if spec.presets:
        parts.append(f"--preset {{{','.join(spec.presets)}}}: {spec.preset_help or 'named field values, applied first'}")
    parts.append(COMMON_HELP)
    return "\n\n".join(parts)


def parse(spec: JobSpec, argv: Sequence[str], prog: str) -> tuple[Any, argparse.Namespace]:
    """(the job the command line describes, the common options); ``--help`` prints and exits."""
    opts, rest = _pre_parser(spec).parse_known_args(list(argv))
    tokens: list[str] = []
    if getattr(opts, "preset", None):
        if opts.preset not in spec.presets:
            raise ConfigError(f"--preset {opts.preset}: unknown; choose from {', '.join(spec.presets)}")
        tokens += assignment_tokens(spec.cls, spec.presets[opts.preset], f"--preset {opts.preset}")
    if opts.config:
        tokens += assignment_tokens(spec.cls, read_mapping(opts.config), f"--config {opts.config}")
    tokens += rest
    for item in opts.assignments:
        key, sep, text = str(item).partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set alpha=0.5")
        tokens += assignment_tokens(spec.cls, {key.strip(): text}, f"--set {item}")
    job = tyro.cli(spec.cls, args=tokens, prog=prog, description=description(spec), registry=REGISTRY,
                   config=CLI_CONFIG)
    check_finite(job)  # every job: --set alpha=inf or a NaN threshold is refused before any work
    return job, opts


def setup_logging(verbose: int = 0, quiet: int = 0) -> None:
    """INFO by default (gendet's and the jobs' messages), DEBUG with -v, WARNING with -q; other
    libraries' INFO only with -vv. One handler on stderr; stdout is for results."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet == 1 else logging.ERROR if quiet > 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose
                                           else "%(message)s", "%H:%M:%S"))
    handler.addFilter(_redact_record)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if verbose > 1 else max(level, logging.WARNING))
    for name in ("gendet", "pipelines", "__main__"):  # __main__: a job run as `python -m pipelines.X`
        logging.getLogger(name).setLevel(level)


def _redact_record(record: logging.LogRecord) -> bool:
    """A log line's URLs without their ``user:pass@`` (a SHARDS or tracking URI may carry one)."""
    from gendet.io import redact

    message = record.getMessage()
    if "@" in message:
        record.msg, record.args = redact(message), None
    return True


def run(spec: JobSpec, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse, validate and run a job from the command line; bad input is one line, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        job, opts = parse(spec, argv, prog or f"python -m {spec.main.__module__}")
        setup_logging(opts.verbose, opts.quiet)
        return int(spec.main(job) or 0)
    except GendetError as exc:
        from gendet.io import redact

        print(f"gendet: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gendet: interrupted", file=sys.stderr)
        return 130


def emit(text: str) -> None:
    """A result for people or pipes (a table, a JSON line): stdout, flushed, URLs without credentials."""
    from gendet.io import redact

    text = redact(text)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def replace(job: J, **changes: Any) -> J:
    """``dataclasses.replace`` (validation runs again)."""
    return dataclasses.replace(job, **changes)
