"""The private local Ray a pipeline starts (no RAY_ADDRESS) listens on 127.0.0.1 only: every port
of every process it starts (GCS, raylet, workers, agents), read from ``ss -tlnp``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

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


def descendants(root: int) -> set[int]:
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


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        ours = descendants(proc.pid)
        listening = []
        for line in subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
            fields = line.split()
            pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
            if pids & ours:
                listening.append(fields[3])
        assert len(listening) >= 5, listening  # GCS, raylet (2), workers, agents: the check saw them
        outside = [a for a in listening if not a.rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1")]
        assert outside == [], f"listening beyond 127.0.0.1: {outside}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
