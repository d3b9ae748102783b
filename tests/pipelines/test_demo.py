"""`gendet demo --small` end to end on a real local Ray and a real SQLite MLflow store: the world,
training, the gate, the refresh whose new family slips and the closed loop that fixes it (a few
shots of the new family, the gate checking every known family, ``champion`` moving only if it
passes), then the refresh job run again on the same folder (nothing new). One world for all of it:
building a second one costs CI a minute and a half."""

import json

import mlflow
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gendet import GendetError
from gendet.serve.loading import load_detector
from gendet.zoo.config import FAMILIES
from helpers.cli import run_cli
from pipelines import demo, fix, refresh

pytestmark = pytest.mark.slow

SUBSET_KEYS = {"n_real", "n_fake", "acc", "real_acc", "fake_acc", "ap", "best_acc", "acc_calibrated",
               "real_acc_calibrated", "fake_acc_calibrated"}
TOP_KEYS = {"model", "encoder", "threshold", "calibrated_threshold", "target_fpr", "subsets", "mean_acc", "mAP",
            "mean_acc_calibrated"}


def test_demo_small_end_to_end(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    assert run_cli(demo, ["--out", str(out), "--small"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed

    # The demo's world: native crops at each small size, PNG and JPEG for both labels (format says nothing).
    index = pq.read_table(out / "shards" / "zoo_index.parquet").to_pandas()
    assert set(index["size"]) == set(demo.SMALL_CROP_SIZES)
    assert {(lb, f) for lb, f in zip(index["label"], index["format"])} == {(lb, f) for lb in ("real", "fake")
                                                                          for f in ("png", "jpg")}

    metrics = json.loads((out / "metrics.json").read_text())
    assert TOP_KEYS <= set(metrics)
    assert set(metrics["subsets"]) == set(FAMILIES) - {demo.NEW_FAMILY}  # every family but the late one
    for subset, values in metrics["subsets"].items():
        assert SUBSET_KEYS <= set(values), subset
        assert values["n_real"] > 0 and values["n_fake"] > 0
    assert metrics["subsets"][demo.TRAIN_FAMILY]["ap"] > 0.9  # the seen family is learnt

    summary = json.loads((out / "train_summary.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    client = MlflowClient()
    gate = summary["gate"]
    fixed = json.loads((out / "refresh.json").read_text()).get("fix")  # the closed loop, when the new family slipped
    challenger = fixed["challenger_version"] if fixed else gate["version"]
    assert str(client.get_model_version_by_alias("gendet", "challenger").version) == str(challenger)
    champion = fixed["challenger_version"] if fixed and fixed["promoted"] else gate["version"] if gate["promoted"] else None
    if champion is not None:
        assert str(client.get_model_version_by_alias("gendet", "champion").version) == str(champion)
    else:  # a refusal names its rule, and champion stays unset (first model)
        assert "below the floor" in gate["reason"] or "gain" in gate["reason"], gate
        with pytest.raises(MlflowException):
            client.get_model_version_by_alias("gendet", "champion")
    first = f"models:/gendet/{gate['version']}"  # the model the demo's refresh judged with
    model = load_detector(first)
    assert model.method == "gendet" and model.encoder == demo.ENCODER == "spectrum:v2" and model.target_fpr == 0.05

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and all({"path", "score", "is_fake", "threshold"} <= set(p) for p in predictions)

    fresh = json.loads((out / "refresh.json").read_text())
    assert fresh["new_shards"] == [f"{demo.NEW_FAMILY}-000000"] and set(fresh["subsets"]) == {demo.NEW_FAMILY}
    reference, rule = fresh["reference_mean_acc_calibrated"], fresh["rule"]
    assert reference is not None
    verdict = fresh["subsets"][demo.NEW_FAMILY]
    expected = (verdict["acc_calibrated"] < reference - rule["max_drop"]
                or verdict["fake_acc_calibrated"] < rule["min_fake_acc"])
    assert verdict["slipped"] == expected and fresh["alert"] == expected  # the verdict follows its rule
    assert ("fix" in fresh) == fresh["alert"]  # refresh --fix retrains only what slipped
    report = (out / "report.md").read_text()
    assert "Table 4" in report and "jpeg:65" in report and "(plots/acc_by_method.png)" in report
    assert (out / "plots" / "acc_by_method.png").stat().st_size > 1000
    if fixed:
        verdict_line = f"version {fixed['challenger_version']} {'promoted to champion' if fixed['promoted'] else 'not promoted'}"
        assert "**Fix**" in report and verdict_line in report and "What the gate saw, on val" in report

    # The scheduled job runs again: every shard is in the store, nothing is extracted or judged.
    again = out / "refresh-again"
    code = run_cli(refresh, [str(out / "incoming"), str(out / "features"), "--model", first, "--out", str(again)])
    assert code == 0 and json.loads((again / "refresh.json").read_text())["new_shards"] == []
    assert "nothing new" in capsys.readouterr().err

    # The same new shards judged against a reference they cannot meet: the alert fires, exit 3,
    # and the verdict is logged to MLflow with its tag (a fresh store, so they count as new).
    strict = tmp_path / "perfect.json"
    strict.write_text(json.dumps({"mean_acc_calibrated": 1.0}))
    alert_out = out / "refresh-alert"
    code = run_cli(refresh, [str(out / "incoming"), str(tmp_path / "features-2"), "--model", first,
                             "--reference", str(strict), "--max-drop", "0", "--out", str(alert_out),
                             "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"])
    alerted = json.loads((alert_out / "refresh.json").read_text())
    assert code == refresh.ALERT_EXIT and alerted["alert"] is True and alerted["subsets"][demo.NEW_FAMILY]["slipped"]
    run = client.get_run(alerted["mlflow_run"])
    assert run.data.tags["gendet.alert"] == "true"

    # The closed loop. When the demo's refresh did not alert (the small world's champion may catch
    # the new family), the fix it would have run is run here: retrain, gate on val, promote or not.
    if not fixed:
        assert run_cli(fix, [str(out / "features"), "--model", first, "--subsets", demo.NEW_FAMILY, "--shots",
                             str(demo.FIX_SHOTS), "--out", str(out / "fix"), "--tracking-uri",
                             f"sqlite:///{out / 'mlflow.db'}", "--num-workers", "1", "--cpus-per-worker", "1"]) == 0
        fixed = json.loads((out / "fix" / "fix.json").read_text())
    check_fix(client, out, fixed, gate, verdict)


def check_fix(client, out, fixed, gate, verdict):
    """The closed loop's record: lineage, the champion's own config, the gate per family, aliases."""
    parent = str(gate["version"])
    assert fixed == json.loads((out / "fix" / "fix.json").read_text())
    assert fixed["subsets"] == [demo.NEW_FAMILY] and fixed["shots"] == demo.FIX_SHOTS and fixed["parent_version"] == parent
    assert int(fixed["challenger_version"]) == int(parent) + 1  # the retrain happened: a new version
    version = client.get_model_version("gendet", fixed["challenger_version"])
    run = client.get_run(version.run_id)
    assert json.loads(run.data.params["train_subsets"])[-1] == demo.NEW_FAMILY
    assert json.loads(run.data.params["shots"]) == [f"{demo.NEW_FAMILY}={demo.FIX_SHOTS}"]
    parent_run = client.get_run(client.get_model_version("gendet", parent).run_id)
    for same in ("rotations", "methods", "teacher_lr", "encoder", "eval_splits"):  # the champion's own config
        assert run.data.params[same] == parent_run.data.params[same], same
    lineage = {"gendet.fix.parent_version": parent, "gendet.fix.subsets": demo.NEW_FAMILY,
               "gendet.fix.shots": str(demo.FIX_SHOTS)}
    assert lineage.items() <= run.data.tags.items() and lineage.items() <= version.tags.items()

    # the gate's decision and reason, as tags on the version and its run
    for tags in (version.tags, run.data.tags):
        assert tags["gendet.gate.promoted"] == str(fixed["promoted"]) and tags["gendet.gate.reason"] == fixed["reason"]
        assert tags["gendet.gate.max_family_drop"] == "0.0"
    families = fixed["families"]
    assert demo.NEW_FAMILY in families and len(families) >= 2
    new = families[demo.NEW_FAMILY]
    if fixed["champion_version_before"] is None:  # the small world's first model missed the floor: nothing to keep
        assert all(row["before"] is None for row in families.values()) and fixed["worst_family"] is None
        caught_before = verdict["fake_acc_calibrated"]  # the parent's, as the refresh that alerted scored it
    else:  # the per-family rule on val: no family may fall beyond noise (its paired interval all below 0)
        drops = {s: row["before"]["acc_calibrated"] - row["after"]["acc_calibrated"] for s, row in families.items()}
        assert fixed["worst_family"] == max(drops, key=lambda s: (drops[s], s))
        for s, row in families.items():  # the interval is of the same images' difference, around it
            assert row["paired"]["diff"] == pytest.approx(-drops[s]) and row["paired"]["lo"] <= -drops[s] <= row["paired"]["hi"]
        broke = sorted(s for s, row in families.items() if row["paired"]["hi"] < 0)
        assert fixed["promoted"] == (not broke), (broke, fixed["reason"])  # the decision follows its intervals
        assert all(f"{s}: " in fixed["reason"] for s in broke) and "beyond noise" in fixed["reason"]
        caught_before = new["before"]["fake_acc_calibrated"]
    assert new["after"]["fake_acc_calibrated"] > caught_before, new  # the fix catches more of the new family

    # bad input is one line, before any work
    with pytest.raises(GendetError, match="registered model"):
        fix.run(fix.FixJob(features=str(out / "features"), model=str(out / "detectors" / "gendet"),
                           subsets=(demo.NEW_FAMILY,)))
    with pytest.raises(GendetError, match="--subsets: none"):
        fix.FixJob(features=str(out / "features"), subsets=())
