"""fsspec helpers written once: every path or URL in gendet goes through these.

Writes are atomic: locally the bytes go to a temporary name beside the target and are moved into
place, on object stores (s3, gs, ...) one PUT writes the whole object, so a job killed at any
moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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


def absolute(url: str) -> str:
    """A local path made absolute, a URL (``scheme://``) as it is: what a process elsewhere (a Ray
    worker on another node or in another working directory) can still open."""
    url = str(url)
    return url if "://" in url else os.path.abspath(url)


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


# scheme://user[:password]@host: what precedes the @ is a credential (RFC 3986 userinfo)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")


def redact(text: str) -> str:
    """``text`` with every URL's userinfo (``user:pass@``) replaced by ``***@``: for everything
    gendet writes down or prints (stats, summaries, MLflow, logs, errors)."""
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


def redacted(obj: Any) -> Any:
    """A JSON-like value with ``redact`` applied to every string in it (keys included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redacted(k): redacted(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redacted(v) for v in obj]
    return obj


MAX_NUMBER_CHARS = 40  # digits of one JSON number (Python refuses ints over 4300 digits, slowly)


def _json_depth(text: str, limit: int) -> int:
    """How deep ``text``'s arrays and objects nest, counting to ``limit + 1`` at most (no recursion:
    Python's own parser recurses, and a 200k-deep document is a RecursionError)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def _bounded_number(kind: type):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise ValueError(f"a number of {len(text)} characters")
        return kind(text)

    return parse


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def loads_json(data: bytes, *, max_bytes: int | None = None, max_depth: int = 64) -> Any:
    """JSON from untrusted bytes, bounded: at most ``max_bytes``, ``max_depth`` deep, numbers of at
    most ``MAX_NUMBER_CHARS`` characters, no NaN or Infinity. Anything else is a ``ValueError``
    saying what (never a RecursionError, never minutes in int())."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes, over {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if text.count("[") + text.count("{") > max_depth and _json_depth(text, max_depth) > max_depth:
        raise ValueError(f"nested deeper than {max_depth}")
    try:
        return json.loads(text, parse_int=_bounded_number(int), parse_float=_bounded_number(float),
                          parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth}") from None


def read_json(url: str, *, max_bytes: int | None = None) -> Any:
    """The JSON at ``url``, parsed bounded (``loads_json``): a ``ValueError`` when it is not valid."""
    return loads_json(read_bytes(url), max_bytes=max_bytes)


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


# --- preflight: where a job's inputs and outputs live, checked before any work -----------------------
SHARED_FS_ENV = "GENDET_SHARED_FS"
_NODE_LOCAL_PROTOCOLS = {"file", "local", "memory"}


def is_node_local(url: str) -> bool:
    """Whether ``url`` names this machine's own storage (a path, ``file://``, ``memory://``)."""
    from fsspec.utils import get_protocol

    return get_protocol(str(url).split("::")[-1]) in _NODE_LOCAL_PROTOCOLS


def on_cluster() -> bool:
    """Whether this process joins a Ray cluster (``RAY_ADDRESS`` set, as ``ray job submit`` sets it)."""
    return os.environ.get("RAY_ADDRESS", "").strip() not in ("", "local")


def require_reachable(url: str, what: str, flag_hint: str = "--shared-fs", *, shared: bool = False) -> None:
    """Refuse, in one line, a node-local ``url`` for something every node of a Ray cluster reads
    or writes (features, checkpoints, detectors) when ``RAY_ADDRESS`` is set: another node would
    read an empty folder or write where nobody looks. ``shared`` (the verb's ``flag_hint`` flag)
    or ``GENDET_SHARED_FS=1`` says the path is a mount every node sees at the same place (NFS)."""
    if not on_cluster() or not is_node_local(url):
        return
    if shared or os.environ.get(SHARED_FS_ENV, "").strip().lower() in ("1", "true", "yes"):
        return
    raise GendetError(f"{what} {url}: a path on this node's disk, but RAY_ADDRESS={os.environ['RAY_ADDRESS'].strip()} "
                      "is a cluster whose other nodes do not see it; use a URL every node reaches (s3://..., gs://...), "
                      f"or pass {flag_hint} (or set {SHARED_FS_ENV}=1) if it is a mount every node shares (NFS)")


def check_writable(url: str, what: str) -> None:
    """Write and delete a small probe object under the folder ``url`` (created when local), so a
    missing bucket, wrong credentials or a read-only disk fail now, naming ``url``, not after the work."""
    from gendet import first_line

    fs, path = fs_and_path(url)
    probe = path.rstrip("/") + f"/.gendet-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        if is_local(fs):
            os.makedirs(path, exist_ok=True)
        fs.pipe_file(probe, b"gendet")
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - each backend raises its own types (PermissionError, ClientError, ...)
        raise GendetError(f"{what} {url}: cannot write here ({first_line(exc, 200)}); give a {what} location this job can "
                          "write to (check the path, the bucket, the credentials)") from None
