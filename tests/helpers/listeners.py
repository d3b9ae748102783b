"""Which addresses a process tree listens on, read from ``ss -tlnp`` (the loopback tests)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from contextlib import contextmanager


def descendants(root: int) -> set[int]:
    """``root`` and every process below it, from /proc."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    out, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in out]
        out.update(kids)
        frontier.extend(kids)
    return out


def process_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:80]
    except OSError:
        return "?"


def listening(root: int) -> dict[str, str]:
    """{address: process title} of every TCP listener of ``root``'s process tree, now."""
    ours = descendants(root)
    found = {}
    for line in subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        for pid in {int(p) for p in re.findall(r"pid=(\d+)", line)} & ours:
            found.setdefault(line.split()[3], process_title(pid))
    return found


def beyond_loopback(seen: dict[str, str]) -> dict[str, str]:
    return {a: t for a, t in seen.items() if not a.rsplit(":", 1)[0].strip("[]").endswith(("127.0.0.1", "::1"))}


@contextmanager
def listeners_while(root: int, every: float = 0.2):
    """Sample ``listening(root)`` in a thread for the duration of the block; yields the dict it
    fills ({address: title}, every listener seen at any sample)."""
    seen: dict[str, str] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for address, title in listening(root).items():
                seen.setdefault(address, title)
            time.sleep(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=10)
