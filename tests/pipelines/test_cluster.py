"""The production path on a real multi-node Ray (head with 0 CPUs + two worker nodes, ``ray start``,
token auth, every process on 127.0.0.1) with shards, features and models on an S3 server (moto),
everything submitted with ``ray job submit``: a worker node is lost mid-run and the work still
finishes, with every sample exactly once."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import fsspec
import pyarrow.parquet as pq
import pytest

from helpers.bad_shards import write_good_shards
from helpers.cluster import job_logs, job_status, nodes_running, ray_cli, wait_job
from helpers.metrics import value, wait_for_gauge

N_SHARDS, PER_SHARD = 64, 64  # a job of ~50 s on a quiet 2-core box: long enough to lose a node mid-run
SIZE = (96, 96)  # big enough that encoding takes a while


def s3_keys(fs, variant: str) -> list[str]:
    keys = []
    for path in sorted(fs.glob(f"{variant}/*.parquet")):
        if not path.endswith(".quarantine.parquet"):
            with fs.open(path, "rb") as f:
                keys += pq.read_table(f, columns=["key"])["key"].to_pylist()
    return keys


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_every_process_of_the_cluster_listens_on_loopback_only(ray_cluster):
    groups = [str(proc.pid) for proc in ray_cluster.procs.values()]  # each node is its own process group
    ours = {int(p) for p in subprocess.run(["pgrep", "-g", ",".join(groups)], capture_output=True, text=True).stdout.split()}
    listening = [line.split()[3] for line in subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True,
                                                            check=True).stdout.splitlines()
                 if {int(p) for p in re.findall(r"pid=(\d+)", line)} & ours]
    assert len(listening) >= 10, listening  # GCS, dashboard, 3 raylets, agents: the check saw them
    outside = [a for a in listening if not a.rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1")]
    assert outside == [], f"listening beyond 127.0.0.1: {outside}"


def test_extract_survives_a_lost_worker_node(ray_cluster, moto_s3, tmp_path):
    """The encoder actors are pinned to w1 (``--actor-resources``, its custom resource), so the node to
    lose is known before the job starts; it is lost once the actors have written, and comes back (a
    replaced pod). Until 0.9 the test polled for a node an actor happened to run on, and on a loaded
    2-core box none was found in 600 s."""
    cluster, bucket = ray_cluster, moto_s3["bucket"]
    fs = fsspec.filesystem("s3")
    rows = write_good_shards(str(tmp_path / "shards"), "n", n_shards=N_SHARDS, per_shard=PER_SHARD, size=SIZE)
    fs.put(str(tmp_path / "shards") + "/", f"{bucket}/lost/shards/", recursive=True)
    store = f"s3://{bucket}/lost/features"
    submit = ray_cli(cluster, "job", "submit", "--address", cluster.dashboard, "--submission-id", "extract-lost",
                     "--no-wait", "--", "python", "-m", "pipelines.extract", f"s3://{bucket}/lost/shards/", store,
                     "--batch-size", "16", "--concurrency", "2", "--encoder", "spectrum:v1",
                     "--actor-resources", '{"node_w1": 0.01}')
    assert submit.returncode == 0, submit.stdout + submit.stderr

    deadline, killed = time.monotonic() + 600, False
    while time.monotonic() < deadline and not killed:
        fs.invalidate_cache()
        written = fs.glob(f"{bucket}/lost/features/*/_parts/*/*.parquet") or fs.glob(f"{bucket}/lost/features/*/*.stats.json")
        if written:
            cluster.kill("w1")
            killed = True
            fs.invalidate_cache()
            done = fs.glob(f"{bucket}/lost/features/*/*.stats.json")
            assert len(done) < N_SHARDS, "the job finished before a node could be lost: make it longer"
        else:
            assert job_status(cluster, "extract-lost") in ("PENDING", "RUNNING"), job_logs(cluster, "extract-lost")[-3000:]
        time.sleep(0.2)
    assert killed, "nothing written in 600 s\n" + job_logs(cluster, "extract-lost")[-3000:]
    cluster.start_worker("w1")  # the node comes back, as KubeRay replaces a lost pod
    cluster.wait_workers(2)

    status = wait_job(cluster, "extract-lost", timeout=900)
    logs = job_logs(cluster, "extract-lost")
    assert status == "SUCCEEDED", logs[-4000:]
    assert f"{N_SHARDS * PER_SHARD} rows in the store" in logs, logs[-2000:]
    fs.invalidate_cache()
    variant = fs.glob(f"{bucket}/lost/features/*/manifest.json")[0].rsplit("/", 1)[0]
    keys = s3_keys(fs, variant)
    assert sorted(keys) == sorted(r["key"] for r in rows), "rows lost"
    assert len(keys) == len(set(keys)), "rows duplicated"
    assert len(fs.glob(f"{variant}/*.stats.json")) == N_SHARDS
    assert not fs.glob(f"{variant}/_parts/*/*.parquet"), "part files left behind"


def test_score_survives_its_actors_node_being_lost(ray_cluster, moto_s3, tmp_path, tiny_detector_dir):
    """The scoring actor is pinned to w1 (its custom resource), so the node to lose is known before
    the job starts; w1 is lost once a partition is written and comes back (a replaced pod). Every
    input is scored exactly once."""
    cluster, bucket = ray_cluster, moto_s3["bucket"]
    fs = fsspec.filesystem("s3")
    n_shards, per_shard = 24, 48
    rows = write_good_shards(str(tmp_path / "shards"), "s", n_shards=n_shards, per_shard=per_shard, size=SIZE)
    fs.put(str(tmp_path / "shards") + "/", f"{bucket}/score/shards/", recursive=True)
    fs.put(tiny_detector_dir + "/", f"{bucket}/score/model/", recursive=True)
    submit(cluster, "score-lost", "pipelines.score", f"s3://{bucket}/score/shards/", f"s3://{bucket}/score/out",
           "--model", f"s3://{bucket}/score/model", "--batch-size", "16", "--actor-resources", '{"node_w1": 0.01}',
           "--read-tasks", "1", wait=False)  # shards read one after another: partitions finish over seconds, not at once
    deadline, killed = time.monotonic() + 600, False
    while time.monotonic() < deadline and not killed:
        fs.invalidate_cache()
        done = fs.glob(f"{bucket}/score/out/_done/*.json")
        if done:
            assert len(done) < n_shards, "the job finished before a node could be lost: make it longer"
            cluster.kill("w1")
            killed = True
        else:
            assert job_status(cluster, "score-lost") in ("PENDING", "RUNNING"), job_logs(cluster, "score-lost")[-3000:]
        time.sleep(0.2)
    assert killed, "no partition written in 600 s\n" + job_logs(cluster, "score-lost")[-3000:]
    cluster.start_worker("w1")  # the node comes back, as KubeRay replaces a lost pod
    cluster.wait_workers(2)
    status = wait_job(cluster, "score-lost", timeout=900)
    logs = job_logs(cluster, "score-lost")
    assert status == "SUCCEEDED", logs[-4000:]
    fs.invalidate_cache()
    ids = []
    for path in sorted(fs.glob(f"{bucket}/score/out/*.parquet")):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["id", "verdict"])
        ids += table["id"].to_pylist()
        assert set(table["verdict"].to_pylist()) <= {"fake", "real", "uncertain"}
    assert sorted(ids) == sorted(r["key"] for r in rows), "inputs lost or scored twice"
    assert len(fs.glob(f"{bucket}/score/out/_done/*.json")) == n_shards


def write_world(folder, prefix: str, subsets: dict[str, str], per_subset: int = 120, size: int = 48) -> None:
    """Real/fake pairs in shards, split by content 70/15/15. Reals are full-resolution noise; the
    fakes of a subset carry its generator's trace: ``nearest`` (a x2 nearest-neighbour upsampler,
    the checkerboard the training family leaves) or ``none`` (a generator whose output has the
    reals' statistics: nothing the champion learned can catch it, so it slips)."""
    import io

    import numpy as np
    from PIL import Image

    from gendet.data.shards import Sample, ShardWriter

    rng = np.random.default_rng(len(prefix))

    def png(pixels) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    with ShardWriter(str(folder), prefix, max_count=60) as writer:
        for subset, trace in subsets.items():
            for i in range(per_subset):
                label = "fake" if i % 2 else "real"
                if label == "real":
                    pixels = rng.integers(0, 256, (size, size, 3))
                elif trace == "nearest":
                    pixels = np.kron(rng.integers(0, 256, (size // 2, size // 2, 3)), np.ones((2, 2, 1)))
                else:
                    pixels = rng.integers(0, 256, (size, size, 3))
                pair = i // 2
                split = "train" if pair % 20 < 14 else "val" if pair % 20 < 17 else "test"
                writer.write(Sample(key=f"{prefix}_{subset}_{i:04d}", image=png(pixels), image_ext="png", label=label,
                                    subset=subset, content_id=f"{subset}-{pair}", split=split))


def submit(cluster, job_id: str, *argv: str, env_vars: dict | None = None, wait: bool = True, timeout: float = 900):
    runtime = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
    proc = ray_cli(cluster, "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id, *runtime,
                   "--no-wait", "--", "python", "-m", *argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if wait:
        status = wait_job(cluster, job_id, timeout=timeout)
        assert status == "SUCCEEDED", f"{job_id}: {status}\n" + job_logs(cluster, job_id)[-4000:]


def test_train_across_nodes_survives_a_lost_node_then_registers_evaluates_and_refresh_alerts(
        ray_cluster, moto_s3, mlflow_s3_server, tmp_path):
    cluster, bucket = ray_cluster, moto_s3["bucket"]
    fs = fsspec.filesystem("s3")
    root = f"s3://{bucket}/chain"
    write_world(tmp_path / "shards", "w", {"seen": "nearest", "unseen": "nearest"})
    fs.put(str(tmp_path / "shards") + "/", f"{bucket}/chain/shards/", recursive=True)
    mlflow_env = {"MLFLOW_TRACKING_URI": mlflow_s3_server}
    submit(cluster, "chain-extract", "pipelines.extract", f"{root}/shards/", f"{root}/features", "--batch-size", "32",
           "--encoder", "spectrum:v1")

    # Two Train workers, one per node; a node is lost once a checkpoint is registered (on S3).
    submit(cluster, "chain-train", "pipelines.train", f"{root}/features", "--train-subsets", "seen", "--eval-splits",
           "test", "--out", f"{root}/out", "--preset", "debug", "--rotations", "3", "--batch-size", "16",
           "--num-workers", "2", "--placement-strategy", "SPREAD", "--cpus-per-worker", "0.5", "--methods", "gendet",
           "--name", "chain-run", "--register", "chain", "--in-memory-rows", "0", env_vars=mlflow_env, wait=False)
    snapshot = f"{bucket}/chain/out/ray_results/chain-run/checkpoint_manager_snapshot.json"
    deadline, killed = time.monotonic() + 600, None
    while time.monotonic() < deadline and killed is None:
        assert job_status(cluster, "chain-train") in ("PENDING", "RUNNING"), job_logs(cluster, "chain-train")[-3000:]
        fs.invalidate_cache()
        if fs.exists(snapshot) and "checkpoint_" in fs.cat(snapshot).decode():
            workers = [n for n in nodes_running(cluster, "RayTrainWorker") if n.startswith("w")]
            if len(workers) == 2:
                killed = workers[-1]
                cluster.kill(killed)
        time.sleep(1)
    assert killed, "no checkpoint registered with a Train worker on each node"
    status = wait_job(cluster, "chain-train", timeout=900)
    assert status == "SUCCEEDED", job_logs(cluster, "chain-train")[-4000:]
    fs.invalidate_cache()
    assert json.loads(fs.cat(f"{bucket}/chain/out/resume.json"))["restored"] is True  # resumed, not restarted
    history = json.loads(fs.cat(f"{bucket}/chain/out/history.json"))
    assert history[-1]["stage"] == "classifier" and [r["stage"] for r in history].count("r01.a") == 1
    assert fs.exists(f"{bucket}/chain/out/detectors/gendet/model.safetensors")

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_s3_server)
    champion = client.get_model_version_by_alias("chain", "champion")
    assert champion.version == "1"
    assert fs.glob(f"{bucket}/mlflow/**/detector.json"), "the model's artifacts are not on S3"

    submit(cluster, "chain-evaluate", "pipelines.evaluate", f"{root}/features", "--model", "models:/chain@champion",
           "--out", f"{root}/eval", env_vars=mlflow_env)
    metrics = json.loads(fs.cat(f"{bucket}/chain/eval/metrics.json"))
    assert set(metrics["subsets"]) == {"seen", "unseen"} and metrics["subsets"]["seen"]["acc"] > 0.8

    # A new generator arrives; the scheduled refresh extracts it, scores the champion, and alerts
    # through the channel that survives `ray job submit`: the job succeeds, the gauge says 1.
    write_world(tmp_path / "incoming", "new", {"stealth": "none"}, per_subset=60)
    fs.put(str(tmp_path / "incoming") + "/", f"{bucket}/chain/incoming/", recursive=True)
    submit(cluster, "chain-refresh", "pipelines.refresh", f"{root}/incoming/", f"{root}/features", "--model",
           "models:/chain@champion", "--out", f"{root}/refresh", "--alert-exit", "0", env_vars=mlflow_env)
    verdict = json.loads(fs.cat(f"{bucket}/chain/refresh/refresh.json"))
    assert verdict["alert"] is True, verdict
    port = cluster.metrics_ports["head"]
    samples = wait_for_gauge(str(port), "ray_gendet_refresh_alert", {"model": "chain", "version": "1"})
    assert value(samples, "ray_gendet_refresh_alert", model="chain", version="1") == 1.0
