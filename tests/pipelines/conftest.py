"""Every test here runs a Ray job (a local Ray, a `ray start` cluster or `ray job submit`): they are
the slow lane (`pytest -m "not slow"` leaves them out; CI runs them)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/pipelines/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
