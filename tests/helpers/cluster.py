"""The multi-node local Ray the cluster tests start: ``benchmarks/cluster_harness.py`` (one copy, shared with the benchmarks)."""
from benchmarks.cluster_harness import *  # noqa: F401,F403
from benchmarks.cluster_harness import job_logs, job_status, nodes_running, ray_cli, start_cluster, wait_accepts_jobs, wait_job  # noqa: F401
