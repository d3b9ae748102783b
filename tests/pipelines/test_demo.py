"""`gendet demo --small` end to end on a real local Ray and a real SQLite MLflow store, then the
refresh job run again on the same folder (nothing new)."""

import json

import mlflow
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gendet.serve.loading import load_detector
from gendet.zoo.config import FAMILIES
from pipelines import demo, refresh

pytestmark = pytest.mark.slow

SUBSET_KEYS = {"n_real", "n_fake", "acc", "real_acc", "fake_acc", "ap", "best_acc", "acc_calibrated",
               "real_acc_calibrated", "fake_acc_calibrated"}
TOP_KEYS = {"model", "encoder", "threshold", "calibrated_threshold", "target_fpr", "subsets", "mean_acc", "mAP",
            "mean_acc_calibrated"}


def test_demo_small_end_to_end(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--small"]) == 0
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
    if fixed:
        assert int(fixed["challenger_version"]) == int(gate["version"]) + 1 and fixed["subsets"] == [demo.NEW_FAMILY]
        assert fixed["shots"] == demo.FIX_SHOTS and fixed["reason"] and demo.NEW_FAMILY in fixed["families"]
    report = (out / "report.md").read_text()
    assert ("**Fix**" in report) == bool(fixed)
    assert "Table 4" in report and "jpeg:65" in report and "(plots/acc_by_method.png)" in report
    assert (out / "plots" / "acc_by_method.png").stat().st_size > 1000

    # The scheduled job runs again: every shard is in the store, nothing is extracted or judged.
    again = out / "refresh-again.json"
    code = refresh.main([str(out / "incoming"), str(out / "features"), "--model", first,
                         "--out", str(again)])
    assert code == 0 and json.loads(again.read_text())["new_shards"] == []
    assert "nothing new" in capsys.readouterr().out

    # The same new shards judged against a reference they cannot meet: the alert fires, exit 3,
    # and the verdict is logged to MLflow with its tag (a fresh store, so they count as new).
    strict = tmp_path / "perfect.json"
    strict.write_text(json.dumps({"mean_acc_calibrated": 1.0}))
    alert_out = out / "refresh-alert.json"
    code = refresh.main([str(out / "incoming"), str(tmp_path / "features-2"), "--model", first,
                         "--reference", str(strict), "--max-drop", "0", "--out", str(alert_out),
                         "--mlflow-out", str(out)])
    alerted = json.loads(alert_out.read_text())
    assert code == refresh.ALERT_EXIT and alerted["alert"] is True and alerted["subsets"][demo.NEW_FAMILY]["slipped"]
    run = client.get_run(alerted["mlflow_run"])
    assert run.data.tags["gendet.alert"] == "true"
