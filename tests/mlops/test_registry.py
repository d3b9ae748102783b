"""Registry and promotion gate against a real ``mlflow server``; then the champion loads and scores."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from gendet import GendetError
from gendet.eval.metrics import metrics_report
from gendet.method.gendet.detector import Detector
from gendet.mlops import registry
from gendet.serve import predict, pyfunc
from pipelines import cli


def _report(mean_acc: float, real_acc: dict[str, tuple[float, int]]) -> dict:
    """A metrics.json-shaped dict: ``real_acc`` maps subset -> (real_acc_calibrated, n_real)."""
    return {"mean_acc": mean_acc, "subsets": {s: {"n_real": n, "n_fake": n, "real_acc_calibrated": a}
                                               for s, (a, n) in real_acc.items()}}


def test_gate_rule_floor_margin_and_first_model():
    ok_reals = {"a": (1.0, 30), "b": (0.8, 10)}  # pooled: (30 + 8) / 40 = 0.95
    assert registry.pooled_real_acc_calibrated(_report(0.5, ok_reals)) == pytest.approx(0.95)
    promoted, reason, *_ = registry.decide(_report(0.9, {"a": (0.5, 10)}), None, margin=0.0, real_acc_floor=0.9)
    assert not promoted and "below the floor" in reason
    promoted, reason, *_ = registry.decide(_report(0.6, ok_reals), None, margin=0.5, real_acc_floor=0.9)
    assert promoted and "no champion" in reason
    # 0.75 vs 0.5 + 0.25: exactly the margin is enough; a hair less is not
    assert registry.decide(_report(0.75, ok_reals), _report(0.5, ok_reals), margin=0.25, real_acc_floor=0.9)[0]
    promoted, reason, *_ = registry.decide(_report(0.74, ok_reals), _report(0.5, ok_reals), margin=0.25,
                                           real_acc_floor=0.9)
    assert not promoted and "does not beat" in reason
    with pytest.raises(GendetError, match="no real images"):
        registry.pooled_real_acc_calibrated(_report(0.9, {"a": (1.0, 0)}))
    with pytest.raises(GendetError, match="calibrated"):
        registry.pooled_real_acc_calibrated(_report(0.9, {"a": (None, 5)}))


def _families(mean_acc: float, acc_calibrated: dict[str, float]) -> dict:
    """A report whose subsets have ``acc_calibrated`` (and reals all right at the threshold)."""
    return {"mean_acc": mean_acc, "subsets": {s: {"n_real": 10, "n_fake": 10, "real_acc_calibrated": 1.0, "acc_calibrated": a,
                                                  "acc": 0.0} for s, a in acc_calibrated.items()}}


def test_gate_refuses_a_challenger_that_loses_a_known_family():
    champion = _families(0.7, {"old": 0.95, "older": 0.90, "new": 0.55})
    # the new family is fixed, but "older" falls 0.05 > 0.02: refused, the reason names it (acc_calibrated, not acc)
    verdict = registry.decide(_families(0.9, {"old": 0.96, "older": 0.85, "new": 0.95}), champion,
                              margin=0.0, real_acc_floor=0.9, max_family_drop=0.02)
    assert not verdict.promoted and "family older" in verdict.reason and "max_family_drop 0.0200" in verdict.reason
    assert verdict.worst_family == "older" and verdict.worst_family_drop == pytest.approx(0.05)
    # within the allowed drop, and a family only the challenger scored passes
    verdict = registry.decide(_families(0.9, {"old": 0.94, "older": 0.895, "new": 0.95, "newest": 0.1}), champion,
                              margin=0.0, real_acc_floor=0.9, max_family_drop=0.02)
    assert verdict.promoted and verdict.worst_family == "old" and "no family falls" in verdict.reason
    # a looser rule admits the first one; the margin rule still applies after it
    assert registry.decide(_families(0.9, {"old": 0.96, "older": 0.85}), champion, margin=0.0, real_acc_floor=0.9,
                           max_family_drop=0.06).promoted
    verdict = registry.decide(_families(0.6, {"old": 0.96}), champion, margin=0.0, real_acc_floor=0.9)
    assert not verdict.promoted and "does not beat" in verdict.reason
    # without paired evidence the default tolerance is 0: any point fall refuses
    assert not registry.decide(_families(0.9, {"old": 0.949}), champion, margin=0.0, real_acc_floor=0.9).promoted
    assert registry.family_drops(_report(0.9, {"a": (1.0, 5)}), _report(0.9, {"a": (1.0, 5)})) == {}  # nothing to compare
    decision = registry.GateDecision(name="g", version="2", promoted=False, reason="r", metric="mean_acc",
                                     challenger_score=0.9, champion_score=0.7, champion_version="1",
                                     real_acc_calibrated=1.0, margin=0.0, real_acc_floor=0.9, worst_family="older",
                                     worst_family_drop=0.05, max_family_drop=0.02)
    tags = decision.tags()
    assert tags["gendet.gate.worst_family"] == "older" and tags["gendet.gate.max_family_drop"] == "0.02"


def _paired_fix(rng, n: int, drop: float) -> tuple[dict, dict, dict]:
    """A fix of family "new" (50 % -> 95 %) whose family "old" truly falls by ``drop`` and whose other
    families flip 2 % of images each way (a retrain's noise): both reports and the paired evidence."""
    from gendet.eval.paired import family_intervals

    subsets, mine, theirs = [], [], []
    for family, (both, champion_only, challenger_only) in {
            "new": (0.48, 0.02, 0.47), "old": (0.94 - drop, 0.02 + drop, 0.02),
            "older": (0.94, 0.02, 0.02), "oldest": (0.94, 0.02, 0.02)}.items():
        outcome = rng.choice(4, size=n, p=[both, champion_only, challenger_only, 1 - both - champion_only - challenger_only])
        subsets.append(np.full(n, family)), mine.append(np.isin(outcome, (0, 2))), theirs.append(np.isin(outcome, (0, 1)))
    subsets, mine, theirs = np.concatenate(subsets), np.concatenate(mine), np.concatenate(theirs)
    accs = {f: (mine[subsets == f].mean(), theirs[subsets == f].mean()) for f in sorted(set(subsets))}
    return (_families(float(np.mean([a for a, _ in accs.values()])), {f: a for f, (a, _) in accs.items()}),
            _families(float(np.mean([b for _, b in accs.values()])), {f: b for f, (_, b) in accs.items()}),
            family_intervals(subsets, mine, theirs, resamples=1000, seed=1))


def test_gate_on_paired_evidence_promotes_noise_and_refuses_a_real_fall():
    rng = np.random.default_rng(0)
    outcomes = {}
    for drop in (0.0, 0.10):
        decisions = []
        for _ in range(10):
            mine, theirs, evidence = _paired_fix(rng, 560, drop)
            decisions.append(registry.decide(mine, theirs, margin=0.0, real_acc_floor=0.9, evidence=evidence))
        outcomes[drop] = decisions
    # unchanged old families are within noise (alpha 0.05 over all families: ~1 in 20 refused); a
    # 10-point fall is refused every time, by name
    kept = [v for v in outcomes[0.0] if v.promoted]
    assert len(kept) >= 8, [v.reason for v in outcomes[0.0] if not v.promoted]
    assert all("no family falls" in v.reason and "beyond noise" in v.reason for v in kept)
    assert not any(v.promoted for v in outcomes[0.1])
    assert all("beyond noise" in v.reason and "old: -0." in v.reason and v.worst_family == "old" for v in outcomes[0.1])
    # identical answers on every image: no difference at all, promoted (margin 0 is met by equality)
    same = _families(0.9, {"a": 0.9})
    verdict = registry.decide(same, same, margin=0.0, real_acc_floor=0.9,
                              evidence={"a": {"n": 50, "diff": 0.0, "lo": 0.0, "hi": 0.0, "challenger": 0.9, "champion": 0.9}})
    assert verdict.promoted


def test_gate_reads_metrics_reports_written_by_evaluate():
    labels = np.array(["real"] * 6 + ["fake"] * 6)
    subsets = np.array(["sd14", "vqdm"] * 6)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.95, 0.05] + [0.9] * 6)  # one real above the threshold
    report = metrics_report(scores, labels, subsets, calibrated_threshold=0.5, target_fpr=0.05, model="m",
                            encoder="spectrum:v1")
    assert registry.pooled_real_acc_calibrated(report) == pytest.approx(5 / 6)
    assert registry.decide(report, None, margin=0.0, real_acc_floor=0.8)[0]
    assert not registry.decide(report, None, margin=0.0, real_acc_floor=0.9)[0]


