"""The refresh verdict as Prometheus metrics, exported by Ray's metrics agent.

``ray job submit`` exits 1 for any failed job, so an exit code cannot tell "a generator slipped"
from a crash; the team's alerting reads these gauges instead (``cluster/prometheus-rules.yaml``).
Ray exports application metrics with the prefix ``ray_`` on every node's metrics port (``ray
start --metrics-export-port P`` serves them at ``http://NODE:P/metrics``):

- ``gendet_refresh_alert{model, version}``: 1 when a subset's latest verdict by that model
  version is a slip, else 0 (0 as well for a model's older versions once a newer one is judged);
- ``gendet_refresh_subset_slipped{model, version, subset}``: the same, per subset;
- ``gendet_refresh_fake_caught{model, version, subset}``: the share of the subset's fakes caught
  at the calibrated threshold;
- ``gendet_refresh_last_run_timestamp_seconds{model}``: when a refresh of that model last finished.

A gauge set in a job's driver is gone soon after the job exits (Ray ages out the series of a
dead worker), usually before Prometheus scrapes it. So the values live in a small detached named
actor on the head node that every refresh creates or finds and updates, and they stay exported as
long as the cluster lives. The actor re-records them every few seconds: Ray 2.60 drops a gauge not
set again within two report intervals even in a live actor (measured: a gauge set once is served
for ~20 s, then gone). After upgrading gendet, ``ray kill`` the actor
(``gendet-refresh-metrics`` in namespace ``gendet``) to run the new code; the next refresh
recreates it from the state files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

ALERT = "gendet_refresh_alert"
SUBSET_SLIPPED = "gendet_refresh_subset_slipped"
FAKE_CAUGHT = "gendet_refresh_fake_caught"
LAST_RUN = "gendet_refresh_last_run_timestamp_seconds"
# metric -> (tag keys, description); the names Prometheus sees carry PROMETHEUS_PREFIX
EXPORTED: dict[str, tuple[tuple[str, ...], str]] = {
    ALERT: (("model", "version"), "1 when a new subset slipped past this model version at its calibrated threshold"),
    SUBSET_SLIPPED: (("model", "version", "subset"), "1 when this subset slipped past this model version"),
    FAKE_CAUGHT: (("model", "version", "subset"), "share of the subset's fakes caught at the calibrated threshold"),
    LAST_RUN: (("model",), "unix time at which a refresh of this model last finished"),
}
PROMETHEUS_PREFIX = "ray_"
ACTOR_NAME = "gendet-refresh-metrics"
NAMESPACE = "gendet"
KEEP_FRESH_S = 5.0  # below Ray's gauge lifetime (2 x metrics_report_interval_ms, 10 s by default)

Point = tuple[str, dict[str, str], float]


def points(model: str, version: str, subsets: Mapping[str, Mapping[str, Any]], at: float) -> list[Point]:
    """The (metric, tags, value) points of one model version's refresh state (subset -> verdict)."""
    out: list[Point] = [(ALERT, {"model": model, "version": version}, float(any(v.get("slipped") for v in subsets.values()))),
                        (LAST_RUN, {"model": model}, float(at))]
    for subset, verdict in subsets.items():
        tags = {"model": model, "version": version, "subset": subset}
        out.append((SUBSET_SLIPPED, tags, float(bool(verdict.get("slipped")))))
        if verdict.get("fake_acc_calibrated") is not None:
            out.append((FAKE_CAUGHT, tags, float(verdict["fake_acc_calibrated"])))
    return out


class RefreshMetrics:
    """The detached actor holding the gauges (``ray.remote`` is applied in ``publish``)."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge

        self._gauges = {name: Gauge(name, description=desc, tag_keys=keys) for name, (keys, desc) in EXPORTED.items()}
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._keep_fresh, name="keep-fresh", daemon=True).start()

    def publish(self, model: str, version: str, new: list[Point]) -> list[Point]:
        """Replace ``model``'s values: its other versions are no longer judged, so their alert
        series read 0 (a promoted fix clears the page); returns every point now exported."""
        with self._lock:
            for (name, tags), _ in list(self._values.items()):
                labels = dict(tags)
                if name in (ALERT, SUBSET_SLIPPED) and labels["model"] == model and labels["version"] != version:
                    self._values[(name, tags)] = 0.0
            for name, tags, value in new:
                self._values[(name, tuple(sorted(tags.items())))] = float(value)
            self._record()
            return self.exported()

    def exported(self) -> list[Point]:
        return [(name, dict(tags), value) for (name, tags), value in sorted(self._values.items())]

    def _record(self) -> None:
        for (name, tags), value in self._values.items():
            self._gauges[name].set(value, tags=dict(tags))

    def _keep_fresh(self) -> None:
        while True:
            time.sleep(KEEP_FRESH_S)
            with self._lock:
                self._record()


def publish(model: str, version: str, subsets: Mapping[str, Mapping[str, Any]], at: float, *,
            timeout_s: float = 120.0) -> list[Point]:
    """Create or find the metrics actor on this job's Ray and set one model version's values."""
    import ray

    from pipelines._ray import init_ray

    init_ray()
    actor = ray.remote(RefreshMetrics).options(
        name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=-1,
        resources={"node:__internal_head__": 0.001},  # the head outlives worker nodes: scrape it
    ).remote()
    return ray.get(actor.publish.remote(model, version, points(model, version, subsets, at)), timeout=timeout_s)
