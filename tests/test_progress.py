"""Progress with totals (gendet.progress): tqdm on a terminal, plain log lines in a file."""

from __future__ import annotations

import logging

from gendet import progress as progress_module
from gendet.progress import PlainProgress, progress


def test_off_a_terminal_progress_is_periodic_log_lines_with_totals(caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    clock = iter(range(0, 1000, 10))  # every step 10 s later
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="gendet.progress"):
        bar = progress(total=6, desc="extract", unit="shard", every_s=30)
        assert isinstance(bar, PlainProgress)
        for _ in range(6):
            bar.update(1)
            bar.set_postfix(images=5)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(line.startswith("extract: ") and "/6 shard" in line for line in lines)
    assert "\r" not in "".join(lines) and lines[-1].startswith("extract: 6/6 shard (100%)") and "images=5" in lines[-1]
    assert len(lines) < 6  # periodic, not one per step


def test_short_work_says_nothing_and_iteration_counts(caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="gendet.progress"):
        assert list(progress(range(4), desc="quick")) == [0, 1, 2, 3]
    assert caplog.records == []


def test_on_a_terminal_it_is_tqdm(monkeypatch):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    bar = progress(total=3, desc="x")
    assert type(bar).__module__.startswith("tqdm")
    bar.close()
