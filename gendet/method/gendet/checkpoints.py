"""Stage checkpoints: written atomically after every stage, the latest one loaded to resume.

A checkpoint is one ``torch.save`` of plain containers of tensors (network and optimizer state
dicts, torch's RNG state, the small trainer state), so it loads with ``weights_only=True``: no
pickled code is ever run. Files are ``<dir>/stage-<index>.pt``; written through a temporary name
and a rename (``gendet.io``), so a job killed while saving leaves the previous checkpoint intact.
Only the newest ``keep`` files are kept.
"""

from __future__ import annotations

import io
import re
from typing import Any

import torch

from gendet import GendetError
from gendet import io as gio

_NAME = re.compile(r"stage-(\d+)\.pt$")


def checkpoint_url(dir_url: str, index: int) -> str:
    return gio.join(dir_url, f"stage-{index:04d}.pt")


def list_checkpoints(dir_url: str) -> list[str]:
    """Checkpoint URLs under ``dir_url``, oldest first."""
    if not gio.exists(dir_url):
        return []
    return sorted((u for u in gio.glob(dir_url, "stage-*.pt") if _NAME.search(u)),
                  key=lambda u: int(_NAME.search(u).group(1)))


def save_checkpoint(dir_url: str, index: int, payload: dict[str, Any], *, keep: int = 2) -> str:
    """Write ``payload`` as the checkpoint of stage ``index``; prune all but the ``keep`` newest."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    url = checkpoint_url(dir_url, index)
    gio.write_bytes_atomic(url, buffer.getvalue())
    fs, _ = gio.fs_and_path(dir_url)
    for old in list_checkpoints(dir_url)[:-keep]:
        fs.rm(gio.fs_and_path(old)[1])
    return url


def load_checkpoint(url: str) -> dict[str, Any]:
    try:
        return torch.load(io.BytesIO(gio.read_bytes(url)), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        raise GendetError(f"{url}: not a readable gendet checkpoint ({exc}); delete it to resume from the one before") from exc


def load_latest(dir_url: str | None) -> dict[str, Any] | None:
    """The newest checkpoint under ``dir_url``, or None when there is none (a fresh run)."""
    if not dir_url:
        return None
    found = list_checkpoints(dir_url)
    return load_checkpoint(found[-1]) if found else None