@pytest.fixture
def server(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("registry-test")
    yield MlflowClient(mlflow_server)
    mlflow.set_tracking_uri(None)


def _log(detector_dir: str) -> tuple[str, str]:
    with mlflow.start_run() as run:
        info = pyfunc.log_detector(detector_dir)
    return info.model_uri, run.info.run_id


@pytest.mark.slow
def test_register_gate_and_champion_scores(server, tiny_detector_dir, tiny_images, tiny_scores, tmp_path, capsys):
    client, name = server, "gendet"
    good, weak = _report(0.8, {"a": (0.97, 20)}), _report(0.8, {"a": (0.5, 20)})

    uri1, run1 = _log(tiny_detector_dir)
    v1 = registry.register(uri1, name, client=client)
    assert v1.version == "1" and CHALLENGER_OF(client, name) == "1"
    refused = registry.promote(client, name, weak, None, margin=0.01, real_acc_floor=0.9)
    assert not refused.promoted and "below the floor" in refused.reason
    assert registry.version_by_alias(client, name, registry.CHAMPION) is None
    first = registry.promote(client, name, good, None, margin=0.01, real_acc_floor=0.9)
    assert first.promoted and first.champion_version is None and "no champion" in first.reason
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["gendet.gate.promoted"] == "True" and tags["gendet.gate.reason"] == first.reason
    assert client.get_run(run1).data.tags["gendet.gate.reason"] == first.reason

    second = Detector.load(tiny_detector_dir)
    second.threshold = 0.0  # every image called fake: tells the two versions apart when served
    uri2, _ = _log(second.save(str(tmp_path / "second")))
    assert registry.register(uri2, name, client=client).version == "2" and CHALLENGER_OF(client, name) == "2"
    same = registry.promote(client, name, _report(0.805, {"a": (0.97, 20)}), good, margin=0.01, real_acc_floor=0.9)
    assert not same.promoted and "does not beat" in same.reason and same.champion_version == "1"
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version(name, "2").tags["gendet.gate.promoted"] == "False"
    better = registry.promote(client, name, _report(0.9, {"a": (0.95, 20)}), good, margin=0.01, real_acc_floor=0.9)
    assert better.promoted and better.champion_score == 0.8 and better.challenger_score == 0.9
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    # a third version fixes a new family but loses an old one: refused, the worst family tagged
    uri3, run3 = _log(tiny_detector_dir)
    assert registry.register(uri3, name, client=client).version == "3"
    broke = registry.promote(client, name, _families(0.95, {"a": 0.80, "new": 0.99}), _families(0.9, {"a": 0.97}),
                             margin=0.0, real_acc_floor=0.9)
    assert not broke.promoted and "family a" in broke.reason
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    tags = client.get_model_version(name, "3").tags
    assert tags["gendet.gate.worst_family"] == "a" and float(tags["gendet.gate.worst_family_drop"]) == pytest.approx(0.17)
    assert client.get_run(run3).data.tags["gendet.gate.reason"] == broke.reason

    scorer = predict.load_scorer("models:/gendet@champion")
    rows = predict.predict(scorer, [str(p) for p in tiny_images])
    np.testing.assert_allclose([r["score"] for r in rows], list(tiny_scores.values()), rtol=1e-5)
    assert all(r["is_fake"] and r["threshold"] == 0.0 for r in rows)
    assert {r["model"] for r in rows} == {"gendet/2"}  # the alias, pinned to the version that answered

    capsys.readouterr()  # drop what MLflow printed while registering
    assert cli.main(["predict", "--model", "models:/gendet@champion", "--tracking-uri", client.tracking_uri,
                     str(tiny_images[0])]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["path"] == str(tiny_images[0]) and line["score"] == pytest.approx(rows[0]["score"], rel=1e-6)
    first_run = predict.load_scorer(f"runs:/{run1}/detector")
    assert first_run.threshold == Detector.load(tiny_detector_dir).threshold


def CHALLENGER_OF(client: MlflowClient, name: str) -> str:  # noqa: N802 (reads like the alias it returns)
    return client.get_model_version_by_alias(name, registry.CHALLENGER).version


def test_the_gate_refits_a_threshold_only_on_the_reals_it_was_fitted_on():
    from types import SimpleNamespace

    subsets, labels = np.array(["sd", "sd", "new", "new", "old"]), np.array(["real", "fake", "real", "fake", "real"])
    det = SimpleNamespace(threshold=0.5, target_fpr=0.05, calibration_split="val", calibration_subsets=["sd", "new"])
    fitted = registry.deployed(det, np.zeros(5), subsets, labels, "val")
    assert fitted.refit.tolist() == [True, False, True, False, False] and fitted.target_fpr == 0.05
    # calibrated on another split, or saved before models named their calibration rows: fixed
    for other in (dict(calibration_split="train_holdout"), dict(calibration_subsets=None)):
        assert registry.deployed(SimpleNamespace(**{**vars(det), **other}), np.zeros(5), subsets, labels, "val").refit is None
