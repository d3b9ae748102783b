"""Progress of long work, with totals: a tqdm bar on a terminal, plain log lines elsewhere.

A bar redraws itself with ``\\r``; in a file (``ray job logs``, a Kubernetes pod's log, CI) those
redraws pile up into one line of megabytes. So when stderr is not a terminal, progress is a line
through ``logging`` at most every ``every_s`` seconds, and one when work that took that long ends::

    extract: 12/40 shard (30%), 0.8 shard/s, images=3072 failed=0

tqdm has no such mode, so this small class is written here; on a terminal it is tqdm itself.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("gendet.progress")
EVERY_S = 30.0


def on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class PlainProgress:
    """The subset of tqdm's interface gendet uses (``update``, ``set_postfix``, iteration, ``close``,
    a context manager), as periodic log lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 every_s: float = EVERY_S, **_: Any):
        self.iterable, self.desc, self.unit, self.every_s = iterable, desc, unit, every_s
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.postfix = total, 0, ""
        self.started = self.last = time.monotonic()
        self.closed, self.logged = False, False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last, self.logged = now, True
            log.info(self.line())

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f"{self.n / elapsed:.3g} {self.unit}/s"
        return f"{self.desc}: {done} {self.unit}{share}, {rate}, {elapsed:.0f} s" + (f", {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        """The last line, when the work took long enough to have had periodic ones (short steps say nothing)."""
        if not self.closed:
            self.closed = True
            if self.logged or time.monotonic() - self.started >= self.every_s:
                log.info(self.line())


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             leave: bool = True, every_s: float = EVERY_S, disable: bool = False) -> Any:
    """A progress display over ``iterable`` (or driven by ``update``) with ``total`` steps: tqdm on a
    terminal, ``PlainProgress`` lines otherwise; ``disable``: neither."""
    if disable:
        from tqdm import tqdm

        return tqdm(iterable, total=total, disable=True)
    if on_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, every_s=every_s)
