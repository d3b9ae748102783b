"""fsspec helpers written once: every path or URL in gendet goes through these.

Writes are atomic: locally the bytes go to a temporary name beside the target and are moved into
place, on object stores (s3, gs, ...) one PUT writes the whole object, so a job killed at any
moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from gendet import GendetError


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or any fsspec URL."""
    try:
        return url_to_fs(str(url))
    except (ImportError, ValueError) as exc:  # unknown protocol or missing backend package
        raise GendetError(f"{url}: cannot open this URL ({exc}); install the fsspec backend for its protocol") from exc


def join(url: str, *parts: str) -> str:
    url = str(url).rstrip("/")
    return "/".join([url, *[p.strip("/") for p in parts]])


def basename(url: str) -> str:
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = fs_and_path(url)
    fs.makedirs(path, exist_ok=True)


def read_bytes(url: str) -> bytes:
    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` whole or not at all: locally through a temporary sibling and a
    rename; on an object store with one ``pipe_file`` (a PUT is atomic there, and a temporary
    object plus ``mv`` would be a copy and a delete)."""
    fs, path = fs_and_path(url)
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url).decode("utf-8"))


def write_json_atomic(url: str, obj: Any) -> None:
    write_bytes_atomic(url, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def glob(url: str, pattern: str) -> list[str]:
    """Sorted full URLs (plain paths when local) under ``url`` matching ``pattern`` (e.g. ``*.tar``)."""
    fs, path = fs_and_path(url)
    hits = fs.glob(path.rstrip("/") + "/" + pattern)
    return sorted(h if is_local(fs) else fs.unstrip_protocol(h) for h in hits)


# What identifies one version of a file, by filesystem: an object store's ETag or generation where
# there is one, else the modification time. (With the size, a rewritten shard is told from the one
# that was read.)
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "updated", "last_modified")


def fingerprint(info: dict[str, Any]) -> dict[str, Any]:
    """{"size", "version"} of one ``fs.info``/``fs.ls(detail=True)`` entry."""
    version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) not in (None, "")), "")
    return {"size": int(info.get("size") or 0), "version": version}


def fingerprints(urls: list[str]) -> dict[str, dict[str, Any]]:
    """{url: fingerprint} of existing files, one listing per folder (not one request per file);
    files that are not there are left out."""
    by_parent: dict[str, list[str]] = {}
    for url in urls:
        by_parent.setdefault(str(url).rstrip("/").rsplit("/", 1)[0], []).append(url)
    out: dict[str, dict[str, Any]] = {}
    for parent, members in by_parent.items():
        fs, path = fs_and_path(parent)
        try:
            listing = {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: e for e in fs.ls(path, detail=True)}
        except FileNotFoundError:
            continue
        for url in members:
            entry = listing.get(basename(url))
            if entry is not None and entry.get("type", "file") == "file":
                out[url] = fingerprint(entry)
    return out
