"""A real multi-node Ray on one machine: ``ray start --head --num-cpus 0`` plus one ``ray start
--address`` per worker node, each worker with a custom resource (``node_<name>``) that pins work to
it, every port on 127.0.0.1 and token auth on, as the developer guide asks. A worker node is lost
the way a machine is lost: its whole process group (raylet, object store, workers) gets SIGKILL.

Ray refuses ``ray start --address`` while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the switch that
keeps a node's servers on loopback; see pipelines/_ray.py). The switch must stay 0 in the node's
processes, so only the CLI's own check is turned off, inside the ``ray start`` process (which must
then also keep 127.0.0.1 as the node's address instead of swapping in the machine's).

One copy for both users: ``benchmarks.extract_cluster`` and the cluster tests (``tests/helpers/cluster.py``
re-exports it); it imports nothing from either.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

RAY_START = ("import sys, ray._private.ray_constants as c, ray._private.services as s; c.ENABLE_RAY_CLUSTER = True; "
             "s.resolve_ip_for_localhost = lambda host: host; s.get_node_ip_address = lambda address=None: '127.0.0.1'; "
             "from ray.scripts.scripts import main; sys.argv = ['ray', 'start', *sys.argv[1:]]; main()")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    env: dict
    temp_dir: str
    gcs: str = ""
    dashboard: str = ""
    metrics_ports: dict = field(default_factory=dict)
    procs: dict = field(default_factory=dict)

    def _start(self, name: str, args: list[str]) -> None:
        metrics = _free_port()
        cmd = [sys.executable, "-c", RAY_START, "--block", "--node-ip-address", "127.0.0.1",
               "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
               "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(metrics), *args]
        log = open(os.path.join(self.temp_dir, f"{name}.log"), "wb")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.metrics_ports[name] = metrics

    def start_head(self) -> None:
        port, dash = _free_port(), _free_port()
        self._start("head", ["--head", "--num-cpus", "0", "--port", str(port), "--include-dashboard", "true",
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                             "--ray-client-server-port", str(_free_port()), "--temp-dir", self.temp_dir])
        self.gcs, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"

    def start_worker(self, name: str, cpus: int = 2) -> None:
        self._start(name, ["--address", self.gcs, "--num-cpus", str(cpus),
                           "--resources", json.dumps({f"node_{name}": 1})])

    def alive_workers(self) -> int:
        """Worker nodes the GCS counts as alive (asked through the CLI, like an operator would)."""
        out = subprocess.run(["ray", "list", "nodes", "--address", self.gcs, "--format", "json", "--limit", "100"],
                             env=self.env, capture_output=True, text=True, timeout=60)
        nodes = json.loads(out.stdout or "[]")
        return sum(1 for n in nodes if n.get("state") == "ALIVE" and not n.get("is_head_node"))

    def log_tail(self, name: str, chars: int = 1500) -> str:
        try:
            with open(os.path.join(self.temp_dir, f"{name}.log"), "rb") as f:
                return f.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_workers(self, n: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"ray start of {name} exited with {proc.returncode}: {self.log_tail(name)}"
            try:
                if self.alive_workers() >= n:
                    return
            except (subprocess.TimeoutExpired, json.JSONDecodeError):
                pass
            time.sleep(1)
        raise AssertionError(f"fewer than {n} Ray worker nodes alive after {timeout:.0f} s")

    def kill(self, name: str) -> None:
        """Lose a node: SIGKILL its raylet, object store and workers at once (its process group)."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "head"] + ["head"]:
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def cluster_env(extra: dict | None = None) -> dict:
    # The cluster's own token, given to every node and client in the environment (never ~/.ray).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "CUDA_VISIBLE_DEVICES": "", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(extra or {})}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env


def start_cluster(workers: tuple[str, ...] = ("w1", "w2"), cpus: int = 2, extra_env: dict | None = None) -> LocalCluster:
    cluster = LocalCluster(env=cluster_env(extra_env), temp_dir=tempfile.mkdtemp(prefix="gdmn", dir="/tmp"))
    try:
        cluster.start_head()
        for n, name in enumerate(workers, 1):  # one at a time: a raylet has 30 s to register (Ray's constant)
            for attempt in range(3):  # on loaded cores a registration can miss it: start the node again
                cluster.start_worker(name, cpus)
                try:
                    cluster.wait_workers(n)
                    break
                except AssertionError:
                    if attempt == 2 or cluster.procs[name].poll() is None:
                        raise
                    cluster.procs.pop(name)
        return cluster
    except BaseException:
        cluster.stop()
        raise


def ray_cli(cluster: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", *args], env=cluster.env, capture_output=True, text=True, timeout=timeout)


def state_api(cluster: LocalCluster, what: str, **filters: str) -> list[dict]:
    """Rows of the dashboard's state API (``/api/v0/actors``, ``/api/v0/nodes``) over HTTP with the
    cluster's token: ~0.1 s, where each ``ray list`` CLI call costs seconds of start-up."""
    import urllib.parse
    import urllib.request

    query = {"detail": "1", "limit": "1000"}
    for i, (key, value) in enumerate(filters.items()):
        query.update({"filter_keys": key, "filter_predicates": "=", "filter_values": value} if i == 0 else {})
    request = urllib.request.Request(f"{cluster.dashboard}/api/v0/{what}?{urllib.parse.urlencode(query)}",
                                     headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        body = json.loads(resp.read())
    data = body.get("data", {}).get("result", {})
    return data.get("result", []) if isinstance(data, dict) else data


def node_names(cluster: LocalCluster) -> dict[str, str]:
    """{Ray node id: our worker name}, from each node's pinning resource."""
    names = {}
    for node in state_api(cluster, "nodes"):
        for resource in (node.get("resources_total") or {}):
            if resource.startswith("node_"):
                names[node["node_id"]] = resource[len("node_"):]
    return names


def nodes_running(cluster: LocalCluster, class_part: str) -> list[str]:
    """Worker names of the nodes where an alive actor whose class name contains ``class_part`` runs."""
    names = node_names(cluster)
    return sorted({names.get(a.get("node_id") or "", "?") for a in state_api(cluster, "actors", state="ALIVE")
                   if class_part in (a.get("class_name") or "")})


def job_status(cluster: LocalCluster, job_id: str) -> str:
    out = ray_cli(cluster, "job", "status", "--address", cluster.dashboard, job_id)
    for status in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
        if status.lower() in out.stdout.lower():
            return status
    return "UNKNOWN"


def wait_job(cluster: LocalCluster, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        status = job_status(cluster, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    return status


def job_logs(cluster: LocalCluster, job_id: str) -> str:
    return ray_cli(cluster, "job", "logs", "--address", cluster.dashboard, job_id).stdout


def wait_accepts_jobs(cluster: LocalCluster, timeout: float = 240) -> None:
    """The dashboard answers before the head's job agent has registered: submit a trivial job until
    one runs (any other error fails at once)."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        probe = ray_cli(cluster, "job", "submit", "--address", cluster.dashboard, "--", "python", "-c", "pass")
        if probe.returncode == 0:
            return
        last = (probe.stdout + probe.stderr)[-800:]
        if "No available agent" not in last and "Connection" not in last:
            break
        time.sleep(2)
    raise AssertionError(f"the Ray cluster at {cluster.dashboard} accepts no job: {last}")
