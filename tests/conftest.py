"""Shared test fixtures. Everything is real: a local Ray, real tar shards, real Parquet.

Tests run on CPU only (``CUDA_VISIBLE_DEVICES=""``) and never touch the network.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import pytest

# Ray on 2 cores: Train workers and Data tasks compete for CPUs and can wait on each other forever,
# so the test cluster advertises more logical CPUs than the machine has cores.
RAY_TEST_CPUS = 8


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (127.0.0.1, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=RAY_TEST_CPUS, include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()
