"""Every verb checks what it will need before any work: a bad request is one line, exit 2, and no Ray
starts (``pipelines._ray.init_ray`` is a tripwire here) and nothing is written.

The checks: the eval splits and training subsets in the store (``gendet.features.contents``), the
MLflow tracking server (``gendet.mlops.tracking.check_tracking``), output storage writable and, with
``RAY_ADDRESS`` set, reachable by every node (``gendet.io.check_writable``, ``require_reachable``).
"""

from __future__ import annotations

import json

import pytest
from conftest import free_port

from gendet import GendetError
from gendet import io as gio
from helpers.cli import run_cli
from helpers.synthetic_store import write_synthetic_store
from pipelines import evaluate as evaluate_pipeline
from pipelines import sweep as sweep_pipeline
from pipelines import train as train_pipeline


@pytest.fixture
def no_ray(monkeypatch):
    def tripwire(**kwargs):
        raise AssertionError("Ray was started for a request its checks should have refused")

    monkeypatch.setattr("pipelines._ray.init_ray", tripwire)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(gio.SHARED_FS_ENV, raising=False)


@pytest.fixture
def genimage_like(tmp_path):
    """A store with train and val only (GenImage's splits): the README's old `--eval-splits test` fails."""
    return write_synthetic_store(str(tmp_path / "store"), per_split={"train": 10, "val": 10})


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("gendet: error: ") and err.count("\n") == 1, err
    return err.strip()


# --- the library checks ---------------------------------------------------------------------------------

