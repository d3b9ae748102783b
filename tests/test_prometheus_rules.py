"""cluster/prometheus-rules.yaml reads exactly the metrics the refresh job exports (pipelines/_metrics.py),
and the points it exports follow a model version's refresh state."""

from __future__ import annotations

import os
import re

import yaml

from pipelines import _metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(REPO, "cluster", "prometheus-rules.yaml")


def _rules() -> list[dict]:
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    assert set(doc) == {"groups"}
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert all(g["name"] and g["rules"] for g in doc["groups"])
    return rules


def test_rules_parse_and_read_exactly_the_exported_metrics():
    rules = _rules()
    exported = {_metrics.PROMETHEUS_PREFIX + name for name in _metrics.EXPORTED}
    referenced = {m for r in rules for m in re.findall(r"\bray_[a-z_]+\b", r["expr"])}
    assert referenced == exported
    for rule in rules:
        assert ("alert" in rule) != ("record" in rule), rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
        if "alert" in rule:
            assert rule["labels"]["severity"] and rule["annotations"]["summary"], rule["alert"]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    slipped = alerts["GenDetGeneratorSlipped"]["expr"]
    assert f"max by (model, subset) ({_metrics.PROMETHEUS_PREFIX}{_metrics.SUBSET_SLIPPED})" in slipped
    stale = alerts["GenDetRefreshStale"]["expr"]
    assert _metrics.LAST_RUN in stale and re.search(r">\s*26 \* 3600$", stale)
    assert alerts["GenDetRefreshMetricsAbsent"]["for"] == "26h"
    grouping = re.compile(r"by \(([a-z, ]+)\) \(ray_([a-z_]+)\)")
    groupings = [(by, metric, r["expr"]) for r in rules for by, metric in grouping.findall(r["expr"])]
    assert len(groupings) == 4  # all but absent()
    for by, metric, expr in groupings:  # every label an expression groups by is a tag the metric carries
        assert set(by.replace(" ", "").split(",")) <= set(_metrics.EXPORTED[metric][0]), expr


def test_points_of_a_model_versions_state():
    subsets = {"sdedit": {"slipped": True, "fake_acc_calibrated": 0.25}, "sd14": {"slipped": False, "fake_acc_calibrated": 0.9},
               "nofakes": {"slipped": False, "fake_acc_calibrated": None}}
    pts = {(name, tuple(sorted(tags.items()))): value for name, tags, value in _metrics.points("gendet", "4", subsets, 123.0)}
    model_version = (("model", "gendet"), ("version", "4"))
    assert pts[(_metrics.ALERT, model_version)] == 1.0
    assert pts[(_metrics.LAST_RUN, (("model", "gendet"),))] == 123.0
    assert pts[(_metrics.SUBSET_SLIPPED, (("model", "gendet"), ("subset", "sdedit"), ("version", "4")))] == 1.0
    assert pts[(_metrics.FAKE_CAUGHT, (("model", "gendet"), ("subset", "sd14"), ("version", "4")))] == 0.9
    assert (_metrics.FAKE_CAUGHT, (("model", "gendet"), ("subset", "nofakes"), ("version", "4"))) not in pts
    for name, tags, _ in _metrics.points("gendet", "4", subsets, 123.0):
        assert tuple(tags) == _metrics.EXPORTED[name][0]  # the tag keys each gauge is declared with
    quiet = _metrics.points("gendet", "5", {}, 124.0)
    assert [(n, v) for n, _, v in quiet] == [(_metrics.ALERT, 0.0), (_metrics.LAST_RUN, 124.0)]
