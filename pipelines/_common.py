"""What several jobs share: Ray Train's resources, and the checks of inputs and outputs that run
before any work (one function each)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gendet import io as gio
from gendet.config import check


@dataclass(frozen=True, kw_only=True, slots=True)
class Workers:
    """Ray Train's workers: how many, on what, and how failures are handled."""

    num_workers: int = 1
    """Ray Train workers (DDP when > 1)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: float = 1.0
    """Logical CPUs per worker (fractions allowed)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Where Ray Train places its workers (SPREAD: across nodes, so a lost node stops one worker)."""
    max_failures: int = 2
    """Worker failures Ray Train recovers from (each restarts from the last checkpoint)."""

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, f"--num-workers {self.num_workers}: must be >= 1")
        check(self.cpus_per_worker > 0, f"--cpus-per-worker {self.cpus_per_worker}: must be > 0")
        check(self.max_failures >= 0, f"--max-failures {self.max_failures}: must be >= 0")

    def check_feasible(self) -> None:
        """On a running Ray: refuse (a private one) or warn (a cluster) before Ray Train waits for
        workers no node can hold."""
        from pipelines._ray import check_feasible

        flags = "--num-workers / --cpus-per-worker" + (" / --use-gpu" if self.use_gpu else "")
        check_feasible({"CPU": self.cpus_per_worker, "GPU": 1.0 if self.use_gpu else 0.0}, self.num_workers,
                       "Ray Train workers", flags)


def storage_url(out: str, storage: str | None) -> str:
    """Ray's checkpoint storage: ``storage``, else ``OUT/ray_results``; local paths made absolute."""
    return gio.absolute(storage or gio.join(gio.absolute(out), "ray_results"))


def check_reachable(paths: Mapping[str, str], *, shared_fs: bool) -> None:
    """With ``RAY_ADDRESS`` set, every path is a URL every node reaches (s3://, gs://) unless
    ``--shared-fs`` says local paths are a mount every node sees; {what: url}."""
    for what, url in paths.items():
        gio.require_reachable(url, what, "--shared-fs", shared=shared_fs)


def check_outputs(outputs: Mapping[str, str], *, tracking_dir: str | None = None) -> str | None:
    """Before any work: the MLflow store answers (``tracking_dir``: where its SQLite default would
    live; a remote one needs a tracking server), and every output {what: url} can be written.
    Returns the tracking URI (None when the job logs nothing)."""
    from gendet.mlops import tracking

    uri = tracking.check_tracking(tracking_dir) if tracking_dir is not None else None
    for what, url in outputs.items():
        gio.check_writable(url, what)
    return uri
