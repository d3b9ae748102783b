"""A lease on one variant folder of the store, so two extractions never write it at once.

``<variant>/_lease.json`` holds the owner (host, pid, a random token) and an expiry. It is created
with an exclusive create (locally a hard link of a file written aside, so a reader never sees half a
lease; a conditional PUT, ``If-None-Match: *``,
through fsspec's ``pipe_file(mode="create")`` on s3) and read back, so of two runs starting together
one gets it. A thread renews it while the run works; a run that dies stops renewing, and its lease
expires after ``ttl`` seconds, so a crash never blocks the store for good; on the same machine a
lease whose process is gone is taken over at once (a killed run, rerun by hand, resumes without
waiting). A second run is refused in one line that names the owner and when the lease runs out.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from gendet import GendetError
from gendet import io as gio

LEASE = "_lease.json"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _owner_gone(held: dict[str, Any]) -> bool:
    """True when the lease's owner ran on this machine and its process no longer exists."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    if held["pid"] == os.getpid():
        return False  # this process (another thread's run): alive
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    return False


class StoreLease:
    """``with StoreLease(variant_url): ...`` holds the variant folder for the block."""

    def __init__(self, variant_url: str, *, ttl: float = 120.0, what: str = "gendet extract"):
        self.url = gio.join(variant_url, LEASE)
        self.ttl, self.token = float(ttl), uuid.uuid4().hex
        self.owner = f"{what} on {socket.gethostname()} pid {os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = ""

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "renewed_at": _iso(now),
                           "expires": now + self.ttl, "expires_at": _iso(now + self.ttl)}).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(gio.read_bytes(self.url))
        except FileNotFoundError:
            return None
        except ValueError:  # a half-written or foreign file: treat as expired
            return {"expires": 0}

    def _create(self) -> bool:
        fs, path = gio.fs_and_path(self.url)
        try:
            if gio.is_local(fs):  # whole or absent: written aside, then linked in (fails if the lease exists)
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                tmp = f"{path}.{self.token}.tmp"
                with open(tmp, "wb") as f:
                    f.write(self._body())
                try:
                    os.link(tmp, path)
                finally:
                    os.remove(tmp)
            else:
                fs.pipe_file(path, self._body(), mode="create")
        except FileExistsError:
            return False
        held = self._read()
        return bool(held) and held.get("token") == self.token

    def acquire(self) -> StoreLease:
        for _ in range(3):
            if self._create():
                self._thread = threading.Thread(target=self._renew, name="gendet-lease", daemon=True)
                self._thread.start()
                return self
            held = self._read()
            if held and float(held.get("expires", 0)) > time.time() and not _owner_gone(held):
                raise GendetError(f"{self.url}: the store is being written by {held.get('owner', 'another run')} "
                                  f"(lease until {held.get('expires_at', '?')}); wait for that run to finish, or, if it "
                                  "died, wait for the lease to expire and run again")
            fs, path = gio.fs_and_path(self.url)  # expired: its owner stopped renewing; take over
            try:
                fs.rm(path)
            except FileNotFoundError:
                pass
        raise GendetError(f"{self.url}: could not take the store's lease (another run keeps taking it); run again")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            held = self._read()
            if not held or held.get("token") != self.token:
                self.lost = f"{self.url}: the lease was taken by {(held or {}).get('owner', 'nobody')}"
                return
            try:
                gio.write_bytes_atomic(self.url, self._body())
            except OSError:  # a storage hiccup: the next renewal tries again before expiry
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        held = self._read()
        if held and held.get("token") == self.token:
            fs, path = gio.fs_and_path(self.url)
            fs.rm(path)

    def __enter__(self) -> StoreLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
