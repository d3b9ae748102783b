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
    before = gio.read_json(url)
    changed = sorted(k for k in record if before.get(k) != record[k])
    if changed:
        raise GendetError(f"{url}: the run {name!r} there trained with another {', '.join(changed)}; rerun it as it was "
                          "to resume it, or pass another --name (or --storage) to start a new run")


def write_record(storage: str, name: str, record: Mapping[str, Any], *, filename: str = RUN_RECORD) -> None:
    gio.write_json_atomic(record_url(storage, name, filename), dict(record))
