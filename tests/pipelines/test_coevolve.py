"""``pipelines.coevolve`` at a tiny size on a real local Ray and a real SQLite MLflow store: two
rounds of align -> shards -> extract -> fix -> score, each with its round.json and an MLflow run
carrying its lineage; a rerun skips the done rounds."""

import json

import pytest
from mlflow import MlflowClient

from gendet import GendetError
from gendet.coevolve.lineage import load_aligned
from gendet.extract.config import ExtractConfig
from gendet.zoo.shards import ZooShardsConfig, build_zoo_shards
from helpers.cli import run_cli
from pipelines import coevolve
from pipelines import train as train_pipeline
from pipelines.extract import extract

pytestmark = pytest.mark.slow

TRAIN, HELD_OUT, FAMILY = "ae_nearest_f8", "ae_deconv_f4", "sdedit"


@pytest.fixture(scope="module")
def world(ray_local, tmp_path_factory):
    """A tiny world: three families' shards, their features, a champion trained on one of them."""
    root = tmp_path_factory.mktemp("coevolve")
    shards, features, out = str(root / "shards"), str(root / "features"), root / "train"
    build_zoo_shards(shards, ZooShardsConfig(families=(TRAIN, HELD_OUT, FAMILY), photos_per_split=2, crops_per_photo=3))
    extract(ExtractConfig(encoder="spectrum:v1", shards=shards, features=features, batch_size=64))
    assert run_cli(train_pipeline, [features, "--train-subsets", TRAIN, "--out", str(out), "--preset", "debug",
                                    "--rotations", "1", "--methods", "gendet", "--num-workers", "1", "--cpus-per-worker", "1",
                                    "--register", "gendet", "--gate.real-floor", "0.0", "--eval-splits", "test"]) == 0
    return root, features, f"sqlite:///{out / 'mlflow.db'}"


def _argv(root, features, *extra):
    return [features, "--out", str(root / "coevolve"), "--tracking-uri", f"sqlite:///{root / 'train' / 'mlflow.db'}",
            "--family", FAMILY,
            "--steps", "2", "--batch-size", "2", "--crops-per-photo", "2", "--photos-per-split", "2",
            "--align-crops-per-photo", "1", "--shots", "4", *extra]


def test_two_rounds_record_lineage_and_a_rerun_skips_them(world, monkeypatch, capsys):
    root, features, db = world
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert run_cli(coevolve, _argv(root, features, "--rounds", "2")) == 0
    client = MlflowClient(db)
    rounds = [json.loads((root / "coevolve" / f"round-{k}" / "round.json").read_text()) for k in (1, 2)]
    for k, record in enumerate(rounds, 1):
        assert record["round"] == k and record["subset"] == f"{FAMILY}-r{k}"
        _, lineage = load_aligned(record["generator"]["weights"])
        assert lineage["weights_digest"] == record["generator"]["weights_digest"]
        assert lineage["detector"]["version"] == record["detector_before"]["version"]
        assert lineage["metrics"]["after"]["psnr"] > 10
        assert 0 <= record["caught_before"] <= 1 and 0 <= record["caught_after"] <= 1
        promoted = record["fix"]["promoted"]
        after, before = record["detector_after"]["version"], record["detector_before"]["version"]
        assert after == (record["fix"]["challenger_version"] if promoted else before)
        if promoted:  # the fix trained on this generator's fakes: it catches at least as many of them on test
            assert record["caught_after"] >= record["caught_before"], record
        else:  # the champion stayed: the same model on the same images
            assert record["caught_after"] == record["caught_before"], record
        assert record["held_out"]["before"]["families"] == [HELD_OUT]
        assert record["fix"]["challenger_version"] is not None
        run = client.get_run(record["mlflow_run_id"])
        tags = run.data.tags
        assert tags["gendet.coevolve.round"] == str(k)
        assert tags["gendet.coevolve.generator_weights_digest"] == record["generator"]["weights_digest"]
        assert tags["gendet.coevolve.detector_version_before"] == record["detector_before"]["version"]
        assert tags["gendet.coevolve.detector_version_after"] == record["detector_after"]["version"]
        assert "psnr_after" in run.data.metrics
    # round 2 starts from round 1's generator and the champion round 1 left
    assert rounds[1]["generator"]["parent_weights_digest"] == rounds[0]["generator"]["weights_digest"]
    assert rounds[1]["detector_before"]["version"] == rounds[0]["detector_after"]["version"]
    runs_before = len(client.search_runs([run.info.experiment_id]))

    capsys.readouterr()
    assert run_cli(coevolve, _argv(root, features, "--rounds", "2")) == 0  # resume: nothing to do
    logged = capsys.readouterr().err
    assert logged.count("done before: skipped") == 2
    assert len(client.search_runs([run.info.experiment_id])) == runs_before
    summary = json.loads((root / "coevolve" / "coevolve.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]


def test_bad_requests_fail_in_one_line_before_any_work(world, tmp_path, capsys):
    root, features, _ = world
    assert run_cli(coevolve, _argv(root, features, "--family", "nope")) == 2
    assert "unknown zoo family" in capsys.readouterr().err
    assert run_cli(coevolve, _argv(root, features, "--steps", "0")) == 2
    assert "steps" in capsys.readouterr().err
    assert run_cli(coevolve, _argv(root, str(tmp_path / "missing"))) == 2
    assert "no feature store" in capsys.readouterr().err
    with pytest.raises(GendetError, match="registered model"):
        coevolve.pinned("runs:/abc/detector", MlflowClient(world[2]))
