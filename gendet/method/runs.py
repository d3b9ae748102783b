"""A training run's record: what it trains, written beside its checkpoints, so that a rerun under
the same name resumes only the same run.

Ray Train resumes a run from ``<storage>/<name>/`` whatever the new command asks for; a rerun that
changed the config, the rows or the classes would continue training another model on that
checkpoint. ``check_resumable`` refuses it, before any work, naming what changed and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gendet import GendetError
from gendet import io as gio

RUN_RECORD = "gendet-run.json"


def record_url(storage: str, name: str, record: str = RUN_RECORD) -> str:
    return gio.join(storage, name, record)


def check_resumable(storage: str, name: str, record: Mapping[str, Any], *, filename: str = RUN_RECORD) -> None:
    """Refuse a rerun of ``name`` under ``storage`` whose ``record`` differs from the one there."""
    url = record_url(storage, name, filename)
    if not gio.exists(url):
        return
    record = gio.redacted(record)  # as written
    try:
        before = gio.read_json(url)
    except (ValueError, OSError):
        before = None
    if not isinstance(before, dict):
        raise GendetError(f"{url}: not a run record this gendet reads; pass another --name (or --storage) to start a new "
                          "run, or delete that folder")
    changed = _changed(before, record)
    if changed:
        raise GendetError(f"{url}: the run {name!r} there trained with another {', '.join(changed)}; rerun it as it was "
                          "to resume it, or pass another --name (or --storage) to start a new run")


def _changed(before: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names whose values differ (``train_config.alpha``), into nested objects."""
    out: list[str] = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += _changed(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(prefix + key)
    return out


def write_record(storage: str, name: str, record: Mapping[str, Any], *, filename: str = RUN_RECORD) -> None:
    gio.write_json_atomic(record_url(storage, name, filename), gio.redacted(dict(record)))
