"""The closed loop at the reduced demo size, on a real local Ray and a real SQLite MLflow store: a
new family slips, ``refresh --fix`` retrains with a few of its images, the gate checks every known
family, and ``champion`` moves only if it passes."""

import json
import shutil

import mlflow
import pytest
from mlflow import MlflowClient

from gendet import GendetError
from pipelines import demo, fix, refresh

pytestmark = pytest.mark.slow

SHOTS = 8


def test_refresh_fix_retrains_gates_and_promotes_only_a_fix_that_keeps_every_family(ray_local, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--small", "--no-degrade", "--no-fix"]) == 0
    db = f"sqlite:///{out / 'mlflow.db'}"
    mlflow.set_tracking_uri(db)
    client = MlflowClient(db)
    first = json.loads((out / "train_summary.json").read_text())["gate"]
    if not first["promoted"]:  # the small world's first model may miss the real floor: the loop needs a champion
        client.set_registered_model_alias("gendet", "champion", first["version"])
    parent = str(client.get_model_version_by_alias("gendet", "champion").version)

    # bad input is one line, before any work
    with pytest.raises(GendetError, match="registered model"):
        fix.fix(str(out / "features"), model=str(out / "detectors" / "gendet"), subsets=[demo.NEW_FAMILY])
    with pytest.raises(GendetError, match="no subsets"):
        fix.fix(str(out / "features"), subsets=[])

    # The demo's own refresh already scored the new shards; forget that, and judge them against a
    # reference they cannot meet, so the alert fires whatever the small world's numbers are.
    shutil.rmtree(out / "features" / "_refresh")
    perfect = tmp_path / "perfect.json"
    perfect.write_text(json.dumps({"mean_acc_calibrated": 1.0}))
    capsys.readouterr()
    code = refresh.main([str(out / "incoming"), str(out / "features"), "--model", "models:/gendet@champion",
                         "--reference", str(perfect), "--max-drop", "0", "--out", str(out / "refresh-fix.json"),
                         "--mlflow-out", str(out), "--tracking-uri", db, "--fix", "--fix-shots", str(SHOTS)])
    printed = capsys.readouterr().out
    result = json.loads((out / "refresh-fix.json").read_text())
    assert code == refresh.ALERT_EXIT and result["alert"] and result["subsets"][demo.NEW_FAMILY]["slipped"]  # the alert
    assert client.get_run(result["mlflow_run"]).data.tags["gendet.alert"] == "true"

    fixed = result["fix"]
    assert fixed == json.loads((out / "fix" / "fix.json").read_text())
    assert fixed["subsets"] == [demo.NEW_FAMILY] and fixed["shots"] == SHOTS and fixed["parent_version"] == parent
    assert int(fixed["challenger_version"]) > int(parent)  # the retrain happened: a new version
    version = client.get_model_version("gendet", fixed["challenger_version"])
    run = client.get_run(version.run_id)
    assert json.loads(run.data.params["train_subsets"])[-1] == demo.NEW_FAMILY
    assert json.loads(run.data.params["shots"]) == [f"{demo.NEW_FAMILY}={SHOTS}"]
    parent_run = client.get_run(client.get_model_version("gendet", parent).run_id)
    for same in ("rotations", "methods", "teacher_lr", "encoder", "eval_splits"):  # the champion's own config
        assert run.data.params[same] == parent_run.data.params[same], same
    lineage = {"gendet.fix.parent_version": parent, "gendet.fix.subsets": demo.NEW_FAMILY, "gendet.fix.shots": str(SHOTS)}
    assert lineage.items() <= run.data.tags.items() and lineage.items() <= version.tags.items()

    # the gate's decision and reason, as tags on the version and its run
    for tags in (version.tags, run.data.tags):
        assert tags["gendet.gate.promoted"] == str(fixed["promoted"]) and tags["gendet.gate.reason"] == fixed["reason"]
        assert tags["gendet.gate.champion_version"] == parent and tags["gendet.gate.max_family_drop"] == "0.02"
    families = fixed["families"]
    assert demo.NEW_FAMILY in families and len(families) >= 2
    drops = {s: row["before"]["acc_calibrated"] - row["after"]["acc_calibrated"] for s, row in families.items()}
    assert fixed["worst_family"] == max(drops, key=lambda s: (drops[s], s))
    broke = drops[fixed["worst_family"]] > 0.02 + 1e-9
    assert not (fixed["promoted"] and broke)  # no family lost more than 2 points by a promoted fix
    if broke:
        assert f"family {fixed['worst_family']}" in fixed["reason"]

    # champion moved to the new version iff the gate passed
    champion = str(client.get_model_version_by_alias("gendet", "champion").version)
    assert champion == (fixed["challenger_version"] if fixed["promoted"] else parent)
    assert ("FIXED: version" in printed) and (("is now the champion" in printed) == fixed["promoted"])

    # the retrained model catches more of the new family's fakes than the champion did
    new = families[demo.NEW_FAMILY]
    assert new["after"]["fake_acc_calibrated"] > new["before"]["fake_acc_calibrated"] or new["before"][
        "fake_acc_calibrated"] == 1.0, new