def test_node_local_paths_are_refused_on_a_cluster_unless_marked_shared(tmp_path, monkeypatch):
    monkeypatch.delenv(gio.SHARED_FS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    gio.require_reachable(str(tmp_path), "--out")  # no cluster: a local path is where every worker is
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    for url in (str(tmp_path), "relative/out", f"file://{tmp_path}", "memory://x"):
        with pytest.raises(GendetError) as err:
            gio.require_reachable(url, "--out", "--shared-fs")
        assert str(err.value).startswith(f"--out {url}: a path on this node's disk, but RAY_ADDRESS=10.0.0.1:6379 is a "
                                         "cluster") and "--shared-fs" in str(err.value) and "\n" not in str(err.value)
    for url in ("s3://bucket/out", "gs://bucket/out"):
        gio.require_reachable(url, "--out")
    gio.require_reachable(str(tmp_path), "--out", shared=True)
    monkeypatch.setenv(gio.SHARED_FS_ENV, "1")
    gio.require_reachable(str(tmp_path), "--out")


def test_check_writable_probes_and_cleans_up_or_names_the_url(tmp_path):
    gio.check_writable(str(tmp_path / "new" / "out"), "--out")
    assert list((tmp_path / "new" / "out").iterdir()) == []  # the probe is gone
    (tmp_path / "a-file").write_text("x")
    blocked = str(tmp_path / "a-file" / "out")  # under a regular file: no folder can be made (even as root)
    with pytest.raises(GendetError) as err:
        gio.check_writable(blocked, "--storage")
    assert str(err.value).startswith(f"--storage {blocked}: cannot write here (") and "\n" not in str(err.value)


def test_check_writable_on_s3_names_a_missing_bucket_and_leaves_no_probe(moto_s3):
    import s3fs

    gio.check_writable(f"s3://{moto_s3['bucket']}/runs/a", "--out")
    assert s3fs.S3FileSystem(skip_instance_cache=True).find(f"{moto_s3['bucket']}/runs") == []
    with pytest.raises(GendetError, match=r"^--out s3://no-such-bucket-h12/out: cannot write here \("):
        gio.check_writable("s3://no-such-bucket-h12/out", "--out")


# --- the verbs: refused before Ray, nothing written -------------------------------------------------------

def _train(store, out, *extra):
    return run_cli(train_pipeline, [store, "--train-subsets", "seen", "--out", str(out), "--preset", "debug", *extra])


def _sweep(store, out, *extra):
    # train,val only: the sweep chooses on the unseen families' train rows, which no trial fits
    return run_cli(sweep_pipeline, [store, "--train-subsets", "seen", "--out", str(out), "--preset", "debug",
                                "--grid", "alpha=0.1", "--select-split", "train", *extra])


@pytest.mark.parametrize("verb", [_train, _sweep])
def test_a_missing_eval_split_is_refused_before_training(verb, tmp_path, genimage_like, no_ray, capsys):
    out = tmp_path / "out"
    assert verb(str(tmp_path / "store"), out) == 2  # --eval-splits defaults to test; the store has train,val
    err = one_line_error(capsys)
    assert err.endswith(f"no rows of split test in {genimage_like}; the store has train,val: pass --eval-splits val")
    assert not out.exists()
    assert verb(str(tmp_path / "store"), out, "--train-subsets", "sdv14", "--eval-splits", "val") == 2
    assert "no rows of subset sdv14 in split train" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("verb", [_train, _sweep])
def test_an_unreachable_mlflow_server_is_refused_before_training(verb, tmp_path, genimage_like, no_ray, capsys,
                                                                 monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # a closed port
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "out"
    assert verb(str(tmp_path / "store"), out, "--eval-splits", "val") == 2
    assert f"MLflow tracking server {uri} does not answer" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("verb", [_train, _sweep])
def test_a_remote_out_without_a_tracking_server_is_refused_before_training(verb, tmp_path, genimage_like, no_ray, capsys):
    assert verb(str(tmp_path / "store"), "s3://bucket/run", "--eval-splits", "val") == 2
    assert "s3://bucket/run: a SQLite MLflow store needs a local output directory; set MLFLOW_TRACKING_URI" in \
        one_line_error(capsys)


@pytest.mark.parametrize("verb", [_train, _sweep])
def test_an_unwritable_out_is_one_line_before_training(verb, tmp_path, genimage_like, no_ray, capsys):
    assert verb(str(tmp_path / "store"), "/proc/gendet-out", "--eval-splits", "val") == 2
    assert "--out /proc/gendet-out: cannot write here" in one_line_error(capsys)


@pytest.mark.parametrize("verb", [_train, _sweep])
def test_unwritable_storage_is_refused_before_training(verb, tmp_path, genimage_like, no_ray, capsys):
    (tmp_path / "a-file").write_text("x")
    storage = tmp_path / "a-file" / "ray_results"
    out = tmp_path / "out"
    assert verb(str(tmp_path / "store"), out, "--eval-splits", "val", "--storage", str(storage)) == 2
    assert f"--storage {storage}: cannot write here" in one_line_error(capsys)
    assert not (out / "ray_results").exists() and not (out / "detectors").exists()


@pytest.mark.parametrize("verb", [_train, _sweep])
def test_local_paths_on_a_cluster_are_refused_unless_shared(verb, tmp_path, genimage_like, no_ray, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing there: only the refusal can answer
    out = tmp_path / "out"
    assert verb(str(tmp_path / "store"), out, "--eval-splits", "val") == 2
    err = one_line_error(capsys)
    assert f"FEATURES {tmp_path / 'store'}: a path on this node's disk" in err and "--shared-fs" in err
    assert not out.exists()
    # --shared-fs lets them through to the next check (here: a split the store lacks)
    assert verb(str(tmp_path / "store"), out, "--shared-fs") == 2
    assert "no rows of split test" in one_line_error(capsys)


def test_evaluate_checks_model_server_splits_and_out_before_scoring(tmp_path, genimage_like, no_ray, capsys, monkeypatch):
    store = str(tmp_path / "store")
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert run_cli(evaluate_pipeline, [store, "--model", "models:/gendet@champion", "--out", str(tmp_path / "m")]) == 2
    assert f"MLflow tracking server {uri} does not answer" in one_line_error(capsys)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    from gendet.method.gendet.detector import Detector, build_method_nets
    from gendet.method.gendet.networks import Arch
    from helpers.synthetic_store import ENCODER, PHASH

    arch = Arch(feature_dim=64, layers=1, heads=2)
    model = Detector(method="gendet", arch=arch, nets=build_method_nets("gendet", arch), encoder=ENCODER,
                     preprocess_hash=PHASH).save(str(tmp_path / "detector"))
    assert run_cli(evaluate_pipeline, [store, "--model", model, "--out", str(tmp_path / "m")]) == 2
    assert "no rows of split test" in one_line_error(capsys) and not (tmp_path / "m").exists()
    (tmp_path / "a-file").write_text("x")
    assert run_cli(evaluate_pipeline, [store, "--model", model, "--eval-splits", "val",
                                   "--out", str(tmp_path / "a-file" / "m.json")]) == 2
    assert f"--out {tmp_path / 'a-file' / 'm.json'}: cannot write here" in one_line_error(capsys)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    assert run_cli(evaluate_pipeline, [store, "--model", model, "--eval-splits", "val", "--out", str(tmp_path / "m")]) == 2
    assert "a path on this node's disk" in one_line_error(capsys)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from mlflow import MlflowClient

    MlflowClient().search_experiments()  # the store's tables made now: MLflow logs that to stderr
    capsys.readouterr()
    assert run_cli(evaluate_pipeline, [store, "--model", model, "--eval-splits", "val", "--out", str(tmp_path / "m"),
                                   "--mlflow-run", "0123456789abcdef"]) == 2
    assert "--mlflow-run 0123456789abcdef: no such run" in one_line_error(capsys)
    assert not (tmp_path / "m").exists()


def test_a_demo_out_holding_another_world_is_refused_before_any_work(tmp_path):
    """Another --seed under an --out whose features exist would mix two worlds under the same shard names."""
    from gendet.config import to_json
    from gendet.zoo.shards import ZooShardsConfig
    from pipelines import demo

    shards, features = tmp_path / "shards", tmp_path / "features"
    shards.mkdir()
    features.mkdir()
    made = ZooShardsConfig(families=("vq_f4",), photos_per_split=4, crops_per_photo=demo.SMALL_CROPS_PER_PHOTO,
                           val_crops_per_photo=4 * demo.SMALL_CROPS_PER_PHOTO, crop_sizes=demo.SMALL_CROP_SIZES,
                           jpeg_fraction=demo.JPEG_FRACTION, seed=0)
    (shards / "zoo_summary.json").write_text(json.dumps({"config": json.loads(to_json(made))}))
    with pytest.raises(GendetError, match=r"shards of another demo world \(seed 0.*pass another --out"):
        demo.zoo_shards(str(shards), ["vq_f4"], True, 1, str(features))
    assert demo.zoo_shards(str(shards), ["vq_f4"], True, 0, str(features)) == {"config": json.loads(to_json(made))}
