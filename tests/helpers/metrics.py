"""Reading a Ray node's Prometheus endpoint the way Prometheus does (its own text parser)."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: str) -> dict[str, list]:
    """name -> [(labels, value)] of the node's Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def wait_for_gauge(port: str, name: str, want: dict[str, str], timeout: float = 90.0) -> dict[str, list]:
    """Scrape until ``name`` has a sample with the labels ``want`` (Ray's agent reports every few s)."""
    deadline, seen = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        seen = scrape(port)
        if any(want.items() <= labels.items() for labels, _ in seen.get(name, [])):
            return seen
        time.sleep(2)
    raise AssertionError(f"{name}{want} not exported within {timeout:.0f} s; gendet series: "
                         f"{ {k: v for k, v in seen.items() if 'gendet' in k} }")


def value(samples: dict[str, list], name: str, **want: str) -> float:
    hits = [v for labels, v in samples.get(name, []) if want.items() <= labels.items()]
    assert len(hits) == 1, (name, want, samples.get(name))
    return hits[0]
