"""Ray helpers shared by every pipeline: one way to get a Ray to run on.

With ``RAY_ADDRESS`` set (a cluster, or the job a ``ray job submit`` started) the pipeline joins
it. Without it, on a machine where ``ray start`` runs a node (a ``ray up`` head, a worker node) it
joins that node's cluster, as Ray records it (``<RAY_TMPDIR|TMPDIR|/tmp>/ray/ray_current_cluster``,
what ``ray.init(address="auto")`` reads) when its GCS answers; ``RAY_ADDRESS=local`` opts out.
Otherwise it starts a private local Ray on 127.0.0.1, every port of it: on Linux Ray swaps a
127.0.0.1 node address for the machine's reachable one and its gRPC servers then listen on all
interfaces, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (set below, before Ray is imported:
despite its name it is the switch for "this node is alone"; it only refuses ``ray start`` of a
worker node, which a private Ray never runs). The local Ray advertises more logical
CPUs than the machine has cores: on a 2-core box, Data tasks, encoder actors and Train workers
would otherwise wait on each other for CPU slots (the same reason as ``tests/conftest.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from gendet import GendetError
from gendet.progress import on_terminal

log = logging.getLogger(__name__)

LOCAL_CPUS_MIN = 8


def ray_address_file() -> str:
    """Where ``ray start`` records its cluster's GCS address (Ray's own rule for its temp dir)."""
    tmp = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return os.path.join(tmp or "/tmp", "ray", "ray_current_cluster")


def running_node_address(timeout: float = 1.0) -> str | None:
    """The GCS address of the Ray cluster a ``ray start`` node on this machine belongs to, when
    its GCS accepts a connection; None when there is none (never started, or stopped and stale)."""
    try:
        with open(ray_address_file()) as f:
            address = f.read().strip()
        host, _, port = address.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return address
    except (OSError, ValueError):
        return None


def on_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def cluster_address() -> str:
    """The Ray this process joins (``RAY_ADDRESS``); empty: a private local Ray."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return "" if address == "local" else address


# A machine where `ray start` runs a node (a `ray up` head) is on that node's cluster, as if
# RAY_ADDRESS were set (so every check of RAY_ADDRESS agrees); decided before Ray is imported,
# which reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once.
_RUNNING_NODE = None if os.environ.get("RAY_ADDRESS", "").strip() else running_node_address()
JOINED_RUNNING_NODE = _RUNNING_NODE is not None
if _RUNNING_NODE:
    os.environ["RAY_ADDRESS"] = _RUNNING_NODE
# A private Ray, or a cluster on loopback (a one-machine `ray start --node-ip-address 127.0.0.1`):
# this driver's node address must be 127.0.0.1 too, or it waits for a raylet on the machine's IP.
if not cluster_address() or on_loopback(cluster_address()):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def local_num_cpus() -> int:
    return max(LOCAL_CPUS_MIN, 2 * (os.cpu_count() or 1))


def default_read_tasks() -> int | None:
    """Decode tasks at once when ``--read-tasks`` is not given. On a Ray this process starts, the
    logical CPUs above are inflated, and Ray would run that many decoders against the encoder's
    threads on the same few cores (measured on 2 cores, ViT-B-32: 0.66x of a bare loop, 0.87x
    with one decoder; benchmarks/results/extract-*). So: one per physical core but one. On a
    cluster (``RAY_ADDRESS`` set, or a ``ray start`` node here) the nodes' CPU counts are real and
    Ray decides."""
    if cluster_address():
        return None
    return max(1, (os.cpu_count() or 2) - 1)


def require_ray() -> None:
    """A one-line error, not a traceback, when this install has no Ray (``pip install gendet`` is
    the library alone: predict, ``extract --local``, training in Python)."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
        import ray.train  # noqa: F401
    except ImportError as exc:
        raise GendetError(f"this verb runs on Ray, which is not installed here ({exc}); "
                          "pip install 'gendet[ray]' (or run extraction with --local)") from None


def init_ray(*, num_cpus: int | None = None, progress: bool | None = None) -> None:
    """Join ``RAY_ADDRESS`` when set, else the cluster of a ``ray start`` node on this machine, else
    start a private local Ray (no-op when Ray is already up)."""
    require_ray()
    import ray
    import ray.data

    if not ray.is_initialized():
        address = cluster_address()
        if JOINED_RUNNING_NODE and address == _RUNNING_NODE:
            log.info("joining the Ray cluster at %s (this machine runs a `ray start` node: %s); set RAY_ADDRESS=local "
                     "for a private Ray", address, ray_address_file())
        if address.startswith(("http://", "https://")):
            raise GendetError(f"RAY_ADDRESS={address} is a dashboard (job submission) address; submit with "
                              "`ray job submit --address ADDRESS -- python -m pipelines.<name> ...` or set RAY_ADDRESS to "
                              "HOST:6379")
        if address:
            ray.init(address=address, configure_logging=False)
        else:
            if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
                log.warning("the local Ray may listen beyond 127.0.0.1 (Ray was imported before pipelines._ray, or "
                            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is set)")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline by default: no usage ping
            ray.init(address="local", num_cpus=num_cpus or local_num_cpus(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", configure_logging=False)
    # Bars on a terminal; elsewhere (ray job logs, a pod's log) Ray Data logs plain progress lines itself
    ray.data.DataContext.get_current().enable_progress_bars = on_terminal() if progress is None else progress


def check_feasible(per_unit: dict[str, float], count: int, what: str, flags: str) -> None:
    """Before Ray waits on a request no node can hold (it would wait forever): ``count`` units of
    ``per_unit`` resources ({"CPU": 64} per train worker, {"GPU": 1} per encoder actor) need one
    node holding a whole unit and, together, enough of each resource. A private local Ray cannot
    grow: a one-line error naming ``flags``. A joined cluster may (its autoscaler adds nodes): a
    warning, and Ray waits."""
    import ray

    wanted = {k: float(v) for k, v in per_unit.items() if v}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in wanted}
    fits_a_node = any(all(n.get(k, 0.0) >= v for k, v in wanted.items()) for n in nodes)
    short = {k: v * count for k, v in wanted.items() if total[k] < v * count}
    if fits_a_node and not short:
        return
    have = ", ".join(f"{k} {total[k]:g}" for k in wanted)
    need = ", ".join(f"{k} {v:g}" for k, v in wanted.items())
    problem = (f"{what} need {need} each ({count} of them) but this Ray has {have} in all"
               f"{'' if fits_a_node else ', and no node holds one'}")
    if not cluster_address():
        raise GendetError(f"{problem}; Ray would wait forever: lower {flags}, or run on a cluster that has them")
    log.warning("%s; Ray waits until the cluster's autoscaler adds them (if it has none, this waits forever: stop "
                "and lower %s)", problem, flags)

