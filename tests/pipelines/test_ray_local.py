"""The private local Ray a pipeline starts (no RAY_ADDRESS) listens on 127.0.0.1 only: every port
of every process it starts (GCS, raylet, workers, agents), read from ``ss -tlnp``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers.listeners import beyond_loopback, listening

SCRIPT = """
import sys
from pipelines._ray import init_ray
import ray
init_ray(progress=False)

@ray.remote
class Echo:
    def ping(self):
        return 1

@ray.remote
def task():
    return 1

assert ray.get(task.remote()) == 1 and ray.get(Echo.remote().ping.remote()) == 1
print("READY", flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        seen = listening(proc.pid)
        assert len(seen) >= 5, seen  # GCS, raylet (2), workers, agents: the check saw them
        assert beyond_loopback(seen) == {}, f"listening beyond 127.0.0.1: {beyond_loopback(seen)}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


# --- a machine where `ray start` runs a node (a `ray up` head): the pipeline joins it ----------------

JOIN = """
import os
from pipelines._jobs import setup_logging
from pipelines._ray import JOINED_RUNNING_NODE, init_ray
setup_logging()  # as every job does: its INFO lines on stderr
init_ray(progress=False)
import ray
print("JOINED", JOINED_RUNNING_NODE, ray.get_runtime_context().gcs_address, os.environ.get("RAY_ADDRESS"), flush=True)
ray.shutdown()
"""


def head_gcs_address(dashboard: str, env: dict) -> str:
    """The GCS address of the fixture's head, as a job submitted to it sees it (RAY_ADDRESS)."""
    job = subprocess.run(["ray", "job", "submit", "--address", dashboard, "--", sys.executable, "-c",
                          "import os; print('GCS=' + os.environ['RAY_ADDRESS'])"],
                         env=env, capture_output=True, text=True, timeout=300)
    found = re.search(r"GCS=(\d[\d.]*:\d+)", job.stdout)  # not the echoed command line
    assert found, job.stdout[-2000:] + job.stderr[-2000:]
    return found.group(1)


def test_without_ray_address_a_running_ray_start_node_is_joined(ray_head):
    import tempfile

    dashboard, env = ray_head
    gcs = head_gcs_address(dashboard, env)
    # `ray start` records its cluster in <RAY_TMPDIR|TMPDIR|/tmp>/ray/ray_current_cluster (a `ray up` head:
    # /tmp/ray); the fixture's head has its own --temp-dir, so the test writes what the default one would hold
    tmp = tempfile.mkdtemp(prefix="gdj", dir="/tmp")
    try:
        os.makedirs(os.path.join(tmp, "ray"))
        with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
            f.write(gcs)
        run_env = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        run = subprocess.run([sys.executable, "-c", JOIN], env={**run_env, "RAY_TMPDIR": tmp}, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        joined = next(line.split() for line in run.stdout.splitlines() if line.startswith("JOINED"))
        assert joined == ["JOINED", "True", gcs, gcs], (gcs, run.stderr[-2000:])  # RAY_ADDRESS agrees for every check
        assert f"joining the Ray cluster at {gcs}" in run.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_stale_record_or_ray_address_local_means_a_private_ray(tmp_path, monkeypatch):
    import socket

    from pipelines import _ray

    with socket.socket() as s:  # a port nobody listens on: the node that wrote the record is gone
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{closed}")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert _ray.ray_address_file() == str(tmp_path / "ray" / "ray_current_cluster")
    assert _ray.running_node_address(timeout=0.5) is None
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert _ray.cluster_address() == "" and _ray.default_read_tasks() is not None


def test_ray_data_filters_take_names_with_quotes_and_spaces(ray_local, tmp_path):
    """Filters are Ray Data expressions (col(...).is_in), never text: a quote in a name cannot break one.
    (pipelines.evaluate filters shards and splits with the same col(...).is_in.)"""
    from gendet.features.store import resolve_variant
    from gendet.method.gendet.config import TrainConfig
    from helpers.synthetic_store import write_synthetic_store
    from pipelines.train import build_datasets

    subsets = {"it's \"sd\" v1.4": 2.0, "mid journey') or ('1'='1": 1.2}
    write_synthetic_store(str(tmp_path), dim=16, per_split={"train it's": 12, "val": 6}, subsets=subsets)
    cfg = TrainConfig(train_subsets=(next(iter(subsets)),), train_splits=("train it's",), calibration_split="val")
    datasets = build_datasets(resolve_variant(str(tmp_path)).url, cfg)
    assert datasets["fake"].count() == 6  # of 36 rows: one subset, one split, one label


def test_requests_no_node_can_hold_fail_in_one_line_instead_of_waiting(ray_local, tmp_path, capsys):
    """A private local Ray cannot grow: more CPUs per worker than it has, or a GPU it lacks, is
    refused before Ray Train or Ray Data would wait for them forever."""
    from gendet.extract.config import ExtractConfig
    from helpers.bad_shards import write_good_shards
    from helpers.cli import run_cli
    from helpers.synthetic_store import write_synthetic_store
    from pipelines import extract as extract_pipeline
    from pipelines import train as train_pipeline

    write_synthetic_store(str(tmp_path / "store"))
    code = run_cli(train_pipeline, [tmp_path / "store", "--train-subsets", "seen", "--out", tmp_path / "out", "--preset",
                                    "debug", "--num-workers", "1", "--cpus-per-worker", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("gendet: error: Ray Train workers need CPU 64 each"), err
    assert "lower --num-workers / --cpus-per-worker" in err[-1]

    write_good_shards(str(tmp_path / "shards"), "good", n_shards=1, per_shard=2)
    cfg = ExtractConfig(encoder="spectrum:v1", shards=str(tmp_path / "shards"), features=str(tmp_path / "features"),
                        num_gpus=1)
    with pytest.raises(Exception, match="encoder actors need CPU .* GPU 1 each .* no node holds one"):
        extract_pipeline.extract(cfg)
    assert not list((tmp_path / "features").rglob("*.parquet"))
